"""`make trace ORDER=<id>`: one saga's timeline, hop by hop, read from the four services' outbox and inbox.

Each service keeps, for the retention window (`RETENTION_S`, 7 days by default), the events it
emitted (outbox: committed at `created_at`, published at `published_at`) and the messages it
handled (inbox: one row per queue and message id, `handled_at`). Joined on the event id they tell
who emitted what, who consumed it, and when, in ms since the order was placed.

`--format mermaid` prints the same saga as a Mermaid sequence diagram (who told whom what, in
order; failures and compensations dashed), to paste into an issue or a pull request. `--format
spans` prints the saga's OpenTelemetry trace as a tree, read from the OTLP JSON files the services
write when started with `TRACES_DIR` (`make up TRACES=1`: `.run/traces/`), no collector needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from rich import box
from rich.console import Console
from rich.table import Table

from contracts import event_name
from inventory_service.messaging import MANIFEST as INVENTORY
from notification_service.messaging import MANIFEST as NOTIFICATION
from order_service.messaging import MANIFEST as ORDER
from outbox import Manifest, local_database_url
from payment_service.messaging import MANIFEST as PAYMENT
from tools.postgres import libpq
from tools.provision import reader_url

MANIFESTS: tuple[Manifest, ...] = (ORDER, INVENTORY, PAYMENT, NOTIFICATION)
SERVICES = tuple(manifest.service for manifest in MANIFESTS)

#: event name -> the queues that consume it (`<service>.<Event>`), as the manifests bind them.
SUBSCRIBERS: dict[str, tuple[str, ...]] = {}
for _manifest in MANIFESTS:
    for _event in _manifest.consumes:
        SUBSCRIBERS.setdefault(event_name(_event), ())
        SUBSCRIBERS[event_name(_event)] += (_manifest.queue_for(_event),)

STYLES = {
    "OrderCompleted": "bold green",
    "StockFailed": "red",
    "PaymentFailed": "red",
    "OrderCancelled": "bold red",
    "StockReleased": "yellow",
    "PaymentRefunded": "yellow",
}


def database_urls(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each service's database: `<SERVICE>_DATABASE_URL` (e.g. ORDER_SERVICE_DATABASE_URL), else the
    local one as the read-only role (`tools.provision.reader_url`)."""
    env = os.environ if env is None else env
    return {
        service: env.get(f"{service.upper()}_DATABASE_URL", reader_url(local_database_url(service)))
        for service in SERVICES
    }


@dataclass(frozen=True)
class Handling:
    queue: str  # `<service>.<Event>`
    handled_at: datetime

    @property
    def service(self) -> str:
        return self.queue.split(".", 1)[0]


@dataclass
class Hop:
    """One event of the saga: who emitted it, when, and which queues handled it."""

    event_type: str
    event_id: uuid.UUID
    emitted_by: str | None
    causation_id: uuid.UUID | None = None
    committed_at: datetime | None = None  # None: not in any outbox (published by hand, or purged)
    published_at: datetime | None = None
    handled: list[Handling] = field(default_factory=list)

    @property
    def waiting_for(self) -> list[str]:
        """Queues bound to this event that have not handled it (yet)."""
        done = {h.queue for h in self.handled}
        return [q for q in SUBSCRIBERS.get(self.event_type, ()) if q not in done]

    @property
    def at(self) -> datetime:
        times = [self.committed_at, self.published_at, *(h.handled_at for h in self.handled)]
        return min(t for t in times if t is not None)


@dataclass
class Timeline:
    order_id: uuid.UUID
    hops: list[Hop]
    unreachable: list[str] = field(default_factory=list)  # services whose database did not answer

    @property
    def placed_at(self) -> datetime | None:
        """When OrderCreated was committed with the order; else the earliest time known."""
        created = [h.committed_at for h in self.hops if h.event_type == "OrderCreated"]
        if created and created[0] is not None:
            return created[0]
        return min((h.at for h in self.hops), default=None)

    def ms(self, at: datetime | None) -> float | None:
        placed = self.placed_at
        if at is None or placed is None:
            return None
        return (at - placed).total_seconds() * 1000

    @property
    def settled(self) -> bool:
        """Every event published and handled by every queue bound to it: nothing is in flight."""
        return bool(self.hops) and all(
            (hop.committed_at is None or hop.published_at is not None) and not hop.waiting_for
            for hop in self.hops
        )

    def events(self) -> list[str]:
        return [hop.event_type for hop in self.hops]


