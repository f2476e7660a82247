"""What an operator sees of a running service, over its HTTP API: readiness that names a stuck relay,
Prometheus metrics that count what happened, JSON logs that carry the order id.

order_service's whole app (routes, lifespan, messaging) runs in the test's event loop through
Litestar's test client, on a fresh database and broker vhost."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import get_args

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from contracts import CancelReason, Item, Shortage, StockFailed, StockReserved
from harness.rabbitmq import Vhost
from harness.wait import eventually
from order_service import handlers
from order_service.app import create_app
from order_service.settings import Settings as OrderSettings
from outbox import transaction
from outbox.unit import session
from tests.support.broker import Broker
from tools.tokens import Tokens, new_secret
from web.server import JsonFormatter

SECRET = new_secret()
#: Far below the production default (30 s), so that the test sees a stuck relay quickly.
STUCK_AFTER_S = 1.0

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def order_app(
    database_factory: Callable[[str], str], vhost: Vhost
) -> AsyncIterator[AsyncTestClient]:
    settings = OrderSettings(
        database_url=database_factory("order_service"),
        amqp_url=vhost.amqp_url,
        relay_stuck_after_s=STUCK_AFTER_S,
        relay_sweep_interval_s=0.2,
        db_pool_size=5,
        auth_secret=SECRET,
    )
    async with AsyncTestClient(create_app(settings), timeout=30) as client:
        client.headers.update(Tokens.hs256(SECRET).bearer("alice"))
        await eventually(lambda: _ready(client), timeout=30)
        yield client


async def _ready(client: AsyncTestClient) -> bool:
    return (await client.get("/health/ready")).status_code == 200


async def place_order(client: AsyncTestClient) -> dict:
    response = await client.post(
        "/orders", json={"customer_id": "alice", "items": [{"sku": "book", "quantity": 2}]}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def metrics(client: AsyncTestClient) -> Metrics:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: Metrics, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_readiness_names_the_relay_while_an_event_cannot_be_published_and_recovers_after(
    order_app: AsyncTestClient, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="outbox.relay")
    # No queue is bound to OrderCreated yet (inventory_service is not running): the broker
    # returns it, and the relay keeps the row and tries again.
    order = await place_order(order_app)

    async def relay_reported_stuck() -> dict:
        response = await order_app.get("/health/ready")
        return response.json() if response.status_code == 503 else {}

    unready = await eventually(relay_reported_stuck, timeout=30)
    assert set(unready["failed"]) == {"relay"}, unready
    assert "oldest unpublished event" in unready["failed"]["relay"]
    [warning, *_] = [r for r in caplog.records if "not published" in r.getMessage()]
    logged = json.loads(JsonFormatter().format(warning))
    assert logged["order_id"] == order["order_id"]
    assert logged["level"] == "warning"
    assert "OrderCreated" in logged["msg"]

    tap = await broker.tap("OrderCreated")  # inventory_service's queue, as it were, comes up
    [published] = await tap.wait_for(1, timeout=30)
    assert published.correlation_id == order["order_id"]
    await eventually(lambda: _ready(order_app), timeout=30)


async def test_metrics_count_what_the_service_published_handled_and_dead_lettered(
    order_app: AsyncTestClient, broker: Broker
) -> None:
    tap = await broker.tap("OrderCreated")
    before = await metrics(order_app)
    order = await place_order(order_app)
    await tap.wait_for(1, timeout=30)
    order_id = uuid.UUID(order["order_id"])
    reserved = StockReserved(
        order_id=order_id,
        customer_id="alice",
        items=(Item(sku="book", quantity=2, unit_price_cents=1500),),
        amount_cents=3000,
    )

    await broker.publish_event(reserved, app_id="inventory_service")
    poison = msgspec.structs.replace(reserved, event_id=uuid.uuid4())
    await broker.publish_event(poison, app_id="inventory_service", body=b"{not json")

    async def all_counted() -> Metrics:
        found = await metrics(order_app)
        dead = found.get(
            ("saga_dead_letter_depth", frozenset({("queue", "order_service.StockReserved.dlq")}))
        )
        handled = {"event": "StockReserved", "outcome": "handled"}  # batched: may come last
        done = value(found, "saga_messages_handled_total", **handled) > value(
            before, "saga_messages_handled_total", **handled
        )
        return found if done and dead == 1 and value(found, "saga_outbox_backlog") == 0 else {}

    after = await eventually(all_counted, timeout=30)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("saga_messages_handled_total", event="StockReserved", outcome="handled") == 1
    assert grew("saga_messages_handled_total", event="StockReserved", outcome="poison") == 1
    assert grew("saga_handler_seconds_count", event="StockReserved") == 1
    assert value(after, "saga_handler_seconds_sum", event="StockReserved") > 0
    assert grew("saga_outbox_published_total") >= 1
    assert grew("saga_outbox_dwell_seconds_count") >= 1
    assert value(after, "saga_outbox_oldest_unpublished_seconds") == 0
    for event in ("StockFailed", "PaymentSucceeded", "PaymentFailed", "StockCommitted"):
        assert value(after, "saga_dead_letter_depth", queue=f"order_service.{event}.dlq") == 0
    assert (await order_app.get(f"/orders/{order_id}")).json()["status"] == "reserved"


async def test_an_ended_order_is_counted_by_reason_once_its_transaction_commits_never_if_it_rolls_back(
    order_app: AsyncTestClient, broker: Broker
) -> None:
    await broker.tap("OrderCreated")  # somewhere for the relay to publish to
    before = await metrics(order_app)
    for reason in get_args(CancelReason):  # every reason is there from the start
        assert (
            "saga_orders_ended_total",
            frozenset({("outcome", "cancelled"), ("reason", reason)}),
        ) in before
    assert (
        "saga_orders_ended_total",
        frozenset({("outcome", "completed"), ("reason", "")}),
    ) in before

    async def grew(outcome: str, reason: str) -> float:
        after = await metrics(order_app)
        labels = {"outcome": outcome, "reason": reason}
        return value(after, "saga_orders_ended_total", **labels) - value(
            before, "saga_orders_ended_total", **labels
        )

    order = await place_order(order_app)
    order_id = uuid.UUID(order["order_id"])
    sessionmaker = order_app.app.state.messaging.sessionmaker

    async def cancel_then_roll_back() -> None:
        async with session(sessionmaker) as opened:
            _, cancelled = await handlers.cancel_order(transaction.of(opened), order_id)
            assert cancelled
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        await cancel_then_roll_back()
    assert await grew("cancelled", "customer_request") == 0
    assert (await order_app.get(f"/orders/{order_id}")).json()["status"] == "pending"

    assert (await order_app.post(f"/orders/{order_id}/cancel")).status_code == 202
    assert await grew("cancelled", "customer_request") == 1
    assert (await order_app.post(f"/orders/{order_id}/cancel")).status_code == 200
    assert await grew("cancelled", "customer_request") == 1  # cancelled once, counted once

    short = uuid.UUID((await place_order(order_app))["order_id"])
    failed = StockFailed(
        order_id=short,
        reason="out_of_stock",
        shortages=(Shortage(sku="book", requested=2, available=0),),
    )
    await broker.publish_event(failed, app_id="inventory_service")
    await broker.publish_event(failed, app_id="inventory_service")  # a redelivery: no effect

    async def both_handled() -> bool:
        found = await metrics(order_app)
        duplicates = value(
            found, "saga_messages_handled_total", event="StockFailed", outcome="duplicate"
        ) - value(before, "saga_messages_handled_total", event="StockFailed", outcome="duplicate")
        return duplicates == 1 and await _status_is(order_app, short, "cancelled")

    await eventually(both_handled, timeout=30)
    assert await grew("cancelled", "out_of_stock") == 1
    assert await grew("completed", "") == 0


async def _status_is(client: AsyncTestClient, order_id: uuid.UUID, status: str) -> bool:
    return (await client.get(f"/orders/{order_id}")).json()["status"] == status
