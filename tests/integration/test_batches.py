"""Batched deliveries, against real PostgreSQL and RabbitMQ: what is ready is handled in one
transaction; a consumer killed before a batch's commit, after it, or between its acks leaves
exactly one effect per event; a batch that fails is handled again one delivery at a time, so
poison takes none of its neighbours with it; and two batches that share orders or products
never deadlock.

The probe service's gates (`probe.Gate`) hold a batch in the middle of its transaction, so that
the tests know which deliveries travel together.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from sqlalchemy import func, select, text

from contracts import Event, Item, OrderCancelled, OrderCreated, PaymentFailed
from harness.wait import eventually
from inventory_service.messaging import MANIFEST as INVENTORY
from inventory_service.models import Product
from inventory_service.settings import Settings as InventorySettings
from outbox import Messaging, PoisonMessage, faults, metrics
from outbox.consumer import deliver
from outbox.inbox import Delivery, lock_key
from outbox.manifest import dead_letter_queue
from outbox.tables import InboxMessage
from tests.support import probe
from tests.support.services import crashed, handled, stop_messaging
from tools.postgres import libpq

ROUNDS = 20
#: The probe service recording an effect per OrderCreated: what most tests here consume with.
RECORDING = probe.manifest({OrderCreated: probe.record_effect})
QUEUE = RECORDING.queue_for(OrderCreated)


@pytest.fixture(autouse=True)
def _no_gates_left() -> Iterator[None]:
    yield
    for gate in probe.GATES.values():
        gate.open()
    probe.GATES.clear()


def an_order_created() -> OrderCreated:
    return OrderCreated(
        order_id=uuid.uuid4(), customer_id="alice", items=(Item(sku="widget", quantity=1),)
    )


def gated(event: Event) -> probe.Gate:
    gate = probe.GATES[event.order_id] = probe.Gate()
    return gate


async def held_batch(messaging: Messaging, broker, count: int) -> tuple[list[Event], probe.Gate]:
    """`count` events published while the only worker is busy, then taken as one batch and held
    at its gate; returns them and the gate (open it to let the batch commit)."""
    first = an_order_created()
    busy = gated(first)
    await broker.publish_event(first, app_id="order_service")
    await busy.reached.wait()
    events = [an_order_created() for _ in range(count)]
    gate = gated(events[0])
    for event in events:
        await broker.publish_event(event, app_id="order_service")
    await eventually(lambda: messaging.consumer.waiting == count)
    busy.open()
    await gate.reached.wait()
    assert [e.event_id for e in gate.batch] == [e.event_id for e in events]
    return [first, *events], gate


async def effects_of(messaging: Messaging) -> list[uuid.UUID]:
    return sorted(e.message_id for e in await probe.effects(messaging.sessionmaker))


async def test_deliveries_ready_together_are_handled_in_one_transaction(
    start_service, probe_database, broker
):
    consumer = await start_service(
        RECORDING, probe.Settings, database_url=probe_database, consumer_workers=1
    )
    events, gate = await held_batch(consumer, broker, 5)
    gate.open()

    await eventually(lambda: _count_effects(consumer, len(events)))
    assert await effects_of(consumer) == sorted(e.event_id for e in events)
    async with consumer.sessionmaker() as session:
        transactions = await session.scalar(
            select(func.count(text("DISTINCT xmin::text"))).where(
                InboxMessage.message_id.in_([e.event_id for e in events[1:]])
            )
        )
    assert transactions == 1  # the five inbox rows were written by one transaction


@pytest.mark.parametrize(
    ("point", "duplicates"),
    [("consumer.before_commit", 0), ("consumer.after_commit", 5)],
)
async def test_a_consumer_killed_around_a_batchs_commit_leaves_one_effect_per_event(
    start_service, probe_database, broker, point, duplicates
):
    manifest = RECORDING
    first_life = await start_service(
        manifest, probe.Settings, database_url=probe_database, consumer_workers=1
    )
    events, gate = await held_batch(first_life, broker, 5)
    faults.arm(point)
    gate.open()
    await eventually(lambda: crashed(first_life))
    await stop_messaging(first_life)  # as a process would die: nothing more is acked
    duplicates_before = handled("OrderCreated", "duplicate")

    second_life = await start_service(manifest, probe.Settings, database_url=probe_database)

    await eventually(lambda: _count_effects(second_life, len(events)))
    await eventually(lambda: handled("OrderCreated", "duplicate") == duplicates_before + duplicates)
    assert await effects_of(second_life) == sorted(e.event_id for e in events)


async def test_a_consumer_killed_between_a_batchs_acks_leaves_one_effect_per_event(
    start_service, probe_database, broker
):
    manifest = RECORDING
    first_life = await start_service(
        manifest, probe.Settings, database_url=probe_database, consumer_workers=2
    )
    # One worker holds an early delivery open, so that the batch's acks cannot be one `multiple`
    # ack: they go one by one, and the consumer dies after the first.
    held, other = an_order_created(), an_order_created()
    holding, passing = gated(held), gated(other)
    await broker.publish_event(held, app_id="order_service")
    await holding.reached.wait()
    await broker.publish_event(other, app_id="order_service")
    await passing.reached.wait()
    batch = [an_order_created() for _ in range(5)]
    for event in batch:
        await broker.publish_event(event, app_id="order_service")
    await eventually(lambda: first_life.consumer.waiting == len(batch))
    faults.arm("consumer.during_acks")
    passing.open()
    await eventually(lambda: crashed(first_life))
    await stop_messaging(first_life)
    holding.open()
    duplicates_before = handled("OrderCreated", "duplicate")

    second_life = await start_service(manifest, probe.Settings, database_url=probe_database)

    everything = [held, other, *batch]
    await eventually(lambda: _count_effects(second_life, len(everything)))
    # The first of the batch was acked before the crash; the other four come back as duplicates.
    await eventually(lambda: handled("OrderCreated", "duplicate") == duplicates_before + 4)
    assert await effects_of(second_life) == sorted(e.event_id for e in everything)


async def test_a_batch_whose_channel_closed_before_its_acks_comes_again_and_the_consumer_goes_on(
    start_service, probe_database, broker, vhost
):
    """The broker drops the connection while a batch is in its transaction: the batch commits,
    its acks cannot be sent, the broker delivers it again on the new channel (duplicates), and
    the consumer goes on with what comes next."""
    consumer = await start_service(
        RECORDING, probe.Settings, database_url=probe_database, consumer_workers=1
    )
    events, gate = await held_batch(consumer, broker, 5)
    name = consumer.manifest.service
    before = await eventually(lambda: _connections(vhost, name), timeout=30, interval=0.5)
    assert await asyncio.to_thread(vhost.close_connections, name) == 1
    await eventually(lambda: _connections(vhost, name, besides=before), timeout=30, interval=0.5)
    duplicates_before = handled("OrderCreated", "duplicate")
    gate.open()

    later = an_order_created()
    await broker.publish_event(later, app_id="order_service")

    await eventually(lambda: _count_effects(consumer, len(events) + 1))
    await eventually(lambda: handled("OrderCreated", "duplicate") == duplicates_before + 5)
    assert await effects_of(consumer) == sorted(e.event_id for e in [*events, later])


async def _connections(vhost, name: str, besides: set[str] = frozenset()) -> set[str]:
    """The broker's names for the connections of client `name`; empty while one of them is
    among `besides` (not reconnected yet)."""
    found = {c["name"] for c in await asyncio.to_thread(vhost.connections, name)}
    return set() if found & besides else found


async def test_a_batch_that_fails_is_handled_one_delivery_at_a_time_and_poison_goes_alone(
    start_service, probe_database, broker, vhost
):
    poisoned: set[uuid.UUID] = set()

    def record_unless_poisoned(effects: probe.Effects, event: OrderCreated) -> None:
        if event.order_id in poisoned:
            raise PoisonMessage(f"order {event.order_id} makes no sense")
        probe.record_effect(effects, event)

    consumer = await start_service(
        probe.manifest({OrderCreated: record_unless_poisoned}),
        probe.Settings,
        database_url=probe_database,
        consumer_workers=1,
    )
    split_before = metrics.BATCHES_SPLIT._value.get()
    retried_before = handled("OrderCreated", "retried")
    events, gate = await held_batch(consumer, broker, 5)
    poisoned.add(events[3].order_id)
    gate.open()

    good = [e for e in events if e.order_id not in poisoned]
    await eventually(lambda: _count_effects(consumer, len(good)))
    # The management API answers in this test's loop: asked every 20 ms on a busy machine, it
    # would leave the consumer too little of the loop to go through its retries.
    [dead] = await eventually(
        lambda: vhost.get_messages(dead_letter_queue(QUEUE)), timeout=30, interval=0.5
    )
    assert dead["properties"]["message_id"] == str(events[3].event_id)
    assert await effects_of(consumer) == sorted(e.event_id for e in good)
    assert metrics.BATCHES_SPLIT._value.get() == split_before + 1
    assert handled("OrderCreated", "retried") == retried_before  # nobody retried: poison is final


async def test_two_batches_that_want_the_same_orders_in_opposite_orders_take_turns(
    inventory, servers
):
    """Another session holds both orders' locks; the batches queue behind it, and the locks are
    let go the higher key first. Had each batch claimed in its own order, the first to get one
    lock would wait for the other's and the other for it: a deadlock, every time."""
    first, second = uuid.uuid4(), uuid.uuid4()
    keys = sorted([lock_key(first), lock_key(second)])
    ahead = [_created(first, "mug"), _created(second, "mug")]
    behind = [_failed(second), _cancelled(first)]
    async with await psycopg.AsyncConnection.connect(_libpq(inventory), autocommit=True) as blocker:
        for key in keys:
            await blocker.execute("SELECT pg_advisory_lock(%s)", [key])
        both = asyncio.gather(
            deliver(inventory.pool, INVENTORY, ahead),
            deliver(inventory.pool, INVENTORY, behind),
        )
        await eventually(lambda: _waiting(inventory, 2))
        for key in reversed(keys):
            await blocker.execute("SELECT pg_advisory_unlock(%s)", [key])
        assert await both == [[True, True], [True, True]]  # a deadlock would have aborted one
    assert await _stock(inventory) == {"cup": 0, "jar": 0, "mug": 0, "pot": 0}  # came out right


