"""The web layer every service shares, apart from its messaging (`outbox`): the Litestar app with
health, readiness, metrics, error mapping and Idempotency-Key replay; the server; migrations.

A service builds its app with one call, `create_service_app(settings, messaging, [controllers])`,
and serves it with `web.server.main`; `docs/development.md` ("The web layer") tells the rest.
"""

from web.app import (
    IdempotencyKeyHeader,
    create_service_app,
    remember,
    replay,
    request_hash,
)
from web.auth import Principal
from web.settings import ServiceSettings

__all__ = [
    "IdempotencyKeyHeader",
    "Principal",
    "ServiceSettings",
    "create_service_app",
    "remember",
    "replay",
    "request_hash",
]
