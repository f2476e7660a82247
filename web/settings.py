"""Settings of a service's process: its messaging's, plus where and how it serves HTTP."""

from __future__ import annotations

from typing import Final

from outbox.settings import MessagingSettings

#: What the tools mint and the services expect unless told otherwise (`AUTH_ISSUER`, `AUTH_AUDIENCE`).
DEFAULT_ISSUER: Final = "order-saga"
DEFAULT_AUDIENCE: Final = "order-saga"


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

    # Who may call (web.auth): one of the three keys, unless `auth_disabled`.
    #: HS256: a shared secret of 32 bytes or more.
    auth_secret: str | None = None
    #: RS256 or ES256: a PEM public key, or the path of a file holding one.
    auth_public_key: str | None = None
    #: RS256 or ES256: an identity provider's JWKS document, the key picked by the token's `kid`.
    auth_jwks_url: str | None = None
    #: Checked against the token's `iss` and `aud`; empty: not checked.
    auth_issuer: str = DEFAULT_ISSUER
    auth_audience: str = DEFAULT_AUDIENCE
    #: Clock skew allowed on `exp` and `nbf`.
    auth_leeway_s: float = 10.0
    #: Every request acts as an operator: for a deployment whose gateway checks tokens itself,
    #: and for measuring what verification costs. Never the default.
    auth_disabled: bool = False
