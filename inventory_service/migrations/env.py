from web.migrations import run_env

run_env()
