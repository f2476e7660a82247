"""Nothing grows without bound: published outbox rows, inbox rows and idempotency keys are purged
once older than the retention window, in batches, while the relay and the consumers carry on; rows
younger than the window, and unpublished ones whatever their age, stay."""

from __future__ import annotations

import inspect
import uuid

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from harness.wait import eventually
from order_service.messaging import MANIFEST as ORDER
from order_service.settings import Settings as OrderSettings
from outbox.consumer import Consumer
from outbox.relay import purge_expired
from tests.support.orders import get_order, place_order, stock_reserved
from tests.support.services import handled, inbox_rows, outbox_rows

WEEK_S = 7 * 24 * 3600.0
BATCH = 5000

OLD_OUTBOX = """
INSERT INTO outbox (event_id, event_type, order_id, payload, traceparent, created_at, published_at)
SELECT gen_random_uuid(), 'OrderCreated', gen_random_uuid(), '\\x7b7d',
       '00-' || repeat('a', 32) || '-' || repeat('b', 16) || '-01',
       now() - make_interval(days => :days), {published}
FROM generate_series(1, :rows)
"""
OLD_INBOX = """
INSERT INTO inbox (consumer, message_id, event_type, order_id, handled_at)
SELECT 'order_service.StockReserved', gen_random_uuid(), 'StockReserved', gen_random_uuid(),
       now() - make_interval(days => :days)
FROM generate_series(1, :rows)
"""
OLD_KEYS = """
INSERT INTO idempotency_keys (scope, key, request_hash, status_code, response_body, created_at)
SELECT 'orders', 'key-' || :days || '-' || n, 'h', 201, '\\x7b7d', now() - make_interval(days => :days)
FROM generate_series(1, :rows) AS n
"""


async def add_rows(sessionmaker, statement: str, *, rows: int, days: int, **format_args) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(text(statement.format(**format_args)), {"rows": rows, "days": days})


async def counts(sessionmaker) -> dict[str, int]:
    async with sessionmaker() as session:
        return {
            "published outbox": await session.scalar(
                text("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
            ),
            "unpublished outbox": await session.scalar(
                text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            ),
            "inbox": await session.scalar(text("SELECT count(*) FROM inbox")),
            "idempotency keys": await session.scalar(text("SELECT count(*) FROM idempotency_keys")),
        }


def test_the_default_retention_outlasts_every_redelivery_by_far():
    settings = OrderSettings()
    backoff = inspect.signature(Consumer).parameters
    base, cap = backoff["backoff_base_s"].default, backoff["backoff_cap_s"].default
    # How long a consumer keeps retrying a message before it dead-letters it; a relay re-publishes
    # an unmarked row within a sweep of coming back. A week outlasts both, and any outage after
    # which the broker could hand back a message that was handled before it.
    retry_horizon_s = sum(min(base * 2**n, cap) for n in range(settings.handler_max_attempts - 1))

    assert retry_horizon_s < 60
    assert settings.retention_s >= 24 * 3600
    assert settings.retention_s > 1000 * (retry_horizon_s + settings.relay_sweep_interval_s)


async def test_expired_rows_go_in_batches_and_younger_or_unpublished_rows_stay(order_database):
    engine = create_async_engine(order_database)
    sessionmaker = async_sessionmaker(engine)
    deletes: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: (
            statement.startswith("DELETE") and deletes.append(statement)
        ),
    )
    await add_rows(
        sessionmaker, OLD_OUTBOX, rows=12_000, days=8, published="now() - interval '8 days'"
    )
    await add_rows(sessionmaker, OLD_OUTBOX, rows=100, days=30, published="NULL")
    await add_rows(sessionmaker, OLD_OUTBOX, rows=50, days=6, published="now() - interval '6 days'")
    await add_rows(sessionmaker, OLD_INBOX, rows=7_000, days=8)
    await add_rows(sessionmaker, OLD_INBOX, rows=10, days=6)
    await add_rows(sessionmaker, OLD_KEYS, rows=3, days=8)
    await add_rows(sessionmaker, OLD_KEYS, rows=2, days=6)

    deleted = await purge_expired(sessionmaker, retention_s=WEEK_S, batch=BATCH)

    assert deleted == 12_000 + 7_000 + 3
    assert await counts(sessionmaker) == {
        "published outbox": 50,
        "unpublished outbox": 100,  # a month old, never published: kept until it is
        "inbox": 10,
        "idempotency keys": 2,
    }
    # 5000 + 5000 + 2000 outbox rows, 5000 + 2000 inbox rows, 3 keys: one statement per batch.
    assert [d.split()[2] for d in deletes] == ["outbox"] * 3 + ["inbox"] * 2 + ["idempotency_keys"]
    await engine.dispose()