async def test_two_batches_that_want_the_same_products_in_opposite_orders_take_turns(
    inventory, servers
):
    """Two sessions hold the products' rows, and let go the later sku first. A batch locking its
    products handler by handler would lock them in its events' order: a deadlock, every time."""
    ahead = [_created(uuid.uuid4(), "mug"), _created(uuid.uuid4(), "cup")]
    behind = [_created(uuid.uuid4(), "cup"), _created(uuid.uuid4(), "mug")]
    holders = {}
    for sku in ("cup", "mug"):
        holders[sku] = await psycopg.AsyncConnection.connect(_libpq(inventory))
        await holders[sku].execute("SELECT 1 FROM products WHERE sku = %s FOR UPDATE", [sku])
    try:
        both = asyncio.gather(
            deliver(inventory.pool, INVENTORY, ahead),
            deliver(inventory.pool, INVENTORY, behind),
        )
        await eventually(lambda: _waiting(inventory, 2))
        for sku in ("mug", "cup"):
            await holders[sku].commit()
        assert await both == [[True, True], [True, True]]
    finally:
        for holder in holders.values():
            await holder.close()
    assert await _stock(inventory) == {"cup": 2, "jar": 0, "mug": 2, "pot": 0}


async def test_batches_under_load_on_two_replicas_never_deadlock(
    inventory, migrated_database, servers
):
    """Two replicas' batches, reserving and releasing orders that share products, at once."""
    replica = Messaging(INVENTORY, InventorySettings(database_url=inventory.settings.database_url))
    deadlocks_before = _deadlocks(servers, inventory.settings.database_url)
    try:
        for _ in range(ROUNDS):
            orders = [uuid.uuid4() for _ in range(10)]
            skus = ["mug", "cup", "pot", "jar"]
            ahead = [_created(o, skus[i % 4], skus[3 - i % 4]) for i, o in enumerate(orders)]
            behind = [_failed(o) if i % 2 else _cancelled(o) for i, o in enumerate(orders)][::-1]
            ran = await asyncio.gather(
                deliver(inventory.pool, INVENTORY, ahead),
                deliver(replica.pool, INVENTORY, behind),
            )
            assert ran == [[True] * 10, [True] * 10]
    finally:
        await replica.dispose()
    assert await _stock(inventory) == {"cup": 0, "jar": 0, "mug": 0, "pot": 0}
    await inventory.dispose()  # the sessions flush their statistics as they end
    assert _deadlocks(servers, inventory.settings.database_url) == deadlocks_before


