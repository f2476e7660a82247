"""Tracing a service's process: the OpenTelemetry SDK, configured once at start from the standard
`OTEL_*` environment variables, and the HTTP spans (Litestar's OpenTelemetry plugin).

Tracing is on when an exporter is configured, and only then: `OTEL_TRACES_EXPORTER` (`otlp`,
`console`, `otlp_json_file`, or any exporter package's entry point), an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, which imply `otlp`), or
`TRACES_DIR` (OTLP JSON lines, one file per process: `<dir>/<service>.<pid>.jsonl`).
`OTEL_SDK_DISABLED=true` turns it off whatever else is set (`OTEL_TRACES_EXPORTER=none` leaves
only `TRACES_DIR`'s file). With no exporter, no SDK is set up,
no span is started anywhere (`outbox.tracing.enabled`), and no middleware is added: tracing off
costs nothing. The SDK reads the rest itself: `OTEL_SERVICE_NAME` (default: the service's name),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*`.

`otlp` is OTLP over HTTP (protobuf, port 4318: Jaeger's, a collector's): the one transport
installed. Database spans (psycopg's instrumentation, which sees the hot path's statements that
go straight to psycopg as well as SQLAlchemy's) are opt-in: `TRACE_DATABASE=1`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import Scope
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from outbox import tracing
from web.settings import ServiceSettings

log = logging.getLogger(__name__)

#: Endpoints that are polled, not used: no span for them.
UNTRACED_PATHS = [r"^/health", r"^/metrics$"]


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for (none: tracing off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    return [name for name in names if name != "none"]


def exporter(name: str) -> SpanExporter:
    """A span exporter by its `OTEL_TRACES_EXPORTER` name."""
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol != "http/protobuf":
            raise ValueError(f"OTLP protocol {protocol!r}: only http/protobuf is installed")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise ValueError(f"OTEL_TRACES_EXPORTER={name}: no such span exporter installed")
    exporter_class: type[SpanExporter] = next(iter(found)).load()
    return exporter_class()


def traces_file(settings: ServiceSettings) -> Path | None:
    """This process's OTLP JSON file, if `TRACES_DIR` is set."""
    if not settings.traces_dir:
        return None
    return Path(settings.traces_dir) / f"{settings.service}.{os.getpid()}.jsonl"


def configure(settings: ServiceSettings, env: Mapping[str, str] | None = None) -> bool:
    """Set the process's tracer provider from the environment; False (and nothing set) if no
    exporter is configured. Called once, before the app is built (`web.server`)."""
    env = os.environ if env is None else env
    exporters = [exporter(name) for name in exporter_names(env)]
    path = traces_file(settings)
    if path is not None and env.get("OTEL_SDK_DISABLED", "").strip().lower() != "true":
        from opentelemetry.exporter.otlp.json.file import FileSpanExporter

        path.parent.mkdir(parents=True, exist_ok=True)
        exporters.append(FileSpanExporter(path))
    if not exporters:
        return False
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or settings.service})
    provider = TracerProvider(resource=resource)
    if settings.trace_database:
        # Set before any tracer is made: each takes the provider's sampler.
        provider.sampler = StatementsOfTracedWork(provider.sampler)
    for chosen in exporters:
        provider.add_span_processor(BatchSpanProcessor(chosen))
    trace.set_tracer_provider(provider)
    if settings.trace_database:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor().instrument(enable_commenter=False)
    log.info(
        "tracing to %s",
        ", ".join([*exporter_names(env), *([str(path)] if path else [])]),
    )
    return True


def plugins() -> list[OpenTelemetryPlugin]:
    """Litestar's OpenTelemetry plugin, a server span per request, when tracing is on; else none."""
    if not tracing.enabled():
        return []
    return [
        OpenTelemetryPlugin(
            OpenTelemetryConfig(
                exclude=UNTRACED_PATHS,
                exclude_spans=["receive", "send"],
                scope_span_details_extractor=_method_only,
            )
        )
    ]


class StatementsOfTracedWork(Sampler):
    """Drops the span of a database statement that no traced work runs (a readiness probe, a
    scrape, the relay's polls and marks, the purge): a root span of kind client, of which the
    services make no other. Everything else goes to the configured sampler (`OTEL_TRACES_SAMPLER`)."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind is SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self._sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"StatementsOfTracedWork{{{self._sampler.get_description()}}}"


def _method_only(scope: Scope) -> tuple[str, dict[str, Any]]:
    # The span starts before routing: named by its method until `name_span` knows the route (a
    # name with the path in it would make one span name per order id).
    return str(scope.get("method", "HTTP")), {}


def name_span(request: Request[Any, Any, Any]) -> None:
    """Name the request's span by its route, as OpenTelemetry's conventions do: `POST /orders`,
    `GET /orders/{order_id}` (Litestar calls this once it has routed the request)."""
    span = trace.get_current_span()
    template = request.scope.get("path_template")
    if span.is_recording() and template:
        span.update_name(f"{request.method} {template}")
        span.set_attribute(HTTP_ROUTE, template)