def read_timeline(order_id: uuid.UUID | str, urls: Mapping[str, str] | None = None) -> Timeline:
    """Read one order's saga from every service's outbox and inbox."""
    order_id = uuid.UUID(str(order_id))
    urls = urls or database_urls()
    hops: dict[uuid.UUID, Hop] = {}
    handlings: list[tuple[uuid.UUID, str, str | None, Handling]] = []
    unreachable = []
    for service, url in urls.items():
        try:
            with psycopg.connect(libpq(url), connect_timeout=5) as conn:
                for event_type, event_id, causation_id, created_at, published_at in conn.execute(
                    "SELECT event_type, event_id, causation_id, created_at, published_at"
                    " FROM outbox WHERE order_id = %s",
                    (order_id,),
                ):
                    hops[event_id] = Hop(
                        event_type, event_id, service, causation_id, created_at, published_at
                    )
                for queue, message_id, event_type, emitted_by, handled_at in conn.execute(
                    "SELECT consumer, message_id, event_type, emitted_by, handled_at"
                    " FROM inbox WHERE order_id = %s",
                    (order_id,),
                ):
                    handlings.append(
                        (message_id, event_type, emitted_by, Handling(queue, handled_at))
                    )
        except psycopg.Error:
            unreachable.append(service)
    for message_id, event_type, emitted_by, handling in handlings:
        hop = hops.setdefault(message_id, Hop(event_type, message_id, emitted_by))
        hop.handled.append(handling)
    for hop in hops.values():
        hop.handled.sort(key=lambda h: h.handled_at)
    return Timeline(order_id, sorted(hops.values(), key=lambda h: h.at), unreachable)


def _ms(value: float | None) -> str:
    """Milliseconds; from 10 s on, seconds marked as such (a timeout, a service down)."""
    if value is None:
        return "[dim]?[/]"
    return f"{value:,.0f}" if abs(value) < 10_000 else f"{value / 1000:,.1f} s"


def console() -> Console:
    """A console as wide as the terminal; 100 columns when writing to a file or a pipe."""
    return Console() if sys.stdout.isatty() else Console(width=100)


def _short(service: str | None) -> str:
    return "[dim]?[/]" if service is None else service.removesuffix("_service")


LEGEND = (
    "Times in ms (or s) since the order was placed. committed: the event written to the outbox"
    " with the state change; published: confirmed by the broker; handled: committed by the"
    " consumer of that service's queue; after: the event that caused it (blank: an HTTP request,"
    " or the order's deadline)."
)