@pytest.fixture
async def inventory(migrated_database) -> AsyncIterator[Messaging]:
    """inventory_service's database and sessions (no broker: batches are delivered by hand), with
    plenty of four products."""
    url = await migrated_database(INVENTORY.service)
    messaging = Messaging(INVENTORY, InventorySettings(database_url=url, db_pool_size=4))
    async with messaging.sessionmaker.begin() as session:
        for sku in ("cup", "jar", "mug", "pot"):
            session.add(Product(sku=sku, name=sku, price_cents=100, on_hand=10**6, reserved=0))
    yield messaging
    await messaging.dispose()


def _created(order_id: uuid.UUID, *skus: str) -> Delivery:
    items = tuple(Item(sku=sku, quantity=1) for sku in skus)
    event = OrderCreated(order_id=order_id, customer_id="ann", items=items)
    return Delivery(INVENTORY.queue_for(OrderCreated), event)


def _failed(order_id: uuid.UUID) -> Delivery:
    event = PaymentFailed(order_id=order_id, customer_id="ann", reason="insufficient_funds")
    return Delivery(INVENTORY.queue_for(PaymentFailed), event)


def _cancelled(order_id: uuid.UUID) -> Delivery:
    event = OrderCancelled(order_id=order_id, customer_id="ann", reason="customer_request")
    return Delivery(INVENTORY.queue_for(OrderCancelled), event)


def _libpq(messaging: Messaging) -> str:
    return libpq(messaging.settings.database_url)


async def _waiting(messaging: Messaging, count: int) -> bool:
    """At least `count` sessions of the service's database wait for a lock (asked on a connection
    of its own: a transaction would keep seeing the sessions of its first look)."""
    async with await psycopg.AsyncConnection.connect(_libpq(messaging), autocommit=True) as look:
        cursor = await look.execute(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid IN"
            " (SELECT pid FROM pg_stat_activity WHERE datname = current_database())"
        )
        row = await cursor.fetchone()
    return row is not None and row[0] >= count


async def _stock(messaging: Messaging) -> dict[str, int]:
    """Units still reserved, per product."""
    async with messaging.sessionmaker() as session:
        return {p.sku: p.reserved for p in await session.scalars(select(Product))}


def _deadlocks(servers, url: str) -> int:
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(libpq(servers.postgres_admin_url)) as connection:
        row = connection.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = %s", [database]
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _count_effects(messaging: Messaging, count: int) -> bool:
    return len(await probe.effects(messaging.sessionmaker)) == count
