"""Raw baselines on the benchmark's servers, and the relay draining a backlog, for comparison.

- confirmed publish (`RawQueue.publish`): aio-pika, persistent messages shaped like the relay's,
  into a quorum queue like the services' ones, publisher confirms, `batch` messages published and
  then their confirms awaited together;
- consume and ack (`RawQueue.consume`): the same messages, consumed with the services' prefetch
  and acked one by one;
- a broker hop (`RawQueue.hop_ms`): one message at a time, from publish to delivery;
- insert and commit: one row per transaction on PostgreSQL, on one connection and on several;
- relay drain: `outbox.relay.Relay` itself, started on a table of staged rows, publishing to the
  same kind of queue: how fast it empties the backlog, next to the raw confirmed-publish rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aio_pika
import psycopg
import rich.progress
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from contracts import Item, OrderCreated, encode, event_name
from harness.databases import migrate
from harness.system import System
from outbox import metrics
from outbox.relay import Relay, to_message
from outbox.tables import OutboxMessage
from outbox.writer import child_traceparent
from tools.bench.world import CpuMeter
from tools.postgres import libpq

EXCHANGE = "bench.baseline"
#: Messages sent one at a time, per round, to time a broker hop.
HOP_SAMPLES = 100
ROUTING_KEY = "OrderCreated"

Progress = Callable[[int], None]


def sample_event() -> OrderCreated:
    return OrderCreated(
        order_id=uuid.uuid4(),
        customer_id="customer-0042",
        items=(Item(sku="sku-007", quantity=1), Item(sku="sku-019", quantity=2)),
    )


def sample_row(event: OrderCreated) -> OutboxMessage:
    return OutboxMessage(
        id=0,
        event_id=event.event_id,
        event_type=event_name(event),
        order_id=event.order_id,
        payload=encode(event),
        causation_id=None,
        traceparent=child_traceparent(None),
        created_at=datetime.now(UTC),
    )


async def _queue(channel: AbstractChannel, name: str) -> AbstractExchange:
    """A topic exchange and a quorum queue bound to it, declared like the services' ones."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(
        name, durable=True, arguments={"x-queue-type": "quorum", "x-overflow": "reject-publish"}
    )
    await queue.bind(exchange, routing_key=ROUTING_KEY)
    return exchange


class RawQueue:
    """A connection, and a quorum queue of its own to publish to and consume from."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection) -> None:
        self.connection = connection
        self.name = f"bench.baseline.{uuid.uuid4().hex[:8]}"

    @classmethod
    async def open(cls, amqp_url: str) -> RawQueue:
        return cls(await aio_pika.connect(amqp_url))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            channel = await self.connection.channel()
            await channel.queue_delete(self.name)
        await self.connection.close()

    async def publish(
        self, messages: int, batch: int, progress: Progress = lambda n: None
    ) -> float:
        """Confirmed publishes per second: `batch` messages published, their confirms awaited
        together. Building each message is part of publishing it, as it is for the relay."""
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await _queue(channel, self.name)
        rows = [sample_row(sample_event()) for _ in range(messages)]
        started = time.perf_counter()
        for first in range(0, messages, batch):
            chunk = rows[first : first + batch]
            await asyncio.gather(
                *(exchange.publish(to_message(row, "bench"), ROUTING_KEY) for row in chunk)
            )
            progress(len(chunk))
        elapsed = time.perf_counter() - started
        await channel.close()
        return messages / elapsed

    async def hop_ms(self, samples: int, prefetch: int, spacing_s: float = 0.01) -> list[float]:
        """One message at a time: ms from `publish` to its delivery to a consumer of the queue
        (persistent, quorum queue, publisher confirms on), as one hop of a quiet saga takes."""
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await _queue(channel, self.name)
        consumer = await self.connection.channel()
        await consumer.set_qos(prefetch_count=prefetch)
        queue = await consumer.get_queue(self.name)
        arrivals: asyncio.Queue[float] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            arrivals.put_nowait(time.perf_counter())
            await message.ack()

        tag = await queue.consume(on_message)
        hops = []
        for _ in range(samples):
            row = sample_row(sample_event())
            sent = time.perf_counter()
            await exchange.publish(to_message(row, "bench"), ROUTING_KEY)
            hops.append((await asyncio.wait_for(arrivals.get(), timeout=30) - sent) * 1000)
            await asyncio.sleep(spacing_s)
        await queue.cancel(tag)
        await consumer.close()
        await channel.close()
        return hops

    async def consume(
        self, messages: int, prefetch: int, progress: Progress = lambda n: None
    ) -> float:
        """Consume-and-ack per second of `messages` messages, with the services' prefetch."""
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(self.name)
        done = asyncio.Event()
        received = 0

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal received
            await message.ack()
            received += 1
            if received % 100 == 0:
                progress(100)
            if received == messages:
                done.set()

        started = time.perf_counter()
        tag = await queue.consume(on_message)
        await asyncio.wait_for(done.wait(), timeout=300)
        elapsed = time.perf_counter() - started
        await queue.cancel(tag)
        await channel.close()
        return messages / elapsed


