"""What order_service does when an order is placed, when an event arrives, and when an order's
deadline passes.

Handlers take the orders their transaction loaded and locked (`Orders`), change the order and
emit what follows; they never touch the database, and the consumer owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from contracts import (
    CancelReason,
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
from order_service.models import Order
from order_service.store import Orders
from outbox import PoisonMessage, continuing
from outbox.transaction import Transaction


def place_order(
    orders: Orders, customer_id: str, lines: Sequence[tuple[str, int]], timeout_s: float
) -> tuple[Order, OrderCreated]:
    """A new pending order and its OrderCreated, in the caller's transaction (`POST /orders`)."""
    order = orders.add(
        Order.place(customer_id, [{"sku": s, "quantity": q} for s, q in lines], timeout_s)
    )
    created = OrderCreated(
        order_id=order.order_id,
        customer_id=customer_id,
        items=tuple(Item(sku=s, quantity=q) for s, q in lines),
    )
    orders.emit(created)
    return order, created


def mark_reserved(orders: Orders, event: StockReserved) -> None:
    order = _known(orders, event.order_id)
    items = [
        {"sku": i.sku, "quantity": i.quantity, "unit_price_cents": i.unit_price_cents}
        for i in event.items
    ]
    if order.mark_reserved(items, event.amount_cents):
        _complete_if_done(orders, order)


def mark_paid(orders: Orders, event: PaymentSucceeded) -> None:
    order = _known(orders, event.order_id)
    if order.mark_paid(event.amount_cents):
        _complete_if_done(orders, order)


def mark_stock_committed(orders: Orders, event: StockCommitted) -> None:
    order = _known(orders, event.order_id)
    if order.mark_stock_committed():
        _complete_if_done(orders, order)


def cancel_for_stock(orders: Orders, event: StockFailed) -> None:
    if event.reason == "order_cancelled":
        return  # inventory answering our own cancellation: nothing left to do
    cancel(orders, _known(orders, event.order_id), event.reason)


def cancel_for_payment(orders: Orders, event: PaymentFailed) -> None:
    if event.reason == "order_cancelled":
        return
    cancel(orders, _known(orders, event.order_id), event.reason)


def cancel(orders: Orders, order: Order, reason: CancelReason) -> bool:
    """Cancel `order` and tell the others, who compensate what they did for it."""
    if not order.cancel(reason):
        return False
    orders.emit(
        OrderCancelled(order_id=order.order_id, customer_id=order.customer_id, reason=reason)
    )
    return True


async def cancel_order(
    tx: Transaction, order_id: uuid.UUID, customer_id: str | None = None
) -> tuple[Order | None, bool]:
    """The customer cancels (`POST /orders/{id}/cancel`): the order, if there is one (and it is
    `customer_id`'s, unless None), and whether this request cancelled it."""
    orders = await Orders.lock(tx, [order_id])
    order = orders.find(order_id)
    if order is None or customer_id not in (None, order.customer_id):
        return None, False
    # The cancellation and its compensations join the saga's trace (linked to this request's).
    sagas = await orders.traces()
    with continuing(sagas.get(order_id), "cancel order", **{"saga.order_id": str(order_id)}):
        changed = cancel(orders, order, "customer_request")
    return order, changed


async def cancel_overdue(tx: Transaction, limit: int = 100) -> int:
    """Cancel orders still pending or reserved past their deadline (reason `timeout`).

    Several replicas may sweep at once: each overdue order goes to one of them.
    """
    orders, overdue = await Orders.overdue(tx, limit)
    sagas = await orders.traces() if overdue else {}
    for order in overdue:
        with continuing(
            sagas.get(order.order_id), "order deadline", **{"saga.order_id": str(order.order_id)}
        ):
            cancel(orders, order, "timeout")
    return len(overdue)


def _complete_if_done(orders: Orders, order: Order) -> None:
    if order.complete():
        assert order.total_cents is not None
        orders.emit(
            OrderCompleted(
                order_id=order.order_id,
                customer_id=order.customer_id,
                amount_cents=order.total_cents,
            )
        )


def _known(orders: Orders, order_id: uuid.UUID) -> Order:
    order = orders.find(order_id)
    if order is None:
        # Every event of ours follows an OrderCreated that committed with its order; one for an
        # order we never had is foreign or corrupt, and retrying will not change that.
        raise PoisonMessage(f"no order {order_id}")
    return order
