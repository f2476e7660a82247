"""The consumer and its inbox, against real PostgreSQL and RabbitMQ: a redelivery is a no-op, poison
is dead-lettered at once, a failing handler is retried then dead-lettered, and a consumer whose
broker connection was closed comes back by itself."""

from __future__ import annotations

import asyncio
import collections
import json
import uuid

from contracts import Item, OrderCreated, StockFailed, StockReserved, encode
from harness.wait import eventually
from order_service.messaging import MANIFEST as ORDER
from order_service.settings import Settings as OrderSettings
from outbox.manifest import dead_letter_queue
from outbox.parsing import MAX_BODY_BYTES
from tests.support import probe
from tests.support.broker import message_for
from tests.support.orders import get_order, place_order, stock_reserved
from tests.support.services import handled, inbox_rows

RESERVED_QUEUE = ORDER.queue_for(StockReserved)
ORDER_CREATED_QUEUE = probe.manifest({OrderCreated: probe.record_effect}).queue_for(OrderCreated)


def an_order_created() -> OrderCreated:
    return OrderCreated(
        order_id=uuid.uuid4(), customer_id="alice", items=(Item(sku="widget", quantity=1),)
    )


async def test_a_message_delivered_twice_runs_its_handler_once(
    start_service, probe_database, broker, vhost
):
    consumer = await start_service(
        probe.manifest({OrderCreated: probe.record_effect}),
        probe.Settings,
        database_url=probe_database,
    )
    duplicates_before = handled("OrderCreated", "duplicate")
    event = an_order_created()

    await broker.publish_event(event, app_id="order_service")
    await broker.publish_event(event, app_id="order_service")

    await eventually(lambda: handled("OrderCreated", "duplicate") == duplicates_before + 1)
    assert [e.message_id for e in await probe.effects(consumer.sessionmaker)] == [event.event_id]
    [claim] = await inbox_rows(consumer.sessionmaker)
    assert (claim.consumer, claim.message_id, claim.emitted_by) == (
        ORDER_CREATED_QUEUE,
        event.event_id,
        "order_service",
    )
    assert vhost.get_messages(dead_letter_queue(ORDER_CREATED_QUEUE)) == []


async def test_a_stock_reservation_delivered_twice_changes_the_order_once(order_service, broker):
    order, _ = await place_order(order_service)
    reserved = stock_reserved(order)
    duplicates_before = handled("StockReserved", "duplicate")

    await broker.publish_event(reserved, app_id="inventory_service")
    first = await eventually(lambda: _order_in(order_service, order.order_id, "reserved"))
    await broker.publish_event(reserved, app_id="inventory_service")
    await eventually(lambda: handled("StockReserved", "duplicate") == duplicates_before + 1)

    again = await get_order(order_service, order.order_id)
    assert (again.status, again.total_cents, again.updated_at) == (
        "reserved",
        2500,
        first.updated_at,
    )
    assert [i.message_id for i in await inbox_rows(order_service.sessionmaker)] == [
        reserved.event_id
    ]


async def test_poison_is_dead_lettered_at_once_and_good_messages_after_it_are_handled(
    order_service, broker, vhost
):
    order, _ = await place_order(order_service, customer_id="alice")
    # Every poison message but the first and the last is about this order: had the consumer let
    # one through, the order would be reserved.
    untouched, _ = await place_order(order_service, customer_id="bob")
    retried_before = handled("StockReserved", "retried")

    def about_untouched() -> StockReserved:
        return stock_reserved(untouched)

    def fields_of(event: StockReserved) -> dict:
        return json.loads(encode(event))

    missing = about_untouched()
    oversized = about_untouched()
    poisons = {
        "malformed JSON": message_for(about_untouched(), body=b'{"event": "StockReserved", "ord'),
        "an unknown event type": message_for(about_untouched(), type="StockTeleported"),
        "another queue's event": message_for(
            StockFailed(order_id=untouched.order_id, reason="out_of_stock")
        ),
        "a field missing": message_for(
            missing,
            body=json.dumps(
                {k: v for k, v in fields_of(missing).items() if k != "amount_cents"}
            ).encode(),
        ),
        "an unknown schema version": message_for(about_untouched(), headers={"schema_version": 2}),
        "a body too big": message_for(
            oversized,
            body=json.dumps({**fields_of(oversized), "pad": "x" * MAX_BODY_BYTES}).encode(),
        ),
        "an order never heard of": message_for(
            StockReserved(order_id=uuid.uuid4(), customer_id="eve", items=(), amount_cents=1)
        ),
    }
    for message in poisons.values():
        await broker.publish(message, "StockReserved")
    good = await broker.publish_event(stock_reserved(order), app_id="inventory_service")

    await eventually(lambda: _order_in(order_service, order.order_id, "reserved"))
    dlq = dead_letter_queue(RESERVED_QUEUE)
    dead = await eventually(lambda: _at_least(vhost.get_messages(dlq), len(poisons)))
    assert sorted(m["properties"]["message_id"] for m in dead) == sorted(
        m.message_id for m in poisons.values()
    )
    for message in dead:
        [death] = message["properties"]["headers"]["x-death"]
        assert (death["reason"], death["count"], death["queue"]) == ("rejected", 1, RESERVED_QUEUE)
    assert handled("StockReserved", "retried") == retried_before
    assert (await get_order(order_service, untouched.order_id)).status == "pending"
    assert [i.message_id for i in await inbox_rows(order_service.sessionmaker)] == [
        uuid.UUID(good.message_id)
    ]


