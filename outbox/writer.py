"""Staging events: one call adds an event to the caller's transaction; the relay is woken on commit."""

from __future__ import annotations

import contextvars
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from contracts import Event, encode, event_name
from outbox.tables import OutboxMessage

_HAND_OVER = "outbox.hand_over"
_EMITS = "outbox.emits"
_STAGED = "outbox.staged"
_ROWS = "outbox.rows"
_OUTBOX = cast(Table, OutboxMessage.__table__)


@dataclass(frozen=True, slots=True)
class Cause:
    """The message being handled: the events it leads to carry its id and its trace."""

    message_id: uuid.UUID
    traceparent: str | None


#: Takes the outbox rows a transaction wrote, right after it committed (`Relay.hand_over`).
HandOver = Callable[[list[dict[str, Any]]], None]

#: Set by the consumer while a handler runs; unset for HTTP requests.
current_cause: contextvars.ContextVar[Cause | None] = contextvars.ContextVar(
    "current_cause", default=None
)


class OutboxSession(Session):
    """Session class whose commits write the staged events as outbox rows, then hand them to the
    relay."""


@sa_event.listens_for(OutboxSession, "before_commit")
def _insert_staged(session: Session) -> None:
    """The transaction's staged events, as outbox rows: one multi-row INSERT, no ORM objects."""
    rows = session.info.pop(_ROWS, None)
    if rows:
        session.execute(insert(_OUTBOX), rows)
        session.info[_STAGED] = rows


@sa_event.listens_for(OutboxSession, "after_commit")
def _hand_over(session: Session) -> None:
    """The rows are committed: the relay may publish them at once, without reading them back."""
    rows = session.info.pop(_STAGED, None)
    if rows:
        hand_over: HandOver | None = session.info.get(_HAND_OVER)
        if hand_over is not None:
            hand_over(rows)


@sa_event.listens_for(OutboxSession, "after_rollback")
def _forget_staged(session: Session) -> None:
    session.info.pop(_STAGED, None)
    session.info.pop(_ROWS, None)


def session_info(hand_over: HandOver, emits: tuple[type[Event], ...]) -> dict[str, object]:
    """The `info` a service's sessionmaker carries: where committed outbox rows go (the relay's
    `hand_over`), which events it may emit."""
    return {_HAND_OVER: hand_over, _EMITS: frozenset(emits)}


def add(session: AsyncSession, event: Event) -> None:
    """Stage `event` in the session's transaction; it is published only if that transaction commits.

    Its outbox row is inserted as the transaction commits, with every other event it staged, in one
    statement: cheaper than an ORM object per event (see docs/performance.md). The outgoing message
    inherits the trace of the message being handled, if any, and records it as its cause. Staging
    an event the service does not declare in its manifest is a bug.
    """
    emits = session.info.get(_EMITS)
    if emits is not None and type(event) not in emits:
        raise ValueError(f"{event_name(event)} is not in this service's EMITS")
    cause = current_cause.get()
    session.info.setdefault(_ROWS, []).append(
        {
            "event_id": event.event_id,
            "event_type": event_name(event),
            "order_id": event.order_id,
            "payload": encode(event),
            "causation_id": cause.message_id if cause else None,
            "traceparent": child_traceparent(cause.traceparent if cause else None),
        }
    )


def child_traceparent(parent: str | None) -> str:
    """A W3C traceparent for a new span: in the parent's trace if there is a valid one, else a new trace."""
    trace_id = None
    if parent:
        parts = parent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
            trace_id = parts[1]
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
