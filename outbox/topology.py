"""Broker topology: one topic exchange, and per consumed event a quorum queue with its dead-letter queue."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, FieldValue

from contracts import Event, event_name
from outbox.manifest import Manifest, dead_letter_queue

EXCHANGE = "events"

#: Crashed consumers return their unacked messages, and each return counts as a delivery. The limit
#: is far above any plausible crash storm so that only a message that kills its consumer over and
#: over is dead-lettered this way; poison and exhausted retries are rejected explicitly instead.
DELIVERY_LIMIT = 1000


async def declare_exchange(channel: AbstractChannel, name: str = EXCHANGE) -> AbstractExchange:
    return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


def dead_letter_exchange(service: str) -> str:
    """The service's own exchange for dead letters. Not the default exchange: a user who may
    write to that can put messages into any queue, past the topic permissions on `events`."""
    return f"{service}.dead-letters"


#: The arguments of every dead-letter queue.
DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, FieldValue] = {"x-queue-type": "quorum"}


def queue_arguments(service: str, queue: str) -> dict[str, FieldValue]:
    """The arguments of one of `service`'s work queues: quorum, dead-lettering to `<queue>.dlq`."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": dead_letter_exchange(service),
        "x-dead-letter-routing-key": dead_letter_queue(queue),
        # Quorum queues can dead-letter at-least-once, which needs reject-publish overflow.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def declare_queues(
    channel: AbstractChannel, manifest: Manifest, exchange: AbstractExchange
) -> dict[type[Event], AbstractQueue]:
    """Declare (idempotently) each consumed event's queue, its binding and its dead-letter queue."""
    queues: dict[type[Event], AbstractQueue] = {}
    dead_letters = await channel.declare_exchange(
        dead_letter_exchange(manifest.service), aio_pika.ExchangeType.DIRECT, durable=True
    )
    for event in manifest.consumes:
        name = manifest.queue_for(event)
        dead = await channel.declare_queue(
            dead_letter_queue(name), durable=True, arguments=dict(DEAD_LETTER_QUEUE_ARGUMENTS)
        )
        await dead.bind(dead_letters, routing_key=dead_letter_queue(name))
        queue = await channel.declare_queue(
            name, durable=True, arguments=queue_arguments(manifest.service, name)
        )
        await queue.bind(exchange, routing_key=event_name(event))
        queues[event] = queue
    return queues
