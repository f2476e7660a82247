"""order_service as the other services see it: orders placed as its API does, answers to them."""

from __future__ import annotations

import uuid

from contracts import Item, OrderCreated, StockReserved
from order_service import handlers
from order_service.models import Order
from order_service.store import Orders
from outbox import Messaging, transaction
from outbox.unit import session


async def place_order(
    messaging: Messaging,
    customer_id: str = "alice",
    items: tuple[tuple[str, int], ...] = (("widget", 2),),
) -> tuple[Order, OrderCreated]:
    """What `POST /orders` does: the order and its OrderCreated, committed together."""
    async with session(messaging.sessionmaker) as opened:
        return handlers.place_order(Orders(transaction.of(opened)), customer_id, items, 300.0)


def stock_reserved(order: Order, unit_price_cents: int = 1250) -> StockReserved:
    """What inventory_service answers to the order's OrderCreated when it has the stock."""
    items = tuple(
        Item(sku=line["sku"], quantity=line["quantity"], unit_price_cents=unit_price_cents)
        for line in order.items
    )
    return StockReserved(
        order_id=order.order_id,
        customer_id=order.customer_id,
        items=items,
        amount_cents=sum(i.quantity * unit_price_cents for i in items),
    )


async def get_order(messaging: Messaging, order_id: uuid.UUID) -> Order:
    async with messaging.sessionmaker() as session:
        order = await session.get(Order, order_id)
        assert order is not None
        return order
