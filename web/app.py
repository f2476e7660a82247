"""A service's Litestar app: assembly, transactions, health, metrics, errors, idempotency keys."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from typing import Annotated, Any

import msgspec
import psycopg
from litestar import Litestar, MediaType, Request, Response, Router, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import ClientException, HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import HeaderParameter, QueryParameter
from litestar.types import ControllerRouterHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from outbox.faults import crash_point
from outbox.runtime import Messaging
from outbox.tables import IdempotencyKey
from outbox.unit import session
from web import auth, migrations, tracing
from web.settings import ServiceSettings

log = logging.getLogger(__name__)


async def provide_transaction(state: State) -> AsyncGenerator[AsyncSession, None]:
    """One transaction per request, committed after the handler returns and before the response
    is sent; an integrity error (a duplicate key) becomes 409."""
    messaging: Messaging = state.messaging
    try:
        async with session(messaging.sessionmaker) as opened:
            yield opened
    except (IntegrityError, psycopg.IntegrityError) as exc:
        raise ClientException(status_code=409, detail="conflicts with existing data") from exc
    crash_point("http.after_commit")


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    failed: dict[str, str] = msgspec.field(default_factory=dict)


@get("/health", tags=["health"], sync_to_thread=False)
def health() -> Health:
    """200 while the process runs."""
    return Health(status="ok")


@get("/health/ready", tags=["health"])
async def ready(
    state: State, timeout: Annotated[float, QueryParameter(gt=0, le=60)] = 2.0
) -> Response[Health]:
    """200 when the database and the broker answer within `timeout` seconds and the relay moves."""
    messaging: Messaging = state.messaging
    failed: dict[str, str] = {}
    try:
        await asyncio.wait_for(messaging.check_database(), timeout)
    except Exception as exc:
        failed["database"] = (
            f"no answer within {timeout}s" if isinstance(exc, TimeoutError) else str(exc)
        )
    if not messaging.broker_connected():
        failed["broker"] = "not connected"
    if "database" not in failed and "broker" not in failed:
        if await messaging.broker_blocks_publishing():
            failed["relay"] = (
                "waiting: the broker blocks publishers (a memory or disk alarm);"
                " events stay in the outbox until it clears"
            )
        try:
            _, oldest = await asyncio.wait_for(messaging.outbox_backlog(), timeout)
            if oldest > messaging.settings.relay_stuck_after_s and "relay" not in failed:
                failed["relay"] = f"oldest unpublished event is {oldest:.0f}s old"
        except Exception as exc:
            failed["relay"] = f"backlog unreadable: {exc}"
    if failed:
        return Response(Health(status="unavailable", failed=failed), status_code=503)
    return Response(Health(status="ok"))


@get("/metrics", tags=["health"], media_type=MediaType.TEXT, include_in_schema=False)
async def metrics_endpoint(state: State) -> Response[bytes]:
    """Prometheus metrics: outbox backlog, dead letters, handled and failed messages, latencies."""
    messaging: Messaging = state.messaging
    # Gauges read at scrape time; an unreachable database or broker leaves their last values.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(messaging.outbox_backlog(), 1.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(messaging.dead_letter_depths(), 1.0)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _database_unavailable(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[dict[str, Any]]:
    log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
    return Response(
        {"status_code": 503, "detail": "database unavailable, try again"}, status_code=503
    )


async def _before_request(request: Request[Any, Any, Any]) -> None:
    tracing.name_span(request)
    await _json_bodies_only(request)


async def _json_bodies_only(request: Request[Any, Any, Any]) -> None:
    """A route that takes a body gets one, as JSON: another media type is refused with 415 rather
    than parsed as JSON anyway, a missing body gets a plain 400, not a riddle about `data`, and a
    body that is not exactly of the route's type gets a 400 that names the field."""
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return
    body = await request.body()  # read once, kept for the handler; 413 past the size limit
    if not body:
        raise ClientException(detail="this request needs a JSON body")
    media_type, _ = request.content_type
    if media_type != MediaType.JSON and not media_type.endswith("+json"):
        raise HTTPException(
            status_code=415,
            detail=f"send the body as JSON (Content-Type: application/json), not {media_type!r}",
        )
    # Litestar converts a body in msgspec's lax mode, made for query strings, so `"quantity": "5"`
    # would become 5. JSON has types of its own: the body must have the schema's, as sent.
    try:
        _strict_decoder(data.annotation).decode(body)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `$")
        error: dict[str, str] = {"message": message, "source": "body"}
        if at:
            error["key"] = at.rstrip("`").removeprefix(".")
        raise ValidationException(
            detail=f"Validation failed for {request.method} {request.url.path}", extra=[error]
        ) from exc
    except msgspec.DecodeError:
        return  # not JSON at all: Litestar's own decoding answers that


