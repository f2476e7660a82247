"""One trace per saga: the four apps in this process (each in its test client, on its own
database, all on one broker vhost) record their spans with the SDK's in-memory exporter.

The spans are those a Jaeger user reads: the HTTP request that placed the order, every publish by
a relay, every delivery to a consumer. They must all be in the trace of the request, each delivery
a child of the span that staged its event (which is in the service that emitted it): so the tests
fail if any hop loses the context (a relay publishing in its own, a writer making one up)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals
from opentelemetry.trace import SpanKind

from harness.servers import Servers
from harness.wait import eventually_sync
from tests.support.apps import running_apps
from tools.client import TERMINAL, unique
from tools.postgres import libpq

Apps = dict[str, TestClient[Litestar]]

#: What a completed order's consumers handle: (service, event).
COMPLETED = {
    ("inventory_service", "OrderCreated"),
    ("order_service", "StockReserved"),
    ("payment_service", "StockReserved"),
    ("order_service", "PaymentSucceeded"),
    ("inventory_service", "PaymentSucceeded"),
    ("order_service", "StockCommitted"),
    ("notification_service", "OrderCompleted"),
}


@pytest.fixture(scope="module")
def exported() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider, exporting every span to memory as it ends; set before the
    apps are built (they add Litestar's OpenTelemetry plugin only when tracing is on)."""
    reset_trace_globals()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    reset_trace_globals()


@pytest.fixture(scope="module")
def apps(servers: Servers, exported: InMemorySpanExporter) -> Iterator[Apps]:
    # The relays' default grace (5 s): with a short one, a busy machine would let a sweep publish
    # a row again before its hand-over is marked, and a saga's trace would hold two publishes and
    # a duplicate delivery of some event (the redelivery test makes one on purpose).
    with running_apps(servers, order_timeout_s=300.0) as clients:
        yield clients


def ok(response: Any) -> Any:
    assert response.is_success, response.text[:500]
    return response.json()


def place_paid_order(apps: Apps) -> str:
    """An order placed (and paid for) by a new customer; returns its id once it completed."""
    sku, customer = unique("lamp"), unique("hana")
    ok(
        apps["inventory"].put(
            f"/products/{sku}", json={"name": sku, "price_cents": 250, "on_hand": 5}
        )
    )
    ok(apps["payment"].post("/accounts", json={"customer_id": customer, "balance_cents": 10_000}))
    order = ok(
        apps["order"].post(
            "/orders", json={"customer_id": customer, "items": [{"sku": sku, "quantity": 2}]}
        )
    )
    finished = eventually_sync(
        lambda: (
            (found := ok(apps["order"].get(f"/orders/{order['order_id']}")))["status"] in TERMINAL
            and found
        ),
        timeout=30,
    )
    assert finished["status"] == "completed", finished
    return str(order["order_id"])


def notified(apps: Apps, order_id: str) -> list[str]:
    return sorted(
        n["event"]
        for n in ok(apps["notification"].get("/notifications", params={"order_id": order_id}))
    )


def saga(exported: InMemorySpanExporter, order_id: str) -> list[ReadableSpan]:
    """Every span of the trace(s) whose spans carry this order's id, in the order they started."""
    spans = exported.get_finished_spans()
    traces = {
        s.context.trace_id for s in spans if (s.attributes or {}).get("saga.order_id") == order_id
    }
    return sorted(
        (s for s in spans if s.context.trace_id in traces), key=lambda s: s.start_time or 0
    )


def deliveries(spans: list[ReadableSpan], duplicate: bool = False) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.kind is SpanKind.CONSUMER
        and (s.attributes or {}).get("saga.inbox.duplicate") is duplicate
    ]


def handled(spans: list[ReadableSpan], duplicate: bool = False) -> set[tuple[str, str]]:
    return {
        (str(s.attributes["saga.service"]), str(s.attributes["saga.event"]))
        for s in deliveries(spans, duplicate)
    }


def assert_causal(spans: list[ReadableSpan]) -> ReadableSpan:
    """One trace with one root, the request that placed the order; every other span's parent is
    in it and started first; each delivery's parent is in the service that emitted its event (the
    span that staged it), and each publish's parent the same span as its consumers'. Returns the
    root."""
    assert len({s.context.trace_id for s in spans}) == 1, "the saga is split across traces"
    by_id = {s.context.span_id: s for s in spans}
    [root] = [s for s in spans if s.parent is None]
    assert root.kind is SpanKind.SERVER, root.name
    for span in spans:
        if span is root:
            continue
        assert span.parent is not None, span.name
        assert span.parent.span_id in by_id, f"{span.name} has no parent in the trace"
        parent = by_id[span.parent.span_id]
        assert (parent.start_time or 0) <= (span.start_time or 0), (
            f"{span.name} began before {parent.name}"
        )
        if span.kind is SpanKind.CONSUMER:
            emitted_by = span.attributes["saga.emitted_by"]
            if span.attributes["saga.event"] == "OrderCreated":
                assert parent is root
            elif parent.kind is SpanKind.CONSUMER:
                assert parent.attributes["saga.service"] == emitted_by, (span.name, parent.name)
            else:  # a cancellation, staged in order_service outside any delivery
                assert emitted_by == "order_service", (span.name, parent.name)
    for publish in (s for s in spans if s.kind is SpanKind.PRODUCER):
        event = publish.attributes["saga.event"]
        consumers = [s for s in deliveries(spans) if s.attributes["saga.event"] == event]
        assert consumers or event == "StockCommitted" or event.endswith("Released"), event
        for consumer in consumers:
            assert consumer.parent == publish.parent, (
                f"{event}: published in another context than staged"
            )
    for event in {s.attributes["saga.event"] for s in deliveries(spans)}:
        first_publish = min(
            s.start_time or 0
            for s in spans
            if s.kind is SpanKind.PRODUCER and s.attributes["saga.event"] == event
        )
        for consumer in (s for s in spans if s.kind is SpanKind.CONSUMER):
            if consumer.attributes["saga.event"] == event:
                assert first_publish <= (consumer.start_time or 0), f"{event} consumed first"
    return root


