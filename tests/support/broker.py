"""The test's vhost over AMQP (`Broker`): publish like a service would, tap what services publish.

Each test has a vhost of its own (`harness.rabbitmq.Vhost`, the `vhost` fixture). The management
API's message counts are statistics refreshed every few seconds: wait on messages themselves
(`Vhost.get_messages`, `Broker.tap`, `Broker.queue_state`) when timing matters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from contracts import SCHEMA_VERSION, Event, encode, event_name
from harness.rabbitmq import Vhost
from harness.wait import eventually
from outbox.topology import EXCHANGE, declare_exchange
from outbox.writer import child_traceparent


def message_for(
    event: Event,
    *,
    app_id: str = "test",
    causation_id: uuid.UUID | None = None,
    traceparent: str | None = None,
    body: bytes | None = None,
    type: str | None = None,
    headers: dict[str, Any] | None = None,
) -> aio_pika.Message:
    """The message a service would publish for `event` (docs/spec.md §3); keyword arguments spoil it."""
    default_headers: dict[str, Any] = {
        "traceparent": traceparent or child_traceparent(None),
        "schema_version": SCHEMA_VERSION,
    }
    if causation_id is not None:
        default_headers["causation_id"] = str(causation_id)
    return aio_pika.Message(
        encode(event) if body is None else body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(event.event_id),
        type=event_name(event) if type is None else type,
        correlation_id=str(event.order_id),
        app_id=app_id,
        timestamp=event.occurred_at,
        headers={**default_headers, **(headers or {})},
    )


@dataclass
class Tap:
    """A private queue bound to some routing keys: every message published with them, in order."""

    messages: list[AbstractIncomingMessage] = field(default_factory=list)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[AbstractIncomingMessage]:
        """At least `count` messages have arrived; returns all of them."""
        await eventually(lambda: len(self.messages) >= count, timeout=timeout)
        return self.messages

    def with_id(self, message_id: object) -> list[AbstractIncomingMessage]:
        return [m for m in self.messages if m.message_id == str(message_id)]


@dataclass(frozen=True)
class QueueState:
    messages: int  # ready, not counting those delivered and not yet acked
    consumers: int


class Broker:
    """An AMQP client in the test's vhost: publish like a service would, tap what services publish."""

    def __init__(self, vhost: Vhost, connection: AbstractConnection) -> None:
        self.vhost = vhost
        self.connection = connection
        self._channel: AbstractChannel | None = None

    @classmethod
    async def connect(cls, vhost: Vhost) -> Broker:
        connection = await aio_pika.connect(
            vhost.amqp_url, client_properties={"connection_name": "test-broker"}
        )
        return cls(vhost, connection)

    async def close(self) -> None:
        await self.connection.close()

    async def channel(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        return self._channel

    async def publish(self, message: aio_pika.Message, routing_key: str | None = None) -> None:
        """Publish to the `events` exchange (declared if need be) and await the broker's confirm.

        Raises if no queue is bound to the routing key (default: the message's type), so a test
        cannot publish before the service it talks to has declared its queues."""
        channel = await self.channel()
        exchange = await declare_exchange(channel, EXCHANGE)
        await exchange.publish(message, routing_key or message.type or "")

    async def publish_event(self, event: Event, **spoil: Any) -> aio_pika.Message:
        message = message_for(event, **spoil)
        await self.publish(message, event_name(event))
        return message

    async def tap(self, *routing_keys: str) -> Tap:
        """Start collecting every message published on `events` with one of `routing_keys`."""
        channel = await self.connection.channel()
        exchange = await declare_exchange(channel, EXCHANGE)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in routing_keys:
            await queue.bind(exchange, routing_key=key)
        tap = Tap()

        async def collect(message: AbstractIncomingMessage) -> None:
            tap.messages.append(message)

        await queue.consume(collect, no_ack=True)
        return tap

    async def queue_state(self, name: str) -> QueueState | None:
        """Ready messages and consumers of a queue, as the broker counts them now; None if absent."""
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return None
        finally:
            if not channel.is_closed:
                await channel.close()
        result = queue.declaration_result
        return QueueState(messages=result.message_count or 0, consumers=result.consumer_count or 0)

    async def wait_consumed(self, queues: Iterable[str], timeout: float = 10.0) -> None:
        """Each queue exists and has a consumer."""
        queues = list(queues)

        async def all_consumed() -> bool:
            for name in queues:
                state = await self.queue_state(name)
                if state is None or state.consumers == 0:
                    return False
            return True

        await eventually(all_consumed, timeout=timeout)
