"""`make dlq` / `make redrive`: list the dead-lettered messages, and re-drive them to the saga.

RabbitMQ records in each dead-lettered message's `x-death` header why it died (`rejected`: poison,
or a handler that kept failing; `delivery_limit`: a message that crashed its consumer too often),
from which queue, and how many times. A re-drive publishes the message again to the `events`
exchange with its routing key and all its properties — the same message id, type, correlation id
and headers, its death record included — so consumers that handled it already skip it like any
redelivery. Each message is acked from its dead-letter queue only after the broker confirmed the
new copy: a crash in between leaves it in the queue, to be re-driven again, harmlessly.

The dead-letter queues of a vhost are found with the management API; messages travel over AMQP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage
from rich import box
from rich.table import Table

from harness.rabbitmq import ManagementApi
from outbox.topology import EXCHANGE
from tools import trace

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQ_API = os.environ.get("RABBITMQ_API", "http://guest:guest@127.0.0.1:15672")

#: Set by a quorum queue on each delivery; not part of the message. (`x-death` stays: a re-driven
#: message that dies again has its deaths counted on, so `make dlq` tells how often it came back.)
DELIVERY_HEADERS = ("x-delivery-count",)


@dataclass(frozen=True)
class DeadLetter:
    dlq: str  # the dead-letter queue holding it
    message_id: str | None
    type: str | None
    correlation_id: str | None  # the order id
    app_id: str | None
    reason: str  # of the last death: rejected, delivery_limit, expired, maxlen
    deaths: int  # how many times it was dead-lettered, all queues together
    queue: str  # the queue it died in last
    routing_key: str | None  # the key it was published with
    died_at: datetime | None
    body: bytes


def vhost_of(amqp_url: str) -> str:
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def dead_letter(dlq: str, message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    deaths = [d for d in headers.get("x-death") or [] if isinstance(d, dict)]
    last = deaths[0] if deaths else {}  # the broker keeps the most recent death first
    routing_keys = [_text(k) for k in last.get("routing-keys") or []]
    died_at = last.get("time")
    return DeadLetter(
        dlq=dlq,
        message_id=message.message_id,
        type=message.type,
        correlation_id=message.correlation_id,
        app_id=message.app_id,
        reason=_text(last.get("reason", "?")),
        deaths=sum(int(d.get("count", 1)) for d in deaths),
        queue=_text(last.get("queue", "?")),
        routing_key=routing_keys[0] if routing_keys else message.type,
        died_at=died_at if isinstance(died_at, datetime) else None,
        body=message.body,
    )


async def dead_letter_queues(
    amqp_url: str = AMQP_URL, api: str = RABBITMQ_API, queue: str | None = None
) -> list[str]:
    """The vhost's dead-letter queues (`….dlq`), or just `queue` if given."""
    if queue is not None:
        return [queue]
    found = await asyncio.to_thread(ManagementApi(api).queues, vhost_of(amqp_url), ["name"])
    return sorted(q["name"] for q in found if q["name"].endswith(".dlq"))


async def list_dead_letters(
    amqp_url: str = AMQP_URL, api: str = RABBITMQ_API, queue: str | None = None
) -> list[DeadLetter]:
    """Every message in the dead-letter queues, left where it is (read, then returned unacked)."""
    found = []
    connection = await aio_pika.connect(
        amqp_url, client_properties={"connection_name": "tools.dlq"}
    )
    async with connection:
        for dlq in await dead_letter_queues(amqp_url, api, queue):
            # Messages taken unacked come back to the queue when the channel closes.
            async with connection.channel() as channel:
                declared = await channel.declare_queue(dlq, passive=True)
                for _ in range(declared.declaration_result.message_count or 0):
                    message = await declared.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    found.append(dead_letter(dlq, message))
    return found


def redriven(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The message as it was published: same body, properties and headers (with its x-death)."""
    headers = {
        name: value
        for name, value in (message.headers or {}).items()
        if name not in DELIVERY_HEADERS
    }
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


async def redrive(
    amqp_url: str = AMQP_URL, api: str = RABBITMQ_API, queue: str | None = None
) -> list[DeadLetter]:
    """Publish every dead-lettered message again to `events`; returns those re-driven.

    Only the messages present when a queue is opened are taken, so poison that dies again at once
    is not re-driven in a loop. A message that cannot be published (no queue bound to its routing
    key any more) is returned to its dead-letter queue, and the re-drive stops with the error.
    """
    done = []
    connection = await aio_pika.connect(
        amqp_url, client_properties={"connection_name": "tools.dlq"}
    )
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(EXCHANGE)
        for dlq in await dead_letter_queues(amqp_url, api, queue):
            declared = await channel.declare_queue(dlq, passive=True)
            for _ in range(declared.declaration_result.message_count or 0):
                message = await declared.get(no_ack=False, fail=False)
                if message is None:
                    break
                letter = dead_letter(dlq, message)
                try:
                    await exchange.publish(redriven(message), letter.routing_key or "")
                except BaseException:
                    await message.nack(requeue=True)
                    raise
                await message.ack()
                done.append(letter)
    return done


def render(letters: list[DeadLetter], title: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("dead-letter queue / why", no_wrap=True, min_width=36)
    table.add_column("message id / order id", no_wrap=True, min_width=36)
    table.add_column("type / body", overflow="ellipsis", no_wrap=True, max_width=40)
    for letter in letters:
        why = f"[red]{letter.reason}[/], {letter.deaths} death{'s' if letter.deaths != 1 else ''}"
        if letter.dlq != f"{letter.queue}.dlq":
            why += f" in {letter.queue}"
        table.add_row(
            f"{letter.dlq}\n{why}",
            f"{letter.message_id or '-'}\n{letter.correlation_id or '-'}",
            f"{letter.type or '-'}\n{letter.body.decode(errors='replace')}",
            end_section=True,
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.dlq", description="List or re-drive dead-lettered messages."
    )
    parser.add_argument("command", choices=["list", "redrive"])
    parser.add_argument("--queue", help="one dead-letter queue (default: every `.dlq` queue)")
    parser.add_argument(
        "--amqp-url", default=AMQP_URL, help="the broker and vhost (default: $AMQP_URL or local)"
    )
    parser.add_argument(
        "--api",
        default=RABBITMQ_API,
        help="RabbitMQ management API (default: $RABBITMQ_API or local)",
    )
    args = parser.parse_args()
    console = trace.console()
    try:
        if args.command == "list":
            letters = asyncio.run(list_dead_letters(args.amqp_url, args.api, args.queue))
            if not letters:
                console.print("no dead-lettered messages")
                return
            console.print(render(letters, f"{len(letters)} dead-lettered messages"))
            console.print("re-drive them to the saga with `make redrive` (QUEUE=… for one queue)")
        else:
            letters = asyncio.run(redrive(args.amqp_url, args.api, args.queue))
            if not letters:
                console.print("nothing to re-drive")
                return
            console.print(render(letters, f"re-drove {len(letters)} messages to `{EXCHANGE}`"))
            console.print(
                "each went back with its message id: consumers that handled it skip it;"
                " poison dies again (its deaths count goes up)"
            )
    except (OSError, httpx.HTTPError, aio_pika.exceptions.AMQPException) as exc:
        sys.exit(f"{args.command} failed: {exc!r}")


if __name__ == "__main__":
    main()
