"""`make dlq` and `make redrive` (tools.dlq) against a real broker: dead letters are listed with why
they died, and a re-driven message keeps its identity, so it is handled once however often it is
re-driven."""

from __future__ import annotations

import collections
import uuid
from datetime import UTC, datetime

from contracts import Item, OrderCreated
from harness.wait import eventually
from outbox.manifest import dead_letter_queue
from tests.support import probe
from tests.support.broker import message_for
from tests.support.services import handled
from tools import dlq

QUEUE = probe.manifest({OrderCreated: probe.record_effect}).queue_for(OrderCreated)


def an_order_created() -> OrderCreated:
    return OrderCreated(
        order_id=uuid.uuid4(), customer_id="alice", items=(Item(sku="widget", quantity=1),)
    )


async def test_a_poison_message_is_listed_with_its_reason_and_death_count(
    start_service, probe_database, broker, vhost
):
    await start_service(
        probe.manifest({OrderCreated: probe.record_effect}),
        probe.Settings,
        database_url=probe_database,
    )
    event = an_order_created()

    await broker.publish_event(event, body=b'{"order_id": "not a uui', app_id="order_service")

    [letter] = await eventually(lambda: dlq.list_dead_letters(vhost.amqp_url, vhost.api))
    assert (letter.dlq, letter.queue, letter.reason, letter.deaths) == (
        dead_letter_queue(QUEUE),
        QUEUE,
        "rejected",
        1,
    )
    assert (letter.message_id, letter.type, letter.correlation_id, letter.app_id) == (
        str(event.event_id),
        "OrderCreated",
        str(event.order_id),
        "order_service",
    )
    assert letter.routing_key == "OrderCreated"
    # Listing takes nothing away.
    assert await dlq.list_dead_letters(vhost.amqp_url, vhost.api) == [letter]


async def test_re_driven_poison_dies_again_and_its_death_count_goes_up(
    start_service, probe_database, broker, vhost
):
    consumer = await start_service(
        probe.manifest({OrderCreated: probe.record_effect}),
        probe.Settings,
        database_url=probe_database,
    )
    event = an_order_created()
    await broker.publish_event(event, body=b"\xff not json", app_id="order_service")
    await eventually(lambda: dlq.list_dead_letters(vhost.amqp_url, vhost.api))

    redriven = await dlq.redrive(vhost.amqp_url, vhost.api)

    assert [letter.message_id for letter in redriven] == [str(event.event_id)]

    async def died_twice() -> list[dlq.DeadLetter]:
        letters = await dlq.list_dead_letters(vhost.amqp_url, vhost.api)
        return [letter for letter in letters if letter.deaths == 2]

    [letter] = await eventually(died_twice, timeout=20)
    assert (letter.message_id, letter.reason, letter.queue) == (
        str(event.event_id),
        "rejected",
        QUEUE,
    )
    assert await probe.effects(consumer.sessionmaker) == []


async def test_a_re_driven_message_is_handled_once_even_when_re_driven_twice(
    start_service, probe_database, broker, vhost
):
    attempts: collections.Counter[uuid.UUID] = collections.Counter()

    def fails_twice_then_works(effects, event):
        attempts[event.event_id] += 1
        if attempts[event.event_id] <= 2:
            raise ConnectionError("the database went away")
        probe.record_effect(effects, event)

    consumer = await start_service(
        probe.manifest({OrderCreated: fails_twice_then_works}),
        probe.Settings,
        database_url=probe_database,
        handler_max_attempts=2,
    )
    wire = await broker.tap("OrderCreated")
    event = an_order_created()
    original = await broker.publish_event(event, app_id="order_service", causation_id=uuid.uuid4())
    [letter] = await eventually(lambda: dlq.list_dead_letters(vhost.amqp_url, vhost.api))
    assert (letter.message_id, letter.reason, letter.deaths) == (str(event.event_id), "rejected", 1)
    duplicates_before = handled("OrderCreated", "duplicate")

    first = await dlq.redrive(vhost.amqp_url, vhost.api)

    assert [letter.message_id for letter in first] == [str(event.event_id)]
    await eventually(lambda: probe.effects(consumer.sessionmaker))
    assert await dlq.list_dead_letters(vhost.amqp_url, vhost.api) == []

    # A re-drive that crashed after the broker confirmed its copy, before its ack, leaves the
    # message in the dead-letter queue: the next re-drive sends it a second time.
    channel = await broker.connection.channel()
    death = {
        "count": 1,
        "reason": "rejected",
        "queue": QUEUE,
        "exchange": "events",
        "routing-keys": ["OrderCreated"],
        "time": datetime.now(UTC).replace(microsecond=0),
    }
    left_behind = message_for(
        event,
        app_id="order_service",
        causation_id=uuid.UUID(original.headers["causation_id"]),
        traceparent=original.headers["traceparent"],
        headers={"x-death": [death]},
    )
    await channel.default_exchange.publish(left_behind, routing_key=dead_letter_queue(QUEUE))
    await channel.close()
    second = await dlq.redrive(vhost.amqp_url, vhost.api)

    assert [letter.message_id for letter in second] == [str(event.event_id)]
    await eventually(lambda: handled("OrderCreated", "duplicate") == duplicates_before + 1)
    assert [e.message_id for e in await probe.effects(consumer.sessionmaker)] == [event.event_id]
    assert attempts == {event.event_id: 3}
    assert await dlq.list_dead_letters(vhost.amqp_url, vhost.api) == []
    # On the wire: the original and two re-driven copies, all one message to its consumers.
    copies = await wire.wait_for(3)
    for copy in copies:
        assert (copy.message_id, copy.type, copy.correlation_id, copy.app_id) == (
            original.message_id,
            original.type,
            original.correlation_id,
            original.app_id,
        )
        assert copy.body == original.body
        assert {k: copy.headers[k] for k in ("causation_id", "traceparent", "schema_version")} == {
            k: original.headers[k] for k in ("causation_id", "traceparent", "schema_version")
        }