async def test_a_purge_holding_its_locks_neither_holds_up_the_relay_nor_the_consumer(
    order_service, order_database, broker, downstream
):
    await add_rows(
        order_service.sessionmaker,
        OLD_OUTBOX,
        rows=BATCH,
        days=8,
        published="now() - interval '8 days'",
    )
    await add_rows(order_service.sessionmaker, OLD_INBOX, rows=BATCH, days=8)
    engine = create_async_engine(order_database)
    async with engine.connect() as connection:
        purge = await connection.begin()
        # The purge's own transactions become savepoints of this one, which keeps every row it
        # deleted locked until the end of the test: a purge batch that takes forever.
        in_purge = async_sessionmaker(bind=connection, join_transaction_mode="create_savepoint")
        assert await purge_expired(in_purge, retention_s=WEEK_S, batch=BATCH) == 2 * BATCH

        order, created = await place_order(order_service)
        [published] = await downstream.wait_for(1)
        await broker.publish_event(stock_reserved(order), app_id="inventory_service")
        await eventually(lambda: _order_in(order_service, order.order_id, "reserved"))

        assert published.message_id == str(created.event_id)
        await eventually(lambda: _marked_published(order_service, created.event_id))
        await purge.commit()
    await engine.dispose()
    assert await counts(order_service.sessionmaker) == {
        "published outbox": 1,
        "unpublished outbox": 0,
        "inbox": 1,
        "idempotency keys": 0,
    }


async def test_a_service_purges_on_its_own_what_is_past_its_retention(
    start_service, order_database, broker, downstream
):
    service = await start_service(
        ORDER, OrderSettings, database_url=order_database, retention_s=1.0, purge_interval_s=0.2
    )
    order, created = await place_order(service)
    await broker.publish_event(stock_reserved(order), app_id="inventory_service")
    await eventually(lambda: _order_in(service, order.order_id, "reserved"))

    await eventually(lambda: _nothing_left(service), timeout=15)

    assert [m.message_id for m in downstream.messages] == [str(created.event_id)]
    assert (await get_order(service, order.order_id)).status == "reserved"


async def test_a_duplicate_within_the_retention_window_is_still_a_no_op_after_a_purge(
    order_service, broker
):
    order, _ = await place_order(order_service)
    reserved = stock_reserved(order)
    await broker.publish_event(reserved, app_id="inventory_service")
    first = await eventually(lambda: _order_in(order_service, order.order_id, "reserved"))
    duplicates_before = handled("StockReserved", "duplicate")

    assert await purge_expired(order_service.sessionmaker, retention_s=3600) == 0
    await broker.publish_event(reserved, app_id="inventory_service")

    await eventually(lambda: handled("StockReserved", "duplicate") == duplicates_before + 1)
    assert (await get_order(order_service, order.order_id)).updated_at == first.updated_at


async def _order_in(messaging, order_id: uuid.UUID, status: str):
    order = await get_order(messaging, order_id)
    return order if order.status == status else None


async def _marked_published(messaging, event_id: uuid.UUID) -> bool:
    return any(
        row.event_id == event_id and row.published_at is not None
        for row in await outbox_rows(messaging.sessionmaker)
    )


async def _nothing_left(messaging) -> bool:
    return not await outbox_rows(messaging.sessionmaker) and not await inbox_rows(
        messaging.sessionmaker
    )
