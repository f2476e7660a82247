"""Tracing is configured from the standard OTEL_* variables, and is on only with an exporter."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from web.tracing import StatementsOfTracedWork, exporter_names


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "order"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, otlp_json_file"}, ["console", "otlp_json_file"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_an_exporter_is_what_turns_tracing_on(env, names):
    assert exporter_names(env) == names


def test_with_database_spans_a_statement_outside_traced_work_records_nothing():
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.sampler = StatementsOfTracedWork(provider.sampler)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("test")

    tracer.start_span("SELECT", kind=SpanKind.CLIENT).end()  # a readiness probe's, say
    with tracer.start_as_current_span("process inventory_service.OrderCreated"):
        tracer.start_span("INSERT", kind=SpanKind.CLIENT).end()

    assert [span.name for span in exported.get_finished_spans()] == [
        "INSERT",
        "process inventory_service.OrderCreated",
    ]
