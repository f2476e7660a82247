"""The consumer: decode, then inbox claim + handler + outgoing events in one transaction, then ack.

- Undecodable or invalid messages are rejected without requeue: the broker dead-letters them at
  once, and the consumer goes on.
- A handler that raises is retried in-process with exponential backoff; after `max_attempts` the
  message is rejected to the dead-letter queue. Never ack-and-forget.
- The ack comes after the commit. A crash in between redelivers the message, and the inbox turns
  the redelivery into a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import Event, event_name
from outbox import inbox, metrics
from outbox.faults import crash_point
from outbox.manifest import Handler, Manifest
from outbox.parsing import PoisonMessage, parse_event
from outbox.topology import declare_queues
from outbox.writer import Cause, current_cause

log = logging.getLogger(__name__)


def parse(message: AbstractIncomingMessage, expected: type[Event]) -> Event:
    """The event a message carries, or `PoisonMessage` saying why there is none."""
    name = message.type or message.routing_key
    return parse_event(message.body, headers=message.headers, name=name, expected=expected)


class Consumer:
    """Consumes a service's queues, as declared by its manifest, on a (robust) channel."""

    def __init__(
        self,
        manifest: Manifest,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        max_attempts: int = 16,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 5.0,
        concurrency: int = 8,
    ) -> None:
        self.manifest = manifest
        self._sessionmaker = sessionmaker
        # Prefetch lets the broker hand over many messages at once; this bounds how many handlers
        # hold a database connection at once, so a backlog never pushes the pool into opening and
        # closing overflow connections for every burst.
        self._slots = asyncio.Semaphore(concurrency)
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s

    async def start(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        """Declare the queues and start consuming; a robust channel resumes them after reconnecting."""
        queues = await declare_queues(channel, self.manifest, exchange)
        for event, queue in queues.items():
            handler = self.manifest.consumes[event]
            await queue.consume(partial(self.handle, event, handler, queue.name))

    async def handle(
        self,
        expected: type[Event],
        handler: Handler,
        consumer: str,
        message: AbstractIncomingMessage,
    ) -> None:
        name = event_name(expected)
        try:
            event = parse(message, expected)
        except PoisonMessage as exc:
            log.error(
                "dead-lettering poison message %s from %s: %s",
                message.message_id,
                consumer,
                exc,
                extra={"order_id": message.correlation_id},
            )
            metrics.HANDLED.labels(name, "poison").inc()
            await message.reject(requeue=False)
            return

        started = time.perf_counter()
        for attempt in range(1, self._max_attempts + 1):
            try:
                handled = await self._handle_once(event, handler, consumer, message)
            except asyncio.CancelledError:
                raise
            except PoisonMessage as exc:
                log.error(
                    "%s: dead-lettering %s %s: %s",
                    consumer,
                    name,
                    event.event_id,
                    exc,
                    extra={"order_id": str(event.order_id)},
                )
                metrics.HANDLED.labels(name, "poison").inc()
                await message.reject(requeue=False)
                return
            except Exception:
                if attempt == self._max_attempts:
                    log.exception(
                        "%s: %s %s failed %d times, dead-lettering it",
                        consumer,
                        name,
                        event.event_id,
                        attempt,
                        extra={"order_id": str(event.order_id)},
                    )
                    metrics.HANDLED.labels(name, "dead_lettered").inc()
                    await message.reject(requeue=False)
                    return
                delay = min(self._backoff_base_s * 2 ** (attempt - 1), self._backoff_cap_s)
                log.warning(
                    "%s: %s %s failed (attempt %d), retrying in %.2fs",
                    consumer,
                    name,
                    event.event_id,
                    attempt,
                    delay,
                    exc_info=True,
                    extra={"order_id": str(event.order_id)},
                )
                metrics.HANDLED.labels(name, "retried").inc()
                await asyncio.sleep(delay)
                continue
            metrics.HANDLED.labels(name, "handled" if handled else "duplicate").inc()
            metrics.HANDLER_SECONDS.labels(name).observe(time.perf_counter() - started)
            break
        crash_point("consumer.after_commit")
        await message.ack()

    async def _handle_once(
        self, event: Event, handler: Handler, consumer: str, message: AbstractIncomingMessage
    ) -> bool:
        async with self._slots:
            return await deliver(
                self._sessionmaker,
                consumer,
                event,
                handler,
                emitted_by=message.app_id,
                traceparent=_header(message, "traceparent"),
            )


async def deliver(
    sessionmaker: async_sessionmaker[AsyncSession],
    consumer: str,
    event: Event,
    handler: Handler,
    *,
    emitted_by: str | None = None,
    traceparent: str | None = None,
) -> bool:
    """Handle one event in one transaction: inbox claim, handler, outbox rows. False if a duplicate.

    The consumer calls this for every delivery; tests call it to deliver events in any order.
    """
    token = current_cause.set(Cause(event.event_id, traceparent))
    try:
        async with sessionmaker() as session, session.begin():
            if not await inbox.claim(session, consumer, event.event_id, event, emitted_by):
                return False
            await handler(session, event)
            crash_point("consumer.before_commit")
        return True
    finally:
        current_cause.reset(token)


def _header(message: AbstractIncomingMessage, name: str) -> str | None:
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) else None
