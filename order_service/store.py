"""How order_service keeps its orders: those one transaction works on, loaded and locked together
up front, written back together in one statement (`outbox.unit`); and the orders that ended,
counted once their transaction committed."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Self, get_args

from prometheus_client import Counter
from sqlalchemy import ARRAY, any_, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import UUID

from contracts import CancelReason, Event, OrderCancelled, OrderCompleted
from order_service.models import Order, Status
from outbox import saga_traces
from outbox.transaction import Transaction, compiled
from outbox.unit import Rows, Unit, ids

_ORDERS = Order.__table__.c
#: Built once. In order id order, so that two transactions locking the same orders take turns.
_LOCK = compiled(
    select(*_ORDERS)
    .where(_ORDERS.order_id == any_(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))))
    .order_by(_ORDERS.order_id)
    .with_for_update()
)
#: Open orders past their deadline, oldest deadline first; several sweepers share them out
#: (`SKIP LOCKED`). A partial index on open orders keeps the query cheap when none is overdue: the
#: statuses are written out, so that the planner sees the index's own predicate.
_OVERDUE = compiled(
    select(*_ORDERS)
    .where(
        _ORDERS.status.in_([literal_column(f"'{s}'") for s in (Status.PENDING, Status.RESERVED)]),
        _ORDERS.deadline_at < func.now(),
    )
    .order_by(_ORDERS.deadline_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)


ENDED = Counter(
    "saga_orders_ended_total",
    "Orders that reached a terminal status, counted once the transaction that ended them "
    "committed: outcome completed (reason empty) or cancelled (reason: why).",
    ["outcome", "reason"],
)
# Every series exists from the start, at 0: a dashboard shows each reason before it happens.
ENDED.labels("completed", "")
for _reason in get_args(CancelReason):
    ENDED.labels("cancelled", _reason)


class Orders(Unit):
    """The orders one transaction works on, each locked (`FOR UPDATE`), so that the events,
    requests and sweeps that concern one order take turns."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx)
        self.rows = Rows(Order)
        #: (outcome, reason) of each order this transaction ended: counted after its commit.
        self._ended: list[tuple[str, str]] = []

    @classmethod
    async def load(cls, tx: Transaction, events: Sequence[Event]) -> Self:
        return await cls.lock(tx, ids(events))

    @classmethod
    async def lock(cls, tx: Transaction, order_ids: Iterable[uuid.UUID]) -> Self:
        orders = cls(tx)
        await orders.rows.load(tx, _LOCK, {"ids": sorted(order_ids)})
        return orders

    @classmethod
    async def overdue(cls, tx: Transaction, limit: int) -> tuple[Self, list[Order]]:
        """Up to `limit` open orders past their deadline, locked; none that another sweeper holds."""
        orders = cls(tx)
        found = await orders.rows.load(tx, _OVERDUE, {"limit": limit})
        return orders, found

    async def traces(self) -> dict[uuid.UUID, str]:
        """The trace each order's saga began in, for events staged outside it (a cancellation)."""
        return await saga_traces(self.tx, [order.order_id for order in self.rows])

    def find(self, order_id: uuid.UUID) -> Order | None:
        return self.rows.get(order_id)

    def add(self, order: Order) -> Order:
        return self.rows.add(order)

    def emit(self, event: Event) -> None:
        """An order's terminal transition is the one that emits OrderCompleted or OrderCancelled."""
        super().emit(event)
        if isinstance(event, OrderCompleted):
            self._ended.append(("completed", ""))
        elif isinstance(event, OrderCancelled):
            self._ended.append(("cancelled", event.reason))

    def committed(self) -> None:
        for outcome, reason in self._ended:
            ENDED.labels(outcome, reason).inc()
        self._ended.clear()
