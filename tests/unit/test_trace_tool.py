"""`make trace`: a saga as a Mermaid sequence diagram, and its spans read back from the OTLP JSON
files the services write (the SDK's own file exporter writes the file here)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from opentelemetry.exporter.otlp.json.file import FileSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from tools.trace import Handling, Hop, Timeline, mermaid, read_spans, saga_spans, span_tree

ORDER = uuid.UUID("00000000-0000-0000-0000-00000000000a")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def hop(event: str, by: str, cause: Hop | None, ms: int, *to: str) -> Hop:
    return Hop(
        event,
        uuid.uuid4(),
        by,
        cause.event_id if cause else None,
        committed_at=at(ms),
        published_at=at(ms + 1),
        handled=[Handling(f"{queue}.{event}", at(ms + 2)) for queue in to],
    )


def a_saga_whose_payment_failed() -> Timeline:
    created = hop("OrderCreated", "order_service", None, 0, "inventory_service")
    reserved = hop(
        "StockReserved", "inventory_service", created, 10, "order_service", "payment_service"
    )
    failed = hop(
        "PaymentFailed", "payment_service", reserved, 20, "order_service", "inventory_service"
    )
    released = hop("StockReleased", "inventory_service", failed, 30)
    cancelled = hop(
        "OrderCancelled", "order_service", failed, 31, "inventory_service", "notification_service"
    )
    return Timeline(ORDER, [created, reserved, failed, released, cancelled])


def test_a_failed_payment_is_drawn_with_its_compensations_dashed_and_a_waiting_consumer():
    diagram = mermaid(a_saga_whose_payment_failed())

    assert diagram == (
        "sequenceDiagram\n"
        "    participant customer\n"
        "    participant order as order_service\n"
        "    participant inventory as inventory_service\n"
        "    participant payment as payment_service\n"
        "    participant notification as notification_service\n"
        "    customer->>order: places the order\n"
        "    order->>inventory: #1 OrderCreated\n"
        "    inventory->>order: #2 StockReserved\n"
        "    inventory->>payment: #2 StockReserved\n"
        "    payment-->>order: #3 PaymentFailed\n"
        "    payment-->>inventory: #3 PaymentFailed\n"
        "    Note over inventory: #4 StockReleased (nobody listens)\n"
        "    order-->>inventory: #5 OrderCancelled\n"
        "    order-->>notification: #5 OrderCancelled\n"
        # payment_service is bound to OrderCancelled and has not handled it yet
        "    order-->>payment: #5 OrderCancelled (waiting)\n"
    )


def test_a_cancellation_without_a_cause_is_a_note_of_its_own():
    timeline = a_saga_whose_payment_failed()
    late = hop("OrderCancelled", "order_service", None, 100, "inventory_service")
    timeline.hops = [timeline.hops[0], late]

    lines = mermaid(timeline).splitlines()

    assert (
        lines[-3:]
        == [
            "    Note over order: a request or the deadline",
            "    order-->>inventory: #2 OrderCancelled",
            "    order-->>payment: #2 OrderCancelled (waiting)",
        ][-3:]
        or lines
    )


def provider_writing(path: Path, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(path)))
    return provider


def test_the_spans_of_an_order_are_read_back_from_the_services_files_as_one_tree(tmp_path: Path):
    files = [tmp_path / "order_service.1.jsonl", tmp_path / "inventory_service.2.jsonl"]
    order, inventory = (
        provider_writing(files[0], "order_service"),
        provider_writing(files[1], "inventory_service"),
    )
    saga = {"saga.order_id": str(ORDER)}
    with order.get_tracer("test").start_as_current_span("POST /orders", kind=SpanKind.SERVER):
        order.get_tracer("test").start_span(
            "publish OrderCreated", kind=SpanKind.PRODUCER, attributes=saga
        ).end()
        inventory.get_tracer(
            "test"
        ).start_span(  # in the request's context, as a message carries it
            "process inventory_service.OrderCreated",
            kind=SpanKind.CONSUMER,
            attributes={**saga, "saga.inbox.duplicate": True},
        ).end()
    order.get_tracer("test").start_span("another order's request").end()
    order.shutdown()
    inventory.shutdown()

    spans = saga_spans(ORDER, read_spans(files))

    assert [(s.name, s.kind, s.service) for s in spans] == [
        ("POST /orders", "server", "order_service"),
        ("publish OrderCreated", "producer", "order_service"),
        ("process inventory_service.OrderCreated", "consumer", "inventory_service"),
    ]
    tree = [line.split(" ms ", 1)[1] for line in span_tree(spans)]
    assert [line.split(" (")[0] for line in tree] == [
        "POST /orders",
        "  publish OrderCreated",
        "  process inventory_service.OrderCreated",
    ]
    assert tree[2].endswith("[duplicate]")
