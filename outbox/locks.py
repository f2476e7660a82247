"""Per-order serialisation for handlers whose first event for an order finds no row to lock."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


async def lock_order(session: AsyncSession, order_id: uuid.UUID) -> None:
    """Hold a transaction-scoped advisory lock on `order_id` until the transaction ends.

    `SELECT … FOR UPDATE` locks only a row that exists. When the first two events of an order race
    (OrderCreated and OrderCancelled in inventory, StockReserved and OrderCancelled in payment),
    neither finds a row, and both would insert one; with this lock they take turns instead.
    Advisory locks are local to the database, so each service has its own.
    """
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(str(order_id), 0)))
    )
