"""The messaging runtime's spans, in the trace each message carries: one trace per saga.

Only the OpenTelemetry API is used here; a process that configures no SDK (`web.tracing`) gets
the API's no-op tracer, and then nothing here starts a span at all: `enabled()` is false, events
get a traceparent of their cause's trace with a fresh span id, as they always did.

With tracing on, an event staged in a span records that span's context as its `traceparent`
(`traceparent_for`): the HTTP request's, or the delivery's that handled its cause. The relay
publishes it long after, from another task, in a span that is a child of that recorded context
(`publishing`), and the message carries the recorded context, not the relay's, so that its
consumers' delivery spans (`deliveries`) are children of the span that staged it: parent/child
links follow `causation_id`, and a re-published copy is the same message.
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, cast

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from sqlalchemy import ARRAY, Table, any_, bindparam, select
from sqlalchemy.dialects.postgresql import UUID, distinct_on

from contracts import event_name
from outbox.inbox import Delivery
from outbox.tables import OutboxMessage
from outbox.transaction import Transaction, compiled

tracer = trace.get_tracer("outbox")
_OUTBOX = cast(Table, OutboxMessage.__table__)

#: A saga's recorded context, for events staged outside any span of that saga while tracing is
#: off (see `continuing`).
_fallback: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "outbox_trace_fallback", default=None
)


class Staging(Protocol):
    """What the relay knows of an outbox row: enough for its publish span."""

    @property
    def event_id(self) -> uuid.UUID: ...
    @property
    def event_type(self) -> str: ...
    @property
    def order_id(self) -> uuid.UUID: ...
    @property
    def traceparent(self) -> str: ...


def enabled() -> bool:
    """True once the process set an SDK tracer provider (`web.tracing.configure`, or a test)."""
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


#: Built once: the first outbox row of each order, by id.
_SAGA_TRACES = compiled(
    select(_OUTBOX.c.order_id, _OUTBOX.c.traceparent)
    .where(_OUTBOX.c.order_id == any_(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))))
    .order_by(_OUTBOX.c.order_id, _OUTBOX.c.id)
    .ext(distinct_on(_OUTBOX.c.order_id))
)


async def saga_traces(tx: Transaction, order_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each order's saga context: the traceparent its first outbox row recorded (order_service's
    OrderCreated, staged in the request that placed the order), while the row is retained."""
    if not order_ids:
        return {}
    rows = await tx.rows(_SAGA_TRACES, {"ids": sorted(set(order_ids))})
    return {row["order_id"]: row["traceparent"] for row in rows}


def span_context(traceparent: str | None) -> SpanContext | None:
    """The remote span context a W3C `traceparent` names, or None if it is missing or invalid."""
    parts = (traceparent or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    found = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 0xFF))
    return found if found.is_valid else None


def context_of(traceparent: str | None) -> Context | None:
    """An OpenTelemetry context whose parent is the span `traceparent` names (None: a new trace)."""
    found = span_context(traceparent)
    return trace.set_span_in_context(NonRecordingSpan(found)) if found else None


def traceparent_of(span: Span) -> str:
    found = span.get_span_context()
    return f"00-{found.trace_id:032x}-{found.span_id:016x}-{int(found.trace_flags):02x}"


def traceparent_for(cause: str | None) -> str:
    """The traceparent an event staged now records: the current span's when there is one (a
    span not sampled too, so that its consumers keep the sampling decision); else, with tracing
    off, a new span id in the trace of `cause` (the message being handled), of the saga
    `continuing` names, or of a new trace."""
    span = trace.get_current_span()
    if span.get_span_context().is_valid:
        return traceparent_of(span)
    return child_traceparent(cause or _fallback.get())


def child_traceparent(parent: str | None) -> str:
    """A W3C traceparent for a new span: in the parent's trace if there is a valid one, else a
    new trace."""
    found = span_context(parent)
    trace_id = f"{found.trace_id:032x}" if found else secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


@contextlib.contextmanager
def continuing(traceparent: str | None, name: str, **attributes: Any) -> Iterator[None]:
    """Stage events in the saga whose context `traceparent` recorded, rather than the current
    trace: order_service cancels an order (a customer's request, its deadline) in the trace of
    the request that placed it, in a span linked to the current one (the cancel request's)."""
    if not enabled():
        token = _fallback.set(traceparent)
        try:
            yield
        finally:
            _fallback.reset(token)
        return
    current = trace.get_current_span().get_span_context()
    with tracer.start_as_current_span(
        name,
        context=context_of(traceparent),
        links=[Link(current)] if current.is_valid else None,
        attributes=attributes,
    ):
        yield


#: Marks the publish of row `index` failed (returned, nacked, never confirmed).
Refused = Callable[[int, BaseException], None]