async def insert_and_commit(
    database_url: str, seconds: float, connections: int
) -> tuple[float, int]:
    """Single-row insert-and-commit transactions per second over `connections` connections, and
    how many there were."""
    dsn = libpq(database_url)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(
            "CREATE TABLE IF NOT EXISTS bench_commit"
            " (id bigserial PRIMARY KEY, payload bytea NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    payload = encode(sample_event())
    deadline = time.perf_counter() + seconds
    counts = [0] * connections

    async def worker(index: int) -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as connection:
            while time.perf_counter() < deadline:
                await connection.execute(
                    "INSERT INTO bench_commit (payload) VALUES (%s)", [payload]
                )
                await connection.commit()
                counts[index] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    return sum(counts) / (time.perf_counter() - started), sum(counts)


async def stage_backlog(database_url: str, rows: int) -> None:
    """`rows` unpublished outbox rows, as services stage them, with no relay running."""
    await migrate("order_service", database_url)  # any service's outbox will do
    engine = create_async_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as connection:
            for first in range(0, rows, 1000):
                values = []
                for _ in range(min(1000, rows - first)):
                    event = sample_event()
                    values.append(
                        {
                            "event_id": event.event_id,
                            "event_type": event_name(event),
                            "order_id": event.order_id,
                            "payload": encode(event),
                            "traceparent": child_traceparent(None),
                        }
                    )
                await connection.execute(insert(OutboxMessage), values)
    finally:
        await engine.dispose()


async def relay_drain(
    database_url: str,
    amqp_url: str,
    rows: int,
    batch_size: int,
    progress: Progress = lambda n: None,
) -> float:
    """Start a relay on a staged backlog of `rows` rows; rows per second until all are marked."""
    engine = create_async_engine(database_url, pool_size=4)
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue_name = f"bench.drain.{uuid.uuid4().hex[:8]}"
        exchange = await _queue(channel, queue_name)
        relay = Relay("bench", sessionmaker, batch_size=batch_size, sweep_interval_s=0.05)

        async def backlog() -> int:
            async with sessionmaker() as session:
                count = await session.scalar(
                    select(func.count()).where(OutboxMessage.published_at.is_(None))
                )
            return int(count or 0)

        # Progress from the relay's own counter of rows marked (in this process): polling the
        # table meanwhile would load the database the relay is draining, and time it coarsely.
        published_before = _published()
        started = time.perf_counter()
        task = asyncio.create_task(relay.run(exchange))
        done = 0
        while done < rows:
            await asyncio.sleep(0.005)
            if task.done():
                task.result()  # raises what stopped the relay
            now_done = int(_published() - published_before)
            progress(now_done - done)
            done = now_done
        elapsed = time.perf_counter() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        left = await backlog()
        assert left == 0, f"the relay counted {done} rows published, {left} left in the table"
        await channel.queue_delete(queue_name)
        return rows / elapsed
    finally:
        await connection.close()
        await engine.dispose()


async def measure(
    world: System,
    meter: CpuMeter,
    progress: rich.progress.Progress,
    *,
    messages: int,
    drain_rows: int,
    commit_s: float,
    commit_connections: int,
    batch: int,
    prefetch: int,
) -> dict[str, Any]:
    """The servers' raw speed, and the relay's drain, each measured twice, interleaved (the
    machine may be shared: the best of two is the fairest reading of each), with the CPU each
    operation cost the servers and this process."""
    publish: list[float] = []
    consume: list[float] = []
    drain: list[float] = []
    hops: list[float] = []
    cpu: dict[str, dict[str, float]] = {}
    drain_db = world.database("bench_drain")
    for round_ in (1, 2):
        bar = progress.add_task(
            f"baseline {round_}/2: confirmed publish, consume and ack",
            total=2 * messages,
        )
        raw = await RawQueue.open(world.vhost.amqp_url)
        try:
            before = meter.sample()
            publish.append(await raw.publish(messages, batch, partial(progress.advance, bar)))
            middle = meter.sample()
            consume.append(
                await raw.consume(
                    messages,
                    prefetch,
                    partial(progress.advance, bar),
                )
            )
            cpu["publish"] = _cpu_ms_per_op(before, middle, messages)
            cpu["consume_ack"] = _cpu_ms_per_op(middle, meter.sample(), messages)
            hops.extend(await raw.hop_ms(HOP_SAMPLES, prefetch))
        finally:
            await raw.close()
        bar = progress.add_task(
            f"baseline {round_}/2: relay draining a staged backlog", total=drain_rows
        )
        await stage_backlog(drain_db, drain_rows)
        before = meter.sample()
        drain.append(
            await relay_drain(
                drain_db,
                world.vhost.amqp_url,
                drain_rows,
                batch_size=batch,
                progress=partial(progress.advance, bar),
            )
        )
        cpu["relay_drain"] = _cpu_ms_per_op(before, meter.sample(), drain_rows)
    commit_db = world.database("bench_commit")
    bar = progress.add_task("baseline: insert and commit", total=None)
    commit_serial, _ = await insert_and_commit(commit_db, commit_s, 1)
    before = meter.sample()
    commit, commits = await insert_and_commit(commit_db, commit_s, commit_connections)
    cpu["insert_and_commit"] = _cpu_ms_per_op(before, meter.sample(), commits)
    progress.update(bar, visible=False)
    return {
        "publish_per_s": round(max(publish), 1),
        "consume_ack_per_s": round(max(consume), 1),
        "commit_per_s": round(commit, 1),
        "commit_per_s_one_connection": round(commit_serial, 1),
        # Latency, one at a time on a quiet machine: what a hop of a saga cannot go below.
        "broker_hop_ms": {
            "p50": round(statistics.median(hops), 2),
            "p90": round(statistics.quantiles(hops, n=10)[-1], 2),
            "samples": len(hops),
        },
        "commit_ms_one_connection": round(1000 / commit_serial, 2),
        "commit_connections": commit_connections,
        "rounds": {
            "publish_per_s": [round(x, 1) for x in publish],
            "consume_ack_per_s": [round(x, 1) for x in consume],
            "relay_drain_per_s": [round(x, 1) for x in drain],
        },
        "cpu_ms_per_op": cpu,
        "relay_drain": {
            "rows": drain_rows,
            "batch_size": batch,
            "per_s": round(max(drain), 1),
            "ratio_to_publish": round(max(drain) / max(publish), 3),
        },
    }


def _published() -> float:
    """Rows the relays of this process marked published so far (`saga_outbox_published_total`).
    From the counter itself: `REGISTRY.get_sample_value` would collect every metric of the
    process (the process collector reads /proc) each time, on the relay's own CPU."""
    [sample] = [s for s in metrics.PUBLISHED.collect()[0].samples if s.name.endswith("_total")]
    return sample.value


def _cpu_ms_per_op(before: dict[str, float], after: dict[str, float], ops: int) -> dict[str, float]:
    """CPU ms per operation of the servers and this process (the services idle meanwhile)."""
    result: dict[str, float] = {
        name: round((after[name] - before[name]) * 1000 / ops, 4)
        for name in ("bench (load + consumer)", "postgresql", "rabbitmq")
        if name in after and name in before and ops
    }
    result["total"] = round(sum(result.values()), 4)
    return result
