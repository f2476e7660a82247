"""The outbox, against real PostgreSQL and RabbitMQ: what commits is published with the properties
of docs/spec.md §3, what rolls back never is; a relay that dies or a broker that refuses loses nothing;
old rows are purged, unpublished ones never."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import aio_pika
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

import outbox
from contracts import SCHEMA_VERSION, OrderCreated, StockCommitted, StockReleased, decode
from harness.wait import eventually
from order_service.messaging import MANIFEST as ORDER
from order_service.models import Order
from order_service.settings import Settings as OrderSettings
from outbox import faults
from outbox.relay import purge_expired
from outbox.topology import declare_exchange
from outbox.writer import OutboxSession
from tests.support import probe
from tests.support.orders import get_order, place_order, stock_reserved
from tests.support.services import (
    crashed,
    handled,
    inbox_rows,
    outbox_rows,
    published,
    stop_messaging,
)

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-01$")


async def test_a_committed_transactions_event_is_published_with_its_properties_a_rolled_back_one_never(
    order_service, downstream
):
    async with order_service.sessionmaker() as session:
        abandoned = Order.place("bob", [{"sku": "widget", "quantity": 1}], 300.0)
        session.add(abandoned)
        outbox.add(session, OrderCreated(order_id=abandoned.order_id, customer_id="bob", items=()))
        await session.flush()  # the rows are in the database, in a transaction that then aborts
        await session.rollback()
    order, created = await place_order(order_service)

    [message] = await downstream.wait_for(1)
    # The relay publishes rows in commit order: had the rolled-back event been staged for good,
    # it would have arrived first.
    assert message.message_id == str(created.event_id)
    assert decode(message.body, "OrderCreated") == created
    assert message.routing_key == "OrderCreated"
    assert message.type == "OrderCreated"
    assert message.correlation_id == str(order.order_id)
    assert message.app_id == "order_service"
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    assert TRACEPARENT.match(message.headers["traceparent"])
    assert message.headers["schema_version"] == SCHEMA_VERSION
    assert "causation_id" not in message.headers  # it came from a request, not from a message

    rows = await eventually(lambda: _all_published(order_service))
    assert [row.event_id for row in rows] == [created.event_id]
    async with order_service.sessionmaker() as session:
        assert await session.get(Order, abandoned.order_id) is None


async def test_an_event_staged_by_a_handler_names_its_cause_and_continues_its_trace(
    order_service, broker, downstream
):
    order, _ = await place_order(order_service)
    await broker.publish_event(StockCommitted(order_id=order.order_id), app_id="inventory_service")
    await eventually(lambda: _stock_committed(order_service, order.order_id))
    trace_id = uuid.uuid4().hex
    cause = await broker.publish_event(
        stock_reserved(order),
        app_id="inventory_service",
        traceparent=f"00-{trace_id}-{'1' * 16}-01",
    )

    [completed] = [m for m in await downstream.wait_for(2) if m.type == "OrderCompleted"]
    assert completed.headers["causation_id"] == cause.message_id
    assert TRACEPARENT.match(completed.headers["traceparent"]).group(1) == trace_id
    assert completed.correlation_id == str(order.order_id)
    assert (await get_order(order_service, order.order_id)).status == "completed"


@pytest.mark.parametrize("path", ["hand-over", "sweep"])
async def test_a_relay_killed_between_publish_and_mark_publishes_again_and_the_consumer_acts_once(
    start_service, order_database, probe_database, broker, path
):
    downstream = await probe_service_recording_orders(start_service, probe_database)
    wire = await broker.tap("OrderCreated")
    duplicates_before = handled("OrderCreated", "duplicate")
    if path == "sweep":  # committed by a replica that died before handing it over
        created = await _stage(
            _replica_without_relay(order_database),
            OrderCreated(order_id=uuid.uuid4(), customer_id="bob", items=()),
        )
    faults.arm("relay.after_publish")
    first_life = await start_service(ORDER, OrderSettings, database_url=order_database)
    if path == "hand-over":
        _, created = await place_order(first_life)

    await wire.wait_for(1)
    await eventually(lambda: crashed(first_life))
    await stop_messaging(first_life)
    [row] = await outbox_rows(first_life.sessionmaker)
    assert row.published_at is None  # the broker had it, the row does not know

    second_life = await start_service(ORDER, OrderSettings, database_url=order_database)

    assert [m.message_id for m in await wire.wait_for(2)] == [str(created.event_id)] * 2
    await eventually(lambda: _all_published(second_life))
    await eventually(lambda: handled("OrderCreated", "duplicate") == duplicates_before + 1)
    assert [e.message_id for e in await probe.effects(downstream.sessionmaker)] == [
        created.event_id
    ]
    assert [i.message_id for i in await inbox_rows(downstream.sessionmaker)] == [created.event_id]


async def test_a_relay_stopped_marks_what_it_published_and_the_next_start_publishes_it_no_more(
    start_service, order_database, broker
):
    """Marks come in batches, a while after the confirms: a stop in between marks what is
    confirmed before it closes the connections, so that a restart does not publish it again."""
    wire = await broker.tap("OrderCreated")
    first_life = await start_service(
        ORDER,
        OrderSettings,
        database_url=order_database,
        relay_mark_interval_s=3600.0,
        relay_grace_s=4 * 3600.0,  # the interval is at most a quarter of the grace
    )
    published_before = published()
    _, created = await place_order(first_life)
    await eventually(lambda: published() == published_before + 1)
    [row] = await outbox_rows(first_life.sessionmaker)
    assert row.published_at is None  # confirmed, its mark an hour away

    await stop_messaging(first_life)

    [row] = await outbox_rows(first_life.sessionmaker)
    assert row.published_at is not None
    # Started once its catch-up sweep ran, which published nothing.
    await start_service(ORDER, OrderSettings, database_url=order_database)
    assert published() == published_before + 1
    assert [m.message_id for m in wire.messages] == [str(created.event_id)]


async def test_a_stop_whose_mark_cannot_get_through_ends_anyway_and_the_next_start_publishes_again(
    start_service, order_database, broker
):
    """The stop's mark waits at most a second: if the database does not take it (here, another
    session holds the row), the stop goes on, and the next start publishes the row again."""
    wire = await broker.tap("OrderCreated")
    first_life = await start_service(
        ORDER,
        OrderSettings,
        database_url=order_database,
        relay_mark_interval_s=3600.0,
        relay_grace_s=4 * 3600.0,
    )
    published_before = published()
    _, created = await place_order(first_life)
    await eventually(lambda: published() == published_before + 1)

    engine = create_async_engine(order_database, poolclass=NullPool)
    try:
        async with engine.connect() as holder:
            await holder.execute(text("SELECT 1 FROM outbox FOR UPDATE"))
            await asyncio.wait_for(stop_messaging(first_life), timeout=10)
            await holder.rollback()
    finally:
        await engine.dispose()

    [row] = await outbox_rows(first_life.sessionmaker)
    assert row.published_at is None  # the mark was cancelled in the server too
    second_life = await start_service(ORDER, OrderSettings, database_url=order_database)
    await eventually(lambda: _all_published(second_life))
    assert published() == published_before + 2
    assert [m.message_id for m in await wire.wait_for(2)] == [str(created.event_id)] * 2


async def test_a_handed_over_row_is_marked_before_a_sweep_would_take_it_whatever_the_settings(
    start_service, order_database, downstream
):
    """A confirmed row waits for its mark as an unpublished row of the table: were the marks
    slower than the grace, a sweep would publish it again. The relay marks within a quarter of
    the grace, whatever `relay_mark_interval_s` says."""
    order_service = await start_service(
        ORDER,
        OrderSettings,
        database_url=order_database,
        # Marked within a second (a quarter of the grace), not after 30: three seconds to spare
        # for a busy machine, and without the clamp a sweep would take the row after four.
        relay_grace_s=4.0,
        relay_sweep_interval_s=0.05,
        relay_mark_interval_s=30.0,
    )
    published_before = published()
    await place_order(order_service)

    await eventually(lambda: _all_published(order_service))
    # Counted as each publish is confirmed, before a sweep's claim (its mark) commits.
    assert published() == published_before + 1


async def test_a_row_nobody_handed_over_is_swept_once_older_than_the_grace(
    start_service, order_database, downstream
):
    """Another replica committed the row and died before publishing it: no hand-over will come.
    This replica's sweep publishes it, but only once it is older than the grace, so that it never
    races a hand-over that is still on its way."""
    order_service = await start_service(
        ORDER, OrderSettings, database_url=order_database, relay_grace_s=1.0
    )
    orphan = await _stage(
        _replica_without_relay(order_database),
        OrderCreated(order_id=uuid.uuid4(), customer_id="bob", items=()),
    )

    [message] = await downstream.wait_for(1)
    assert message.message_id == str(orphan.event_id)
    [row] = await eventually(lambda: _all_published(order_service))
    assert row.published_at - row.created_at >= timedelta(seconds=1.0)


async def test_events_committed_while_the_relay_catches_up_are_published_once(
    start_service, order_database, downstream
):
    """At start the relay catches up on unpublished rows of any age, batch after batch, while
    new commits hand theirs over: a row committed just before a catch-up claim is claimed by that
    sweep and waits in the hand-overs too. What a sweep published leaves the hand-overs, so each
    event goes out once (a duplicate would be harmless, but needless)."""
    backlog = [
        OrderCreated(order_id=uuid.uuid4(), customer_id="bob", items=()) for _ in range(1500)
    ]
    async with _replica_without_relay(order_database).sessionmaker() as session, session.begin():
        for event in backlog:
            outbox.add(session, event)
    service = await start_service(
        ORDER, OrderSettings, database_url=order_database, settled=False
    )  # not settled: it has a backlog to catch up on
    committed = []
    while not service.relay.caught_up:  # until the catch-up found the table empty
        committed.append(
            await _stage(service, OrderCreated(order_id=uuid.uuid4(), customer_id="al", items=()))
        )

    expected = len(backlog) + len(committed)
    await eventually(lambda: _all_published(service), timeout=30)
    await eventually(lambda: len(downstream.messages) >= expected)
    copies = Counter(m.message_id for m in downstream.messages)
    assert len(committed) > 10, "orders were committed while the relay caught up"
    assert set(copies) == {str(e.event_id) for e in backlog + committed}
    assert [id for id, n in copies.items() if n > 1] == []


async def test_an_event_nobody_listens_to_stays_unpublished_until_a_queue_is_bound(
    start_service, order_database, broker, caplog
):
    order_service = await start_service(ORDER, OrderSettings, database_url=order_database)

    _, created = await place_order(order_service)

    await eventually(lambda: _relay_complained_about(caplog, created.event_id))
    [row] = await outbox_rows(order_service.sessionmaker)
    assert row.published_at is None
    listener = await broker.tap("OrderCreated")
    [message] = await listener.wait_for(1, timeout=15)
    assert message.message_id == str(created.event_id)
    await eventually(lambda: _all_published(order_service))


async def test_an_event_the_broker_nacks_stays_unpublished_until_the_broker_takes_it(
    start_service, order_database, broker, caplog
):
    full = await _full_queue(broker, "OrderCreated")
    order_service = await start_service(ORDER, OrderSettings, database_url=order_database)

    _, created = await place_order(order_service)

    await eventually(lambda: _relay_complained_about(caplog, created.event_id))
    [row] = await outbox_rows(order_service.sessionmaker)
    assert row.published_at is None
    listener = await broker.tap("OrderCreated")
    await full.delete(if_unused=False, if_empty=False)
    [message] = await listener.wait_for(1, timeout=15)
    assert message.message_id == str(created.event_id)
    await eventually(lambda: _all_published(order_service))


async def test_a_broadcast_nobody_listens_to_is_published_but_one_the_broker_nacks_is_not(
    start_service, probe_database, broker, caplog
):
    service = await start_service(
        probe.manifest({}, emits=(StockReleased,), broadcasts=(StockReleased,)),
        probe.Settings,
        database_url=probe_database,
    )
    unrouted_before = _unrouted("StockReleased")

    unheard = await _stage(service, StockReleased(order_id=uuid.uuid4(), items=()))

    await eventually(lambda: _all_published(service))
    assert _unrouted("StockReleased") == unrouted_before + 1
    full = await _full_queue(broker, "StockReleased")
    refused = await _stage(service, StockReleased(order_id=uuid.uuid4(), items=()))
    await eventually(lambda: _relay_complained_about(caplog, refused.event_id))
    rows = {row.event_id: row.published_at for row in await outbox_rows(service.sessionmaker)}
    assert rows[unheard.event_id] is not None
    assert rows[refused.event_id] is None
    listener = await broker.tap("StockReleased")
    await full.delete(if_unused=False, if_empty=False)
    await listener.wait_for(1, timeout=15)
    assert listener.with_id(refused.event_id)


async def test_the_purge_removes_old_published_and_handled_rows_and_keeps_unpublished_ones(
    order_database,
):
    engine = create_async_engine(order_database)
    sessionmaker = async_sessionmaker(engine)
    long_ago = datetime.now(UTC) - timedelta(days=8)
    ids = {name: uuid.uuid4() for name in ("old1", "old2", "old3", "recent", "unpublished")}
    async with sessionmaker() as session, session.begin():
        for name, created_at, published_at in [
            ("old1", long_ago, long_ago),
            ("old2", long_ago, long_ago),
            ("old3", long_ago, long_ago),
            ("recent", long_ago, datetime.now(UTC)),
            ("unpublished", long_ago, None),
        ]:
            await session.execute(
                text(
                    "INSERT INTO outbox (event_id, event_type, order_id, payload, traceparent,"
                    " created_at, published_at) VALUES (:id, 'OrderCreated', :id, '\\x7b7d',"
                    " :tp, :created_at, :published_at)"
                ),
                {
                    "id": ids[name],
                    "tp": f"00-{'a' * 32}-{'b' * 16}-01",
                    "created_at": created_at,
                    "published_at": published_at,
                },
            )
        for name, handled_at in [("old1", long_ago), ("recent", datetime.now(UTC))]:
            await session.execute(
                text(
                    "INSERT INTO inbox (consumer, message_id, event_type, order_id, handled_at)"
                    " VALUES ('order_service.StockReserved', :id, 'StockReserved', :id, :at)"
                ),
                {"id": ids[name], "at": handled_at},
            )
        for key, created_at in [("old", long_ago), ("recent", datetime.now(UTC))]:
            await session.execute(
                text(
                    "INSERT INTO idempotency_keys (scope, key, request_hash, status_code,"
                    " response_body, created_at) VALUES ('orders', :key, 'h', 201, '\\x7b7d', :at)"
                ),
                {"key": key, "at": created_at},
            )

    deleted = await purge_expired(sessionmaker, retention_s=7 * 24 * 3600, batch=2)

    async with sessionmaker() as session:
        outbox_left = set(await session.scalars(text("SELECT event_id FROM outbox")))
        inbox_left = set(await session.scalars(text("SELECT message_id FROM inbox")))
        keys_left = set(await session.scalars(text("SELECT key FROM idempotency_keys")))
    await engine.dispose()
    assert outbox_left == {ids["recent"], ids["unpublished"]}
    assert inbox_left == {ids["recent"]}
    assert keys_left == {"recent"}
    assert deleted == 5


async def probe_service_recording_orders(start_service, probe_database):
    return await start_service(
        probe.manifest({OrderCreated: probe.record_effect}),
        probe.Settings,
        database_url=probe_database,
    )


def _replica_without_relay(database_url):
    """Sessions that write outbox rows like a service's, with no relay to hand them to."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    return SimpleNamespace(
        sessionmaker=async_sessionmaker(engine, sync_session_class=OutboxSession)
    )


async def _stage(messaging, event):
    async with messaging.sessionmaker() as session, session.begin():
        outbox.add(session, event)
    return event


async def _full_queue(broker, routing_key):
    """A queue bound to `routing_key` that refuses every message: the broker nacks publishes."""
    channel = await broker.connection.channel()
    events = await declare_exchange(channel)
    full = await channel.declare_queue(
        f"full-{routing_key}", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await full.bind(events, routing_key)
    return full


def _unrouted(event: str) -> float:
    return REGISTRY.get_sample_value("saga_outbox_unrouted_total", {"event": event}) or 0.0


async def _all_published(messaging):
    rows = await outbox_rows(messaging.sessionmaker)
    return rows if rows and all(row.published_at is not None for row in rows) else None


async def _stock_committed(messaging, order_id):
    return (await get_order(messaging, order_id)).stock_committed


def _relay_complained_about(caplog, event_id) -> bool:
    return any(r.name == "outbox.relay" and str(event_id) in r.getMessage() for r in caplog.records)
