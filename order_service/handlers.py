"""What order_service does when an order is placed, when an event arrives, and when an order's
deadline passes.

Handlers change the order and stage what it emits in the session they are given; the consumer
owns the transaction. An order is locked (`FOR UPDATE`) so that concurrent events for it take turns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

import outbox
from contracts import (
    Item,
    OrderCancelled,
    OrderCompleted,
    OrderCreated,
    PaymentFailed,
    PaymentSucceeded,
    StockCommitted,
    StockFailed,
    StockReserved,
)
from order_service.models import Order, Status
from outbox import PoisonMessage


def place_order(
    session: AsyncSession, customer_id: str, lines: Sequence[tuple[str, int]], timeout_s: float
) -> tuple[Order, OrderCreated]:
    """A new pending order and its OrderCreated, in the caller's transaction (`POST /orders`)."""
    order = Order.place(customer_id, [{"sku": s, "quantity": q} for s, q in lines], timeout_s)
    session.add(order)
    created = OrderCreated(
        order_id=order.order_id,
        customer_id=customer_id,
        items=tuple(Item(sku=s, quantity=q) for s, q in lines),
    )
    outbox.add(session, created)
    return order, created


async def mark_reserved(session: AsyncSession, event: StockReserved) -> None:
    order = await _locked(session, event.order_id)
    items = [
        {"sku": i.sku, "quantity": i.quantity, "unit_price_cents": i.unit_price_cents}
        for i in event.items
    ]
    if order.mark_reserved(items, event.amount_cents):
        _complete_if_done(session, order)


async def mark_paid(session: AsyncSession, event: PaymentSucceeded) -> None:
    order = await _locked(session, event.order_id)
    if order.mark_paid(event.amount_cents):
        _complete_if_done(session, order)


async def mark_stock_committed(session: AsyncSession, event: StockCommitted) -> None:
    order = await _locked(session, event.order_id)
    if order.mark_stock_committed():
        _complete_if_done(session, order)


async def cancel_for_stock(session: AsyncSession, event: StockFailed) -> None:
    if event.reason == "order_cancelled":
        return  # inventory answering our own cancellation: nothing left to do
    cancel(session, await _locked(session, event.order_id), event.reason)


async def cancel_for_payment(session: AsyncSession, event: PaymentFailed) -> None:
    if event.reason == "order_cancelled":
        return
    cancel(session, await _locked(session, event.order_id), event.reason)


def cancel(session: AsyncSession, order: Order, reason: str) -> bool:
    """Cancel `order` and tell the others, who compensate what they did for it."""
    if not order.cancel(reason):
        return False
    outbox.add(
        session,
        OrderCancelled(order_id=order.order_id, customer_id=order.customer_id, reason=reason),  # type: ignore[arg-type]
    )
    return True


async def cancel_overdue(session: AsyncSession, limit: int = 100) -> int:
    """Cancel orders still pending or reserved past their deadline (reason `timeout`).

    Several replicas may sweep at once: `SKIP LOCKED` gives each overdue order to one of them.
    A partial index on open orders keeps the query cheap when nothing is overdue.
    """
    overdue = (
        await session.scalars(
            select(Order)
            .where(
                Order.status.in_([Status.PENDING, Status.RESERVED]),
                Order.deadline_at < datetime.now(UTC),
            )
            .order_by(Order.deadline_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    for order in overdue:
        cancel(session, order, "timeout")
    return len(overdue)


def _complete_if_done(session: AsyncSession, order: Order) -> None:
    if order.complete():
        assert order.total_cents is not None
        outbox.add(
            session,
            OrderCompleted(
                order_id=order.order_id,
                customer_id=order.customer_id,
                amount_cents=order.total_cents,
            ),
        )


async def _locked(session: AsyncSession, order_id: uuid.UUID) -> Order:
    order = await session.get(Order, order_id, with_for_update=True)
    if order is None:
        # Every event of ours follows an OrderCreated that committed with its order; one for an
        # order we never had is foreign or corrupt, and retrying will not change that.
        raise PoisonMessage(f"no order {order_id}")
    return order