def _ignore(index: int, exc: BaseException) -> None:
    pass


@contextlib.contextmanager
def publishing(rows: Sequence[Staging], service: str, exchange: str) -> Iterator[Refused]:
    """A producer span per outbox row published, each a child of the context its row recorded,
    from now until the broker confirmed (or refused: the yielded callable) the row."""
    if not enabled():
        yield _ignore
        return
    spans = [
        _message_span(
            f"publish {row.event_type}",
            row.traceparent,
            SpanKind.PRODUCER,
            destination=exchange,
            message_id=row.event_id,
            order_id=row.order_id,
            event=row.event_type,
            service=service,
            extra={"messaging.rabbitmq.destination.routing_key": row.event_type},
        )
        for row in rows
    ]
    try:
        yield lambda index, exc: _failed(spans[index], exc)
    except BaseException as exc:
        for span in spans:
            _failed(span, exc)
        raise
    finally:
        for span in spans:
            span.end()


@contextlib.contextmanager
def sweeping(service: str) -> Iterator[list[Staging]]:
    """A span for a poll of the relay's sweep, recorded only if the poll published something:
    the caller fills the yielded list with the rows it claimed. The span links to the contexts
    those rows recorded (their publish spans are children of those)."""
    started = time.time_ns()
    claimed: list[Staging] = []
    try:
        yield claimed
    finally:
        if claimed and enabled():
            links = [Link(found) for row in claimed if (found := span_context(row.traceparent))]
            span = tracer.start_span(
                "outbox sweep",
                start_time=started,
                links=links[:128],
                attributes={"saga.service": service, "saga.published": len(claimed)},
            )
            span.end()


class Deliveries:
    """A consumer span per delivery of a batch, each a child of the context in its message's
    `traceparent`: opened before the transaction, marked duplicate or not once the inbox answered,
    current while its handler runs, ended when the batch's transaction is over."""

    def __init__(self, service: str, deliveries: Sequence[Delivery]) -> None:
        self._service = service
        self._spans = [
            _message_span(
                f"process {delivery.consumer}",
                delivery.traceparent,
                SpanKind.CONSUMER,
                destination=delivery.consumer,
                message_id=delivery.event.event_id,
                order_id=delivery.event.order_id,
                event=event_name(delivery.event),
                service=service,
                extra={
                    "messaging.consumer.group.name": service,
                    "messaging.batch.message_count": len(deliveries),
                    **({"saga.emitted_by": delivery.emitted_by} if delivery.emitted_by else {}),
                },
            )
            for delivery in deliveries
        ]

    def transaction(self) -> contextlib.AbstractContextManager[Span]:
        """The current span while the batch's transaction runs (its database statements' parent,
        with `TRACE_DATABASE`): the delivery's for a batch of one, else a span of the batch's
        own, linked to each delivery's."""
        if len(self._spans) == 1:
            return trace.use_span(self._spans[0], end_on_exit=False, record_exception=False)
        return tracer.start_as_current_span(
            f"{self._service} transaction",
            context=Context(),  # a root: the batch belongs to several traces
            links=[Link(span.get_span_context()) for span in self._spans],
            attributes={
                "saga.service": self._service,
                "messaging.batch.message_count": len(self._spans),
            },
        )

    def claimed(self, first: Sequence[bool]) -> None:
        for span, new in zip(self._spans, first, strict=True):
            span.set_attribute("saga.inbox.duplicate", not new)

    def handling(self, index: int) -> contextlib.AbstractContextManager[Span]:
        """Delivery `index`'s span as the current one, while its handler runs."""
        return trace.use_span(self._spans[index], end_on_exit=False, record_exception=False)

    def end(self, failed: BaseException | None = None) -> None:
        for span in self._spans:
            if failed is not None:
                _failed(span, failed)
            span.end()


def deliveries(service: str, batch: Sequence[Delivery]) -> Deliveries | None:
    """The spans of a batch of deliveries, or None while tracing is off."""
    return Deliveries(service, batch) if enabled() else None


def _message_span(
    name: str,
    traceparent: str | None,
    kind: SpanKind,
    *,
    destination: str,
    message_id: uuid.UUID,
    order_id: uuid.UUID,
    event: str,
    service: str,
    extra: dict[str, Any],
) -> Span:
    """A span about one message, started as a child of the context `traceparent` names, with the
    messaging conventions' attributes and the saga's."""
    return tracer.start_span(
        name,
        context=context_of(traceparent),
        kind=kind,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "send" if kind is SpanKind.PRODUCER else "process",
            "messaging.destination.name": destination,
            "messaging.message.id": str(message_id),
            "messaging.message.conversation_id": str(order_id),
            "saga.event": event,
            "saga.order_id": str(order_id),
            "saga.service": service,
            **extra,
        },
    )


def _failed(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
