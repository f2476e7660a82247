"""The inbox: a consumer records each message it handles, in the handler's own transaction, and
locks the message's order for the rest of that transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import NamedTuple, cast

from sqlalchemy import Table

from contracts import Event, event_name
from outbox.tables import InboxMessage
from outbox.transaction import BulkInsert, Sent, Transaction

_INBOX = cast(Table, InboxMessage.__table__)


def lock_key(order_id: uuid.UUID) -> int:
    """The key of an order's advisory lock: the first 64 bits of its id, as PostgreSQL's bigint.

    Computed the same way on both sides (`_CLAIM`), so that a batch can sort its deliveries into
    the order in which the database will take their locks."""
    return int.from_bytes(order_id.bytes[:8], "big", signed=True)


#: Built once, for any number of deliveries: the rows go in the order given, and `RETURNING` runs
#: for each row it inserted, as it inserts it: a new message takes its order's lock (`lock_key` in
#: SQL: the id's first 16 hex digits as a signed 64-bit integer), a duplicate takes nothing and
#: waits for nobody.
_CLAIM = BulkInsert(
    cast(Table, InboxMessage.__table__),
    "ON CONFLICT DO NOTHING RETURNING consumer, message_id, pg_advisory_xact_lock("
    "('x' || left(replace(order_id::text, '-', ''), 16))::bit(64)::bigint)",
    exclude=("handled_at",),
)


class Delivery(NamedTuple):
    """One message as it reaches a consumer: the queue it came from (`<service>.<Event>`, the
    inbox's `consumer`), the event it carries, who emitted it, and the trace it belongs to."""

    consumer: str
    event: Event
    emitted_by: str | None = None
    traceparent: str | None = None


class Claims:
    """The claims of a batch, sent: `new()` says which deliveries were not handled before."""

    def __init__(self, claims: Sequence[Delivery], sent: Sent) -> None:
        self._claims = claims
        self._sent = sent

    async def new(self) -> list[bool]:
        """For each delivery, True if its consumer had not handled its message before (the first
        of two copies in one batch only)."""
        claimed = {(row["consumer"], row["message_id"]) for row in await self._sent.rows()}
        first: list[bool] = []
        taken: set[tuple[str, uuid.UUID]] = set()
        for consumer, event, *_ in self._claims:
            key = (consumer, event.event_id)
            first.append(key in claimed and key not in taken)
            taken.add(key)
        return first


async def claim(tx: Transaction, claims: Sequence[Delivery]) -> Claims:
    """Claim each delivery for its consumer; the claims commit with the handlers. In a pipeline,
    the statement travels with what is sent after it (the batch's first reads).

    `ON CONFLICT DO NOTHING`, not insert-and-catch: a unique violation would abort the transaction.
    A concurrent duplicate waits on the first one's row lock and then finds it taken. The same
    message twice in one batch is claimed once (the first).

    A claimed message also holds its order's lock (a transaction-scoped advisory lock) until the
    transaction ends, so that the events of one order take turns in each service. `SELECT … FOR
    UPDATE` could not do that alone: it locks only a row that exists, and the first two events of
    an order (OrderCreated and OrderCancelled in inventory, StockReserved and OrderCancelled in
    payment) would both find none and both insert one. Taken in the claim, it costs no round trip.

    The rows go in lock order (`lock_key`, then message id), so two batches that share orders take
    their locks in the same order and never deadlock; the service's own locks come after.
    """
    ordered = sorted(
        range(len(claims)),
        key=lambda i: (lock_key(claims[i].event.order_id), claims[i].event.event_id.bytes),
    )
    rows, seen = [], set()
    for i in ordered:
        consumer, event, emitted_by, _ = claims[i]
        if (consumer, event.event_id) in seen:
            continue
        seen.add((consumer, event.event_id))
        rows.append(
            {
                "consumer": consumer,
                "message_id": event.event_id,
                "event_type": event_name(event),
                "order_id": event.order_id,
                "emitted_by": emitted_by,
            }
        )
    return Claims(claims, await tx.send(_CLAIM.sql, _CLAIM.params(rows)))
