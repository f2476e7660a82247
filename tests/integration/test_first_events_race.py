"""The first two events of an order, arriving at once, take turns in inventory and payment.

Neither finds a row to lock (`FOR UPDATE` locks only what exists): without the order's lock that
the inbox claim takes (`outbox.inbox.claim`) both would insert one, and one of the two deliveries
would fail on the primary key and need a retry. Here each delivery must go through on its first
attempt, and the order end right.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from contracts import Event, Item, OrderCancelled, OrderCreated, StockReserved
from inventory_service.messaging import MANIFEST as INVENTORY
from inventory_service.models import Product, Reservation
from inventory_service.settings import Settings as InventorySettings
from outbox import Manifest, Messaging, MessagingSettings
from outbox.consumer import deliver
from outbox.inbox import Delivery
from payment_service.messaging import MANIFEST as PAYMENT
from payment_service.models import Account, Payment
from payment_service.settings import Settings as PaymentSettings

RACES = 20


async def race(manifest: Manifest, messaging: Messaging, *events: Event) -> list[bool]:
    """Deliver the events concurrently, each exactly once, as two consumers would."""
    ran = await asyncio.gather(
        *(
            deliver(
                messaging.pool,
                manifest,
                [Delivery(manifest.queue_for(type(event)), event)],
            )
            for event in events
        )
    )
    return [first for [first] in ran]


async def service(
    migrated_database: Callable[[str], Awaitable[str]],
    manifest: Manifest,
    settings_class: type[MessagingSettings],
) -> Messaging:
    url = await migrated_database(manifest.service)
    return Messaging(manifest, settings_class(database_url=url))


async def test_order_created_racing_its_cancellation_reserves_nothing_in_the_end(
    migrated_database,
):
    inventory = await service(migrated_database, INVENTORY, InventorySettings)
    try:
        async with inventory.sessionmaker.begin() as session:
            session.add(Product(sku="mug", name="mug", price_cents=500, on_hand=RACES, reserved=0))
        for _ in range(RACES):
            order_id = uuid.uuid4()
            created = OrderCreated(
                order_id=order_id, customer_id="ann", items=(Item(sku="mug", quantity=1),)
            )
            cancelled = OrderCancelled(
                order_id=order_id, customer_id="ann", reason="customer_request"
            )
            assert await race(INVENTORY, inventory, created, cancelled) == [True, True]
            async with inventory.sessionmaker() as session:
                reservation = await session.get(Reservation, order_id)
                assert reservation is not None
                assert reservation.status in ("released", "rejected"), reservation.status
        async with inventory.sessionmaker() as session:
            mug = await session.scalar(select(Product).where(Product.sku == "mug"))
            assert mug is not None
            assert (mug.on_hand, mug.reserved) == (RACES, 0)
    finally:
        await inventory.dispose()


async def test_a_charge_racing_the_orders_cancellation_leaves_no_money_taken(migrated_database):
    payment = await service(migrated_database, PAYMENT, PaymentSettings)
    try:
        async with payment.sessionmaker.begin() as session:
            account = Account.open("ann")
            session.add(account)
            session.add(account.deposit(10_000))
        for _ in range(RACES):
            order_id = uuid.uuid4()
            reserved = StockReserved(
                order_id=order_id,
                customer_id="ann",
                items=(Item(sku="mug", quantity=1, unit_price_cents=500),),
                amount_cents=500,
            )
            cancelled = OrderCancelled(
                order_id=order_id, customer_id="ann", reason="customer_request"
            )
            assert await race(PAYMENT, payment, reserved, cancelled) == [True, True]
            async with payment.sessionmaker() as session:
                charge = await session.get(Payment, order_id)
                assert charge is not None
                assert charge.status in ("failed", "refunded"), charge.status
        async with payment.sessionmaker() as session:
            account = await session.get(Account, "ann")
            assert account is not None
            assert account.balance_cents == 10_000
    finally:
        await payment.dispose()
