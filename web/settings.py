"""Settings of a service's process: its messaging's, plus where and how it serves HTTP."""

from __future__ import annotations

from outbox.settings import MessagingSettings


class ServiceSettings(MessagingSettings, kw_only=True, frozen=True):
    """Configuration of one service process; each service's `settings.py` extends it with its
    own defaults. Read once, from the environment, by `from_env` (`PORT=8000`, `LOG_LEVEL=debug`)."""

    port: int
    host: str = "127.0.0.1"
    migrate_on_start: bool = True
    max_body_bytes: int = 64 * 1024
    log_level: str = "INFO"
    #: Spans also go to `<traces_dir>/<service>.<pid>.jsonl`, as OTLP JSON lines (web.tracing).
    traces_dir: str = ""
    #: A span per database statement (psycopg's instrumentation), when tracing is on.
    trace_database: bool = False
