"""The consumer: decode, then inbox claim + handlers + outgoing events in one transaction per batch
of ready deliveries, then the acks.

- Undecodable or invalid messages are rejected without requeue as they arrive: the broker
  dead-letters them at once, and the consumer goes on.
- Deliveries that are ready together are handled together: one transaction claims them all in the
  inbox, loads and locks what their handlers need, runs the handlers in turn and commits once.
  Nothing waits to fill a batch: a worker takes whatever is ready, so a quiet system handles each
  message on its own as soon as it comes.
- A batch whose transaction fails is handled again one delivery per transaction, so that one bad
  message never fails its neighbours. A handler that raises is retried in-process with
  exponential backoff; after `max_attempts` the message is rejected to the dead-letter queue.
  Never ack-and-forget.
- The acks come after the commit (one `multiple` ack where the delivery tags allow). A crash in
  between redelivers the messages, and the inbox turns the redeliveries into no-ops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

from contracts import Event, event_name
from outbox import inbox, metrics, tracing
from outbox.faults import crash_point
from outbox.inbox import Delivery
from outbox.manifest import Manifest
from outbox.parsing import PoisonMessage, parse_event
from outbox.topology import declare_queues
from outbox.transaction import Pool
from outbox.unit import Unit, begin
from outbox.writer import Cause, current_cause

log = logging.getLogger(__name__)


def parse(message: AbstractIncomingMessage, expected: type[Event]) -> Event:
    """The event a message carries, or `PoisonMessage` saying why there is none."""
    name = message.type or message.routing_key
    return parse_event(message.body, headers=message.headers, name=name, expected=expected)


async def deliver(
    pool: Pool,
    manifest: Manifest,
    deliveries: Sequence[Delivery],
) -> list[bool]:
    """Handle deliveries in one transaction, on a connection of `pool`: inbox claims and the
    service's unit loaded, the handlers of the claimed ones in turn; then the unit's writes, the
    outbox rows and the commit in one round trip. For each delivery, False if it was a
    duplicate. Tracing, each delivery has a span of its own, a child of its message's
    `traceparent` (`outbox.tracing.Deliveries`).

    The consumer calls this for every batch; tests call it to deliver events in any order.
    """
    spans = tracing.deliveries(manifest.service, deliveries)
    try:
        with spans.transaction() if spans else contextlib.nullcontext():
            first = await _deliver(pool, manifest, deliveries, spans)
    except BaseException as exc:
        if spans:
            spans.end(failed=exc)
        raise
    if spans:
        spans.end()
    return first


async def _deliver(
    pool: Pool,
    manifest: Manifest,
    deliveries: Sequence[Delivery],
    spans: tracing.Deliveries | None,
) -> list[bool]:
    async with begin(pool) as tx:
        # The unit's first reads go with the claims, in one round trip (the transaction is one
        # pipeline): the rows of a duplicate are loaded (and locked) for nothing, which is rare
        # and harmless.
        claims = await inbox.claim(tx, deliveries)
        unit = await manifest.unit.load(tx, [delivery.event for delivery in deliveries])
        first = await claims.new()
        if spans:
            spans.claimed(first)
        for i, (delivery, new) in enumerate(zip(deliveries, first, strict=True)):
            if new:
                _handle(manifest, unit, delivery, spans, i)
        crash_point("consumer.before_commit")
    return first


def _handle(
    manifest: Manifest, unit: Unit, delivery: Delivery, spans: tracing.Deliveries | None, i: int
) -> None:
    """Run a delivery's handler, with the delivery as the cause (and, tracing, the current span)
    of the events it emits."""
    token = current_cause.set(Cause(delivery.event.event_id, delivery.traceparent))
    try:
        with spans.handling(i) if spans else contextlib.nullcontext():
            manifest.consumes[type(delivery.event)](unit, delivery.event)
    finally:
        current_cause.reset(token)


@dataclass(frozen=True, slots=True)
class _Received:
    message: AbstractIncomingMessage
    delivery: Delivery
    arrived: float  # perf_counter

    @property
    def name(self) -> str:
        return event_name(self.delivery.event)


class Consumer:
    """Consumes a service's queues, as declared by its manifest, on a (robust) channel."""

    def __init__(
        self,
        manifest: Manifest,
        pool: Pool,
        *,
        max_attempts: int = 16,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 5.0,
        workers: int = 2,
        max_batch: int = 64,
        concurrency: int = 8,
    ) -> None:
        self.manifest = manifest
        self._pool = pool
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._workers = workers
        self._max_batch = max_batch
        # Bounds the transactions held at once (batches and deliveries retried on their own), so
        # that a backlog never pushes the pool into opening and closing overflow connections.
        self._slots = asyncio.Semaphore(concurrency)
        self._ready: deque[_Received] = deque()
        self._wakeup = asyncio.Event()
        self._acks = _Acks()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        """Declare the queues and start consuming; a robust channel resumes them after reconnecting."""
        if not self._tasks:
            for number in range(self._workers):
                self._spawn(self._work(), f"{self.manifest.service}-consumer-{number}")
        queues = await declare_queues(channel, self.manifest, exchange)
        for event, queue in queues.items():
            await queue.consume(partial(self._arrived, event, queue.name))

    @property
    def waiting(self) -> int:
        """Deliveries received and decoded, waiting for a worker."""
        return len(self._ready)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            self._tasks.discard(task)
        else:  # kept, so that `stop` (and a test looking for a crash) sees how it died
            log.error("%s: consumer task died", task.get_name(), exc_info=task.exception())

    async def _arrived(
        self, expected: type[Event], consumer: str, message: AbstractIncomingMessage
    ) -> None:
        self._acks.received(message)
        try:
            event = parse(message, expected)
        except PoisonMessage as exc:
            await self._dead_letter(
                message, event_name(expected), "poison", f"poison message from {consumer}: {exc}"
            )
            return
        delivery = Delivery(consumer, event, message.app_id, _header(message, "traceparent"))
        self._ready.append(_Received(message, delivery, time.perf_counter()))
        self._wakeup.set()

    async def _work(self) -> None:
        """Take whatever is ready, up to a batch, and handle it; wait when nothing is."""
        while True:
            if not self._ready:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._ready.popleft() for _ in range(min(len(self._ready), self._max_batch))]
            try:
                await self._handle_batch(batch)
            except Exception:
                # A worker that died would stop the service consuming for good; its deliveries,
                # unacked, come again when their channel closes.
                log.exception("%s: a batch of %d failed", self.manifest.service, len(batch))

    async def _handle_batch(self, batch: list[_Received]) -> None:
        try:
            async with self._slots:
                first = await deliver(self._pool, self.manifest, [r.delivery for r in batch])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(batch) == 1:
                self._spawn(self._handle_alone(batch[0], failed=exc), "consumer-retry")
                return
            # One delivery per transaction from here, each with its own retries: a message that
            # fails (poison a handler found, a bug) takes none of its neighbours with it.
            log.info(
                "%s: a batch of %d failed (%r), handling each on its own",
                self.manifest.service,
                len(batch),
                exc,
            )
            metrics.BATCHES_SPLIT.inc()
            for received in batch:
                self._spawn(self._handle_alone(received), "consumer-retry")
            return
        metrics.BATCH_SIZE.observe(len(batch))
        for received, new in zip(batch, first, strict=True):
            self._count(received, "handled" if new else "duplicate")
        crash_point("consumer.after_commit")
        await self._acks.ack([received.message for received in batch])

    async def _handle_alone(self, received: _Received, failed: Exception | None = None) -> None:
        """One delivery in a transaction of its own, retried with backoff, then dead-lettered."""
        attempt = 1 if failed is not None else 0
        while True:
            if failed is not None:
                if isinstance(failed, PoisonMessage):
                    await self._dead_letter(
                        received.message, received.name, "poison", self._why(received, failed)
                    )
                    return
                if attempt >= self._max_attempts:
                    await self._dead_letter(
                        received.message,
                        received.name,
                        "dead_lettered",
                        self._why(received, f"failed {attempt} times"),
                        exc_info=failed,
                    )
                    return
                delay = min(self._backoff_base_s * 2 ** (attempt - 1), self._backoff_cap_s)
                log.warning(
                    "%s (attempt %d), retrying in %.2fs",
                    self._why(received, "failed"),
                    attempt,
                    delay,
                    exc_info=failed,
                    extra={"order_id": str(received.delivery.event.order_id)},
                )
                metrics.HANDLED.labels(received.name, "retried").inc()
                await asyncio.sleep(delay)
            attempt += 1
            try:
                async with self._slots:
                    [new] = await deliver(self._pool, self.manifest, [received.delivery])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed = exc
                continue
            metrics.BATCH_SIZE.observe(1)
            self._count(received, "handled" if new else "duplicate")
            crash_point("consumer.after_commit")
            await self._acks.ack([received.message])
            return

    def _count(self, received: _Received, outcome: str) -> None:
        metrics.HANDLED.labels(received.name, outcome).inc()
        if outcome == "handled":
            metrics.HANDLER_SECONDS.labels(received.name).observe(
                time.perf_counter() - received.arrived
            )

    @staticmethod
    def _why(received: _Received, what: object) -> str:
        delivery = received.delivery
        return (
            f"{delivery.consumer}: {event_name(delivery.event)} {delivery.event.event_id}: {what}"
        )

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        name: str,
        outcome: str,
        why: str,
        exc_info: BaseException | None = None,
    ) -> None:
        """Reject without requeue: the queue's dead-letter exchange takes the message."""
        log.error(
            "dead-lettering %s: %s",
            message.message_id,
            why,
            exc_info=exc_info,
            extra={"order_id": message.correlation_id},
        )
        metrics.HANDLED.labels(name, outcome).inc()
        await self._acks.reject(message)


