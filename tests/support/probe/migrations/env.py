from outbox.migrations import run_env

run_env()