def render(timeline: Timeline, title: str | None = None, *, legend: bool = True) -> Table:
    """The timeline as a table: one section per event, one line per queue that handled it."""
    table = Table(
        title=title or f"saga of order {timeline.order_id}",
        title_justify="left",
        caption=LEGEND if legend else None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("#", justify="right")
    table.add_column("event", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("after")
    table.add_column("committed", justify="right")
    table.add_column("published", justify="right")
    table.add_column("to", no_wrap=True)
    table.add_column("handled", justify="right")
    number = {hop.event_id: i for i, hop in enumerate(timeline.hops, start=1)}
    for i, hop in enumerate(timeline.hops, start=1):
        style = STYLES.get(hop.event_type, "cyan")
        cause = number.get(hop.causation_id) if hop.causation_id else None
        published = (
            _ms(timeline.ms(hop.published_at))
            if hop.committed_at is None or hop.published_at is not None
            else "[yellow]not yet[/]"
        )
        lines = [(_short(h.service), _ms(timeline.ms(h.handled_at))) for h in hop.handled]
        lines += [(_short(q.split(".", 1)[0]), "[yellow]waiting[/]") for q in hop.waiting_for]
        if not lines:
            lines = [("[dim]nobody[/]", "")]
        after = f"#{cause}" if cause else ""
        for j, (consumer, handled) in enumerate(lines):
            event_cells = (
                [
                    str(i),
                    f"[{style}]{hop.event_type}[/]",
                    _short(hop.emitted_by),
                    after,
                    _ms(timeline.ms(hop.committed_at)),
                    published,
                ]
                if j == 0
                else [""] * 6
            )
            table.add_row(*event_cells, consumer, handled, end_section=j == len(lines) - 1)
    return table


# --- the saga as a Mermaid sequence diagram ----------------------------------------------------

#: Drawn dashed: what goes wrong, and what undoes it.
FAILURES_AND_COMPENSATIONS = frozenset(
    {"StockFailed", "PaymentFailed", "OrderCancelled", "StockReleased", "PaymentRefunded"}
)


def mermaid(timeline: Timeline) -> str:
    """The saga as a Mermaid sequence diagram: one arrow per event and consumer, in the order the
    events happened, numbered as in the table; a failure or a compensation dashed, a consumer that
    has not handled its event yet marked waiting, an event with no cause (a request, the order's
    deadline) as a note or the customer's arrow."""
    lines = ["sequenceDiagram", "    participant customer"]
    lines += [f"    participant {_participant(service)} as {service}" for service in SERVICES]
    for number, hop in enumerate(timeline.hops, start=1):
        sender = _participant(hop.emitted_by)
        label = f"#{number} {hop.event_type}"
        if hop.causation_id is None:
            if hop.event_type == "OrderCreated":
                lines.append(f"    customer->>{sender}: places the order")
            else:
                lines.append(f"    Note over {sender}: a request or the deadline")
        arrow = "-->>" if hop.event_type in FAILURES_AND_COMPENSATIONS else "->>"
        receivers = [(h.service, "") for h in hop.handled]
        receivers += [(q.split(".", 1)[0], " (waiting)") for q in hop.waiting_for]
        if not receivers:
            lines.append(f"    Note over {sender}: {label} (nobody listens)")
        for service, waiting in receivers:
            lines.append(f"    {sender}{arrow}{_participant(service)}: {label}{waiting}")
    return "\n".join(lines) + "\n"


def _participant(service: str | None) -> str:
    return "unknown" if service is None else service.removesuffix("_service")


# --- the saga's spans, from the OTLP JSON files ------------------------------------------------

#: OTLP's span kinds.
KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass
class SpanRecord:
    """One span as an OTLP JSON file holds it."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: bool = False

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(typed: Mapping[str, Any]) -> Any:
    for kind in ("stringValue", "boolValue", "doubleValue"):
        if kind in typed:
            return typed[kind]
    if "intValue" in typed:
        return int(typed["intValue"])
    return None


def read_spans(paths: Iterable[Path]) -> list[SpanRecord]:
    """Every span in these OTLP JSON lines files (the services' `TRACES_DIR/*.jsonl`)."""
    spans = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            for resource_spans in json.loads(line).get("resourceSpans", []):
                resource = {
                    a["key"]: _value(a["value"])
                    for a in resource_spans.get("resource", {}).get("attributes", [])
                }
                for scope_spans in resource_spans.get("scopeSpans", []):
                    for span in scope_spans.get("spans", []):
                        spans.append(
                            SpanRecord(
                                trace_id=span["traceId"],
                                span_id=span["spanId"],
                                parent_id=span.get("parentSpanId", ""),
                                name=span["name"],
                                kind=KINDS.get(span.get("kind", 1), "internal"),
                                service=str(resource.get("service.name", "?")),
                                start_ns=int(span["startTimeUnixNano"]),
                                end_ns=int(span["endTimeUnixNano"]),
                                attributes={
                                    a["key"]: _value(a["value"]) for a in span.get("attributes", [])
                                },
                                error=span.get("status", {}).get("code") == 2,
                            )
                        )
    return spans


def saga_spans(order_id: uuid.UUID | str, spans: Iterable[SpanRecord]) -> list[SpanRecord]:
    """The spans of the trace(s) in which this order's saga ran, in the order they started."""
    spans = list(spans)
    traces = {s.trace_id for s in spans if s.attributes.get("saga.order_id") == str(order_id)}
    return sorted((s for s in spans if s.trace_id in traces), key=lambda s: s.start_ns)


def span_tree(spans: list[SpanRecord]) -> list[str]:
    """The spans as an indented tree, children under their parent, each with its service,
    when it started (ms after the first) and how long it took."""
    known = {s.span_id for s in spans}
    children: dict[str, list[SpanRecord]] = {}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in known else "", []).append(span)
    start = min((s.start_ns for s in spans), default=0)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            duplicate = " [duplicate]" if span.attributes.get("saga.inbox.duplicate") else ""
            error = " [error]" if span.error else ""
            lines.append(
                f"{(span.start_ns - start) / 1e6:9.1f} ms {'  ' * depth}{span.name}"
                f" ({span.service}, {span.ms:.1f} ms){duplicate}{error}"
            )
            walk(span.span_id, depth + 1)

    walk("", 0)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.trace", description="Print one saga's timeline, hop by hop."
    )
    parser.add_argument("order_id", type=uuid.UUID, help="the order's id")
    for service in SERVICES:
        parser.add_argument(
            f"--{service.replace('_', '-')}-database-url",
            dest=service,
            metavar="URL",
            help=f"default: ${service.upper()}_DATABASE_URL, else the local one as saga_reader",
        )
    parser.add_argument(
        "--format",
        choices=["table", "mermaid", "spans"],
        default="table",
        help="table (default), a Mermaid sequence diagram, or the trace's spans from --traces",
    )
    parser.add_argument(
        "--traces",
        type=Path,
        default=Path(".run/traces"),
        metavar="DIR",
        help="where the services wrote their spans (TRACES_DIR): for --format spans",
    )
    args = parser.parse_args()
    if args.format == "spans":
        spans = saga_spans(args.order_id, read_spans(sorted(args.traces.glob("*.jsonl"))))
        if not spans:
            sys.exit(
                f"no spans of order {args.order_id} in {args.traces}/*.jsonl"
                " (were the services started with TRACES_DIR, e.g. make up TRACES=1?)"
            )
        print("\n".join(span_tree(spans)))
        return
    urls = {**database_urls(), **{s: getattr(args, s) for s in SERVICES if getattr(args, s)}}
    out = console()
    timeline = read_timeline(args.order_id, urls)
    for service in timeline.unreachable:
        out.print(f"[yellow]{service}'s database did not answer ({urls[service]})[/]")
    if not timeline.hops:
        sys.exit(
            f"no events for order {args.order_id} in any outbox or inbox"
            " (unknown order, or older than the retention window RETENTION_S)"
        )
    if args.format == "mermaid":
        print(mermaid(timeline), end="")
        return
    out.print(render(timeline))
    if not timeline.settled:
        out.print("[yellow]some events are still in flight: run it again to see them land[/]")


if __name__ == "__main__":
    main()