class _Acks:
    """The delivery tags each channel has handed over and that are not settled yet, so that a
    batch is acked in as few frames as the tags allow: one `multiple` ack covers every tag up to
    its own, which is only right when all of those are this batch's."""

    def __init__(self) -> None:
        self._open: dict[Any, set[int]] = {}

    def received(self, message: AbstractIncomingMessage) -> None:
        channel = _open_channel(message)
        if channel is None:
            return  # closed since: the message will come again on a new channel
        if channel not in self._open:
            # A robust connection opens new channels after a reconnect: forget the dead ones.
            for stale in [c for c in self._open if getattr(c, "is_closed", False)]:
                del self._open[stale]
            self._open[channel] = set()
        self._open[channel].add(_tag(message))

    async def ack(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        by_channel: dict[Any, list[AbstractIncomingMessage]] = {}
        for message in messages:
            channel = _open_channel(message)
            if channel is None:
                _will_come_again(message, "its channel closed")
            else:
                by_channel.setdefault(channel, []).append(message)
        frames = 0
        for channel, ours in by_channel.items():
            open_tags = self._open.get(channel, set())
            ours.sort(key=_tag)
            tags = {_tag(m) for m in ours}
            # The longest run of our tags, from the lowest open tag up, with no other open tag in it.
            others = open_tags - tags
            lowest_other = min(others) if others else None
            covered = [m for m in ours if lowest_other is None or _tag(m) < lowest_other]
            rest = ours[len(covered) :]
            if len(covered) > 1:
                frames += await self._settle(covered[-1], multiple=True)
            else:
                rest = ours
            for message in rest:
                if frames:
                    crash_point("consumer.during_acks")
                frames += await self._settle(message, multiple=False)
            open_tags -= tags

    async def reject(self, message: AbstractIncomingMessage) -> None:
        channel = _open_channel(message)
        if channel is not None:
            self._open.get(channel, set()).discard(_tag(message))
        with contextlib.suppress(Exception):  # a closed channel returns the message anyway
            await message.reject(requeue=False)

    @staticmethod
    async def _settle(message: AbstractIncomingMessage, *, multiple: bool) -> int:
        try:
            await message.ack(multiple=multiple)
        except Exception as exc:
            _will_come_again(message, repr(exc))
        return 1


def _open_channel(message: AbstractIncomingMessage) -> Any:
    """The channel the message came on, or None once it closed (aio-pika raises then)."""
    try:
        return message.channel
    except ChannelInvalidStateError:
        return None


def _will_come_again(message: AbstractIncomingMessage, why: str) -> None:
    # The channel closed since the delivery: the broker gives the message to a consumer again,
    # and the inbox will know it as a duplicate.
    log.info("ack of %s not sent (%s): it will come again", message.message_id, why)


def _tag(message: AbstractIncomingMessage) -> int:
    return message.delivery_tag or 0


def _header(message: AbstractIncomingMessage, name: str) -> str | None:
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) else None