def test_an_order_is_one_trace_from_its_request_through_the_four_services(apps, exported):
    order_id = place_paid_order(apps)
    eventually_sync(lambda: notified(apps, order_id) == ["OrderCompleted"])

    spans = eventually_sync(
        lambda: (found := saga(exported, order_id)) and handled(found) >= COMPLETED and found
    )

    root = assert_causal(spans)
    assert root.name == "POST /orders"
    assert root.attributes["http.route"] == "/orders"
    assert handled(spans) == COMPLETED
    assert len(deliveries(spans)) == len(COMPLETED), "each event handled once"
    assert not deliveries(spans, duplicate=True)
    services = {s.attributes["saga.service"] for s in spans if s.kind is not SpanKind.SERVER}
    assert services == {
        "order_service",
        "inventory_service",
        "payment_service",
        "notification_service",
    }
    published = sorted(s.attributes["saga.event"] for s in spans if s.kind is SpanKind.PRODUCER)
    assert published == sorted(
        ["OrderCreated", "StockReserved", "PaymentSucceeded", "StockCommitted", "OrderCompleted"]
    )
    for span in deliveries(spans):
        assert span.attributes["saga.order_id"] == order_id
        assert span.attributes["messaging.message.id"]
        assert (
            span.name
            == f"process {span.attributes['saga.service']}.{span.attributes['saga.event']}"
        )


def test_a_refund_after_a_cancelled_completed_order_is_in_the_orders_trace(apps, exported):
    order_id = place_paid_order(apps)
    cancelled = apps["order"].post(f"/orders/{order_id}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    eventually_sync(
        lambda: notified(apps, order_id) == ["OrderCancelled", "OrderCompleted", "PaymentRefunded"]
    )

    compensations = {
        ("inventory_service", "OrderCancelled"),
        ("payment_service", "OrderCancelled"),
        ("notification_service", "OrderCancelled"),
        ("notification_service", "PaymentRefunded"),
    }
    spans = eventually_sync(
        lambda: (
            (found := saga(exported, order_id))
            and handled(found) >= COMPLETED | compensations
            and found
        )
    )

    assert_causal(spans)
    assert handled(spans) == COMPLETED | compensations
    [cancel] = [s for s in spans if s.name == "cancel order"]
    refund = next(s for s in deliveries(spans) if s.attributes["saga.event"] == "PaymentRefunded")
    assert refund.parent is not None
    # The cancel request is a trace of its own: the cancellation links to it.
    [request] = [
        s
        for s in exported.get_finished_spans()
        if s.kind is SpanKind.SERVER and s.context.span_id == cancel.links[0].context.span_id
    ]
    assert request.name == "POST /orders/{order_id}/cancel"
    assert request.context.trace_id != cancel.context.trace_id


def test_a_redelivered_message_is_a_duplicate_span_and_no_second_notification(apps, exported):
    order_id = place_paid_order(apps)
    eventually_sync(lambda: notified(apps, order_id) == ["OrderCompleted"])
    # As if order_service's relay died between the broker's confirm and its mark, long enough
    # ago for the row to be past the sweep's grace: the sweep publishes the row again, the same
    # message with the same traceparent.
    url = apps["order"].app.state.settings.database_url
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        completed = (
            "SELECT published_at FROM outbox WHERE order_id = %s AND event_type = 'OrderCompleted'"
        )
        eventually_sync(lambda: conn.execute(completed, (order_id,)).fetchone()[0])  # marked
        unmarked = conn.execute(
            "UPDATE outbox SET published_at = NULL, created_at = created_at - interval '1 minute'"
            " WHERE order_id = %s AND event_type = 'OrderCompleted'",
            (order_id,),
        ).rowcount
    assert unmarked == 1

    spans = eventually_sync(
        lambda: (found := saga(exported, order_id)) and deliveries(found, duplicate=True) and found
    )

    assert_causal(spans)
    [again] = deliveries(spans, duplicate=True)
    [first] = [s for s in deliveries(spans) if s.attributes["saga.event"] == "OrderCompleted"]
    assert again.attributes["saga.event"] == "OrderCompleted"
    assert again.attributes["messaging.message.id"] == first.attributes["messaging.message.id"]
    assert again.parent == first.parent
    assert [s.attributes["saga.event"] for s in spans if s.kind is SpanKind.PRODUCER].count(
        "OrderCompleted"
    ) == 2

    def sweeps() -> list:  # the sweep's span ends after its commit, maybe after the delivery's
        return [
            s
            for s in exported.get_finished_spans()
            if s.name == "outbox sweep"
            and any(link.context.span_id == first.parent.span_id for link in s.links)
        ]

    assert eventually_sync(sweeps, timeout=10), "no sweep span linked to the row's context"
    assert notified(apps, order_id) == ["OrderCompleted"]