async def test_a_handler_that_keeps_failing_is_retried_then_dead_lettered(
    start_service, probe_database, broker, vhost
):
    attempts: list[uuid.UUID] = []

    def record_then_fail(effects, event):
        probe.record_effect(effects, event)
        attempts.append(event.event_id)
        raise ConnectionError("the database went away")

    consumer = await start_service(
        probe.manifest({OrderCreated: record_then_fail}),
        probe.Settings,
        database_url=probe_database,
        handler_max_attempts=3,
    )
    event = an_order_created()

    await broker.publish_event(event, app_id="order_service")

    # The management API answers in this test's loop: asked every 20 ms on a busy machine, it
    # would leave the consumer too little of the loop to go through its retries.
    [dead] = await eventually(
        lambda: vhost.get_messages(dead_letter_queue(ORDER_CREATED_QUEUE)), timeout=30, interval=0.5
    )
    assert dead["properties"]["message_id"] == str(event.event_id)
    assert attempts == [event.event_id] * 3
    assert await probe.effects(consumer.sessionmaker) == []  # each attempt rolled back
    assert await inbox_rows(consumer.sessionmaker) == []  # so a re-drive will run it again


async def test_a_handler_that_fails_twice_then_succeeds_acts_once_and_is_not_dead_lettered(
    start_service, probe_database, broker, vhost
):
    attempts: collections.Counter[uuid.UUID] = collections.Counter()

    def flaky(effects, event):
        probe.record_effect(effects, event)
        attempts[event.event_id] += 1
        if attempts[event.event_id] <= 2:
            raise ConnectionError("the database went away")

    consumer = await start_service(
        probe.manifest({OrderCreated: flaky}),
        probe.Settings,
        database_url=probe_database,
        handler_max_attempts=3,
    )
    event = an_order_created()

    await broker.publish_event(event, app_id="order_service")

    await eventually(lambda: inbox_rows(consumer.sessionmaker))
    assert attempts == {event.event_id: 3}
    assert [e.message_id for e in await probe.effects(consumer.sessionmaker)] == [event.event_id]
    assert vhost.get_messages(dead_letter_queue(ORDER_CREATED_QUEUE)) == []


async def test_a_service_whose_broker_connection_is_closed_reconnects_consumes_and_publishes(
    start_service, order_database, broker, vhost, downstream
):
    # aio-pika waits `reconnect_interval` (5 s unless the URL says otherwise) between attempts.
    order_service = await start_service(
        ORDER,
        OrderSettings,
        database_url=order_database,
        amqp_url=f"{vhost.amqp_url}?reconnect_interval=0.5",
    )
    order, _ = await place_order(order_service)
    await downstream.wait_for(1)
    reconnected = asyncio.Event()
    order_service.connection.reconnect_callbacks.add(lambda *_: reconnected.set())

    assert vhost.close_connections("order_service") == 1
    await broker.publish_event(stock_reserved(order), app_id="inventory_service")
    _, created_later = await place_order(order_service, customer_id="bob")

    await eventually(reconnected.is_set)
    await eventually(lambda: _order_in(order_service, order.order_id, "reserved"))
    await eventually(lambda: downstream.with_id(created_later.event_id))


async def _order_in(messaging, order_id, status):
    order = await get_order(messaging, order_id)
    return order if order.status == status else None


def _at_least(items: list, count: int) -> list | None:
    return items if len(items) >= count else None