@functools.cache
def _strict_decoder(body_type: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(body_type, strict=True)


def _too_deeply_nested(
    request: Request[Any, Any, Any], exc: RecursionError
) -> Response[dict[str, Any]]:
    # Decoding a body of ten thousand nested arrays exhausts the recursion limit: bad input.
    return Response(
        {"status_code": 400, "detail": "the JSON body is nested too deeply"}, status_code=400
    )


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, HTTPException):
        return Response(
            {
                "status_code": exc.status_code,
                "detail": exc.detail,
                **({"extra": exc.extra} if exc.extra else {}),
            },
            status_code=exc.status_code,
            headers=exc.headers,
        )
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return Response({"status_code": 500, "detail": "internal server error"}, status_code=500)


async def _migrate_once_the_database_answers(settings: ServiceSettings) -> None:
    """Apply the migrations, waiting with backoff while the database refuses connections (down,
    restarting, out of connection slots): a service restarted during a database outage comes up
    with the database, as it does with the broker, rather than exiting."""
    delay = 0.2
    while True:
        try:
            await asyncio.to_thread(migrations.upgrade, settings.service, settings.database_url)
            return
        except OperationalError as exc:
            log.warning("database unreachable for migrations (%s), retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def create_service_app(
    settings: ServiceSettings,
    messaging: Messaging,
    route_handlers: Sequence[ControllerRouterHandler],
    *,
    title: str,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> Litestar:
    """A service's Litestar app: its routes plus health, metrics and OpenAPI; its lifespan applies
    migrations, then runs the messaging runtime and the service's own background loops. Routes
    find both in the app's state (`state.settings`, `state.messaging`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        if settings.migrate_on_start:
            await _migrate_once_the_database_answers(settings)
        await messaging.start()
        tasks = [asyncio.create_task(loop()) for loop in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await messaging.stop()

    # The service's own routes need a token (web.auth); health, metrics and OpenAPI stay open.
    authenticate, principal = auth.guard(settings)
    api = Router(
        path="/",
        route_handlers=list(route_handlers),
        middleware=[authenticate],
        dependencies=principal,
        security=auth.SECURITY,
    )
    return Litestar(
        route_handlers=[health, ready, metrics_endpoint, api],
        dependencies={"session": Provide(provide_transaction)},
        state=State({"messaging": messaging, "settings": settings}),
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title=title,
            version="1.0.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=auth.COMPONENTS,
        ),
        exception_handlers={
            # Only a database out of reach is "unavailable, try again". Any other database error
            # (a DataError: input that should have been refused; a ProgrammingError: a broken
            # query) is a bug, and a 500 like any other. The hot path talks to psycopg directly
            # (outbox.transaction), so psycopg's own connection-level errors count too.
            OperationalError: _database_unavailable,
            InterfaceError: _database_unavailable,
            psycopg.OperationalError: _database_unavailable,
            psycopg.InterfaceError: _database_unavailable,
            PoolTimeoutError: _database_unavailable,
            RecursionError: _too_deeply_nested,
            Exception: _internal_error,
        },
        plugins=tracing.plugins(),  # a span per request, when tracing is on
        request_max_body_size=settings.max_body_bytes,
        before_request=_before_request,
        logging_config=None,  # keep the process's JSON logging (web.server)
        debug=False,
    )


# --- Idempotency-Key -------------------------------------------------------------------------

#: A route's optional `Idempotency-Key` header: `idempotency_key: IdempotencyKeyHeader = None`.
IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe key: the same key and body replay the first response.",
    ),
]


def request_hash(body: msgspec.Struct) -> str:
    return hashlib.sha256(msgspec.json.encode(body)).hexdigest()


async def replay(
    session: AsyncSession, scope: str, key: str, body_hash: str
) -> Response[bytes] | None:
    """The first response to (`scope`, `key`), or None if there is none and this request may proceed.

    A transaction-scoped advisory lock marks the key in flight: a concurrent request with the same
    key gets 409 rather than waiting, and a crash frees the key with the transaction.
    """
    locked = await session.scalar(
        select(func.pg_try_advisory_xact_lock(func.hashtext(scope), func.hashtext(key)))
    )
    if not locked:
        raise ClientException(
            status_code=409, detail="a request with this Idempotency-Key is in flight"
        )
    previous = await session.get(IdempotencyKey, (scope, key))
    if previous is None:
        return None
    if previous.request_hash != body_hash:
        raise ClientException(
            status_code=422, detail="this Idempotency-Key was used with a different request body"
        )
    return Response(
        previous.response_body,
        status_code=previous.status_code,
        media_type=MediaType.JSON,
        headers={"Location": previous.location} if previous.location else None,
    )


def remember(
    session: AsyncSession,
    scope: str,
    key: str,
    body_hash: str,
    status_code: int,
    body: Any,
    location: str | None = None,
) -> None:
    """Store this response under (`scope`, `key`), committed with the change it describes."""
    session.add(
        IdempotencyKey(
            scope=scope,
            key=key,
            request_hash=body_hash,
            status_code=status_code,
            response_body=msgspec.json.encode(body),
            location=location,
        )
    )
