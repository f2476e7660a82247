"""What inventory_service does when an event arrives: reserve, sell or give back an order's stock.

Handlers change stock and stage what they emit in the session they are given; the consumer owns
the transaction, and its inbox claim has locked the order already. Each handler locks the order's
reservation, then its products in sku order, so that concurrent events take turns without
deadlocking.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

import outbox
from contracts import (
    Item,
    OrderCancelled,
    OrderCreated,
    PaymentFailed,
    PaymentSucceeded,
    Shortage,
    StockCommitted,
    StockFailed,
    StockReleased,
    StockReserved,
)
from inventory_service.models import Product, Reservation, Status, quantities
from outbox import PoisonMessage


async def reserve_stock(session: AsyncSession, event: OrderCreated) -> None:
    """Hold every line of the order, or none of them and say why."""
    if not event.items or any(item.quantity < 1 for item in event.items):
        raise PoisonMessage("an order needs at least one line, each of at least one unit")
    lines: list[dict[str, Any]] = [{"sku": i.sku, "quantity": i.quantity} for i in event.items]
    reservation = await _locked(session, event.order_id)
    if reservation is not None:
        if reservation.refuse_cancelled(lines):
            outbox.add(session, StockFailed(order_id=event.order_id, reason="order_cancelled"))
        return

    requested = quantities(lines)
    products = await _locked_products(session, requested)
    unknown = [sku for sku in requested if sku not in products]
    if unknown:
        shortages = [Shortage(sku=sku, requested=requested[sku], available=0) for sku in unknown]
        _refuse(session, event, lines, "unknown_product", shortages)
        return
    short = [
        Shortage(sku=sku, requested=quantity, available=products[sku].available)
        for sku, quantity in requested.items()
        if products[sku].available < quantity
    ]
    if short:
        _refuse(session, event, lines, "out_of_stock", short)
        return

    for sku, quantity in requested.items():
        products[sku].reserve(quantity)
    priced = [{**line, "unit_price_cents": products[line["sku"]].price_cents} for line in lines]
    reservation = Reservation.hold(event.order_id, event.customer_id, priced)
    session.add(reservation)
    outbox.add(
        session,
        StockReserved(
            order_id=event.order_id,
            customer_id=event.customer_id,
            items=_items(reservation),
            amount_cents=reservation.amount_cents,
        ),
    )


async def commit_stock(session: AsyncSession, event: PaymentSucceeded) -> None:
    """The order was paid: its held stock is sold. A charge for an order whose stock was already
    released is none of ours: payment refunds it when it sees OrderCancelled."""
    reservation = await _locked(session, event.order_id)
    if reservation is None or not reservation.commit():
        return
    products = await _locked_products(session, reservation.quantities())
    for sku, quantity in reservation.quantities().items():
        products[sku].sell(quantity)
    outbox.add(session, StockCommitted(order_id=event.order_id))


async def release_stock(session: AsyncSession, event: PaymentFailed | OrderCancelled) -> None:
    """Give back what the order holds: reserved stock, or stock already sold if it was cancelled."""
    reservation = await _locked(session, event.order_id)
    if reservation is None:
        # Cancelled before OrderCreated got here: leave a tombstone so that it is never reserved.
        session.add(Reservation.tombstone(event.order_id, event.customer_id))
        return
    sold = reservation.status == Status.COMMITTED
    if not reservation.release(return_sold=isinstance(event, OrderCancelled)):
        return
    products = await _locked_products(session, reservation.quantities())
    for sku, quantity in reservation.quantities().items():
        if sold:
            products[sku].take_back(quantity)
        else:
            products[sku].unreserve(quantity)
    outbox.add(session, StockReleased(order_id=event.order_id, items=_items(reservation)))


def _refuse(
    session: AsyncSession,
    event: OrderCreated,
    lines: list[dict[str, Any]],
    reason: str,
    shortages: list[Shortage],
) -> None:
    session.add(Reservation.refuse(event.order_id, event.customer_id, lines))
    outbox.add(
        session,
        StockFailed(order_id=event.order_id, reason=reason, shortages=tuple(shortages)),  # type: ignore[arg-type]
    )


async def _locked(session: AsyncSession, order_id: uuid.UUID) -> Reservation | None:
    """The order's reservation, if any, locked (the order itself is locked by the inbox claim,
    even when it has no reservation yet)."""
    return await session.get(Reservation, order_id, with_for_update=True)


async def _locked_products(session: AsyncSession, skus: Iterable[str]) -> dict[str, Product]:
    """The products of these skus that exist, locked in sku order so handlers never deadlock."""
    rows = await session.scalars(
        select(Product).where(Product.sku.in_(list(skus))).order_by(Product.sku).with_for_update()
    )
    return {product.sku: product for product in rows}


def _items(reservation: Reservation) -> tuple[Item, ...]:
    return tuple(
        Item(sku=i["sku"], quantity=i["quantity"], unit_price_cents=i["unit_price_cents"])
        for i in reservation.items
    )
