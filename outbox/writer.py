"""Staging events: one call adds an event to the caller's transaction; the relay gets it on commit."""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, cast

from sqlalchemy import Table, insert
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from contracts import Event, encode, event_name
from outbox.tables import OutboxMessage

# child_traceparent is re-exported: tests and the benchmark make traceparents with it from here.
from outbox.tracing import child_traceparent as child_traceparent
from outbox.tracing import traceparent_for
from outbox.transaction import BulkInsert, Transaction, current, detach, hand_over_of, of
from outbox.transaction import session_info as session_info  # where services and tests take it

_OUTBOX = cast(Table, OutboxMessage.__table__)
#: Built once: every event of a transaction in one statement, whatever their number.
_INSERT = BulkInsert(_OUTBOX, exclude=("id", "published_at"))


class Staged(NamedTuple):
    """An event as its transaction stages it: the outbox row it becomes at commit, and what the
    relay publishes from memory right after that commit (`Relay.hand_over`)."""

    event_id: uuid.UUID
    event_type: str
    order_id: uuid.UUID
    payload: bytes
    causation_id: uuid.UUID | None
    traceparent: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Cause:
    """The message being handled: the events it leads to carry its id and its trace."""

    message_id: uuid.UUID
    traceparent: str | None


#: Takes the events a transaction staged, right after it committed (`Relay.hand_over`).
HandOver = Callable[[list[Staged]], None]

#: Set by the consumer while a handler runs; unset for HTTP requests.
current_cause: contextvars.ContextVar[Cause | None] = contextvars.ContextVar(
    "current_cause", default=None
)


class OutboxSession(Session):
    """Session class whose commits write the staged events as outbox rows, then hand them to the
    relay (for a session committed without `outbox.unit.commit`: a test, a tool)."""


async def insert_staged(transaction: Transaction) -> None:
    """The transaction's staged events, as outbox rows: one statement, sent before the commit."""
    staged, transaction.staged = transaction.staged, []
    if staged:
        await transaction.execute(_INSERT.sql, _INSERT.params([s._asdict() for s in staged]))
        transaction.inserted.extend(staged)


@sa_event.listens_for(OutboxSession, "before_commit")
def _before_commit(session: Session) -> None:
    """A session committed without `outbox.unit.commit`: its staged events still become outbox
    rows, through SQLAlchemy; a unit it did not save is a bug."""
    found = current(session)
    if found is None:
        return
    for unit in found.units:
        if unit.unsaved():
            raise RuntimeError(
                f"{type(unit).__name__} changed but not saved: commit with outbox.unit.commit"
            )
    staged, found.staged = found.staged, []
    if staged:
        session.execute(insert(_OUTBOX), [row._asdict() for row in staged])
        found.inserted.extend(staged)


@sa_event.listens_for(OutboxSession, "after_commit")
def _hand_over(session: Session) -> None:
    """The rows are committed: the relay may publish them at once, without reading them back."""
    found = current(session)
    if found is not None:
        found.committed(hand_over_of(session))


@sa_event.listens_for(OutboxSession, "after_transaction_end")
def _forget_transaction(session: Session, ended: SessionTransaction) -> None:
    if ended.parent is None:  # the transaction itself, not a flush inside it
        detach(session)


def add(to: Transaction | AsyncSession, event: Event) -> None:
    """Stage `event` in a transaction (or a session's, `outbox.transaction.of`); it is published
    only if that transaction commits.

    Its outbox row is inserted as the transaction commits, with every other event it staged, in one
    statement (see docs/performance.md). The outgoing message records the message being handled,
    if any, as its cause, and the current span (the handler's delivery, or the HTTP request) as
    its trace context (`outbox.tracing.traceparent_for`). Staging an event the service does not
    declare in its manifest is a bug.
    """
    transaction = to if isinstance(to, Transaction) else of(to)
    emits = transaction.emits
    if emits is not None and type(event) not in emits:
        raise ValueError(f"{event_name(event)} is not in this service's EMITS")
    cause = current_cause.get()
    transaction.staged.append(
        Staged(
            event_id=event.event_id,
            event_type=event_name(event),
            order_id=event.order_id,
            payload=encode(event),
            causation_id=cause.message_id if cause else None,
            traceparent=traceparent_for(cause.traceparent if cause else None),
            created_at=datetime.now(UTC),
        )
    )
