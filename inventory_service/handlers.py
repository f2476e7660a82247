"""What inventory_service does when an event arrives (reserve, sell or give back an order's
stock) and when an operator sets a product (`PUT /products/{sku}`).

Handlers take the stock their transaction loaded and locked (`Stock`: the orders' reservations,
then their products in sku order, so that concurrent transactions take turns without
deadlocking), change it and emit what follows; they never touch the database, and the consumer
owns the transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import (
    Item,
    OrderCancelled,
    OrderCreated,
    PaymentFailed,
    PaymentSucceeded,
    Shortage,
    StockCommitted,
    StockFailed,
    StockFailReason,
    StockReleased,
    StockReserved,
)
from inventory_service.models import Product, Reservation, Status, quantities
from inventory_service.store import Stock
from outbox import PoisonMessage


async def put_product(
    session: AsyncSession, sku: str, name: str, price_cents: int, on_hand: int
) -> tuple[Product, bool]:
    """Create the product, or set its name, price and stock (`Product.update`); the product,
    locked, and whether it was created. Of two requests creating one sku, one creates it."""
    created = await session.scalar(
        insert(Product)
        .values(sku=sku, name=name, price_cents=price_cents, on_hand=on_hand, reserved=0)
        .on_conflict_do_nothing()
        .returning(Product.sku)
    )
    product = await session.get(Product, sku, with_for_update=True)
    assert product is not None
    if created is None:
        product.update(name, price_cents, on_hand)
    return product, created is not None


def reserve_stock(stock: Stock, event: OrderCreated) -> None:
    """Hold every line of the order, or none of them and say why."""
    if not event.items or any(item.quantity < 1 for item in event.items):
        raise PoisonMessage("an order needs at least one line, each of at least one unit")
    lines: list[dict[str, Any]] = [{"sku": i.sku, "quantity": i.quantity} for i in event.items]
    reservation = stock.reservation(event.order_id)
    if reservation is not None:
        if reservation.refuse_cancelled(lines):
            stock.emit(StockFailed(order_id=event.order_id, reason="order_cancelled"))
        return

    requested = quantities(lines)
    products = stock.products_of(requested)
    unknown = [sku for sku in requested if sku not in products]
    if unknown:
        shortages = [Shortage(sku=sku, requested=requested[sku], available=0) for sku in unknown]
        _refuse(stock, event, lines, "unknown_product", shortages)
        return
    short = [
        Shortage(sku=sku, requested=quantity, available=products[sku].available)
        for sku, quantity in requested.items()
        if products[sku].available < quantity
    ]
    if short:
        _refuse(stock, event, lines, "out_of_stock", short)
        return

    for sku, quantity in requested.items():
        products[sku].reserve(quantity)
    priced = [{**line, "unit_price_cents": products[line["sku"]].price_cents} for line in lines]
    reservation = stock.reservations.add(
        Reservation.hold(event.order_id, event.customer_id, priced)
    )
    stock.emit(
        StockReserved(
            order_id=event.order_id,
            customer_id=event.customer_id,
            items=_items(reservation),
            amount_cents=reservation.amount_cents,
        )
    )


def commit_stock(stock: Stock, event: PaymentSucceeded) -> None:
    """The order was paid: its held stock is sold. A charge for an order whose stock was already
    released is none of ours: payment refunds it when it sees OrderCancelled."""
    reservation = stock.reservation(event.order_id)
    if reservation is None or not reservation.commit():
        return
    products = stock.products_of(reservation.quantities())
    for sku, quantity in reservation.quantities().items():
        products[sku].sell(quantity)
    stock.emit(StockCommitted(order_id=event.order_id))


def release_stock(stock: Stock, event: PaymentFailed | OrderCancelled) -> None:
    """Give back what the order holds: reserved stock, or stock already sold if it was cancelled."""
    reservation = stock.reservation(event.order_id)
    if reservation is None:
        # Cancelled before OrderCreated got here: leave a tombstone so that it is never reserved.
        stock.reservations.add(Reservation.tombstone(event.order_id, event.customer_id))
        return
    sold = reservation.status == Status.COMMITTED
    if not reservation.release(return_sold=isinstance(event, OrderCancelled)):
        return
    products = stock.products_of(reservation.quantities())
    for sku, quantity in reservation.quantities().items():
        if sold:
            products[sku].take_back(quantity)
        else:
            products[sku].unreserve(quantity)
    stock.emit(StockReleased(order_id=event.order_id, items=_items(reservation)))


def _refuse(
    stock: Stock,
    event: OrderCreated,
    lines: list[dict[str, Any]],
    reason: StockFailReason,
    shortages: list[Shortage],
) -> None:
    stock.reservations.add(Reservation.refuse(event.order_id, event.customer_id, lines))
    stock.emit(StockFailed(order_id=event.order_id, reason=reason, shortages=tuple(shortages)))


def _items(reservation: Reservation) -> tuple[Item, ...]:
    return tuple(
        Item(sku=i["sku"], quantity=i["quantity"], unit_price_cents=i["unit_price_cents"])
        for i in reservation.items
    )
