"""Placing one saga and following it to its end: the benchmark's consumer of terminal events
(`Observer`), what one saga took (`Sample`), and what one phase of load did (`Phase`)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
import msgspec
from aio_pika.abc import AbstractIncomingMessage

from outbox.topology import declare_exchange

TERMINAL_EVENTS = ("OrderCompleted", "OrderCancelled")


class Observer:
    """The benchmark's consumer: when each order's terminal event arrived, and which it was."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Future[tuple[float, float, str]]] = {}
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def start(self, amqp_url: str) -> None:
        self._connection = await aio_pika.connect(
            amqp_url, client_properties={"connection_name": "bench-observer"}
        )
        channel = await self._connection.channel()
        exchange = await declare_exchange(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for event in TERMINAL_EVENTS:
            await queue.bind(exchange, routing_key=event)
        await queue.consume(self._arrived, no_ack=True)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    def _future(self, order_id: str) -> asyncio.Future[tuple[float, float, str]]:
        future = self._waiters.get(order_id)
        if future is None:
            future = self._waiters[order_id] = asyncio.get_running_loop().create_future()
        return future

    async def _arrived(self, message: AbstractIncomingMessage) -> None:
        future = self._future(message.correlation_id or "")
        if not future.done():
            future.set_result((time.perf_counter(), time.time(), message.type or ""))

    async def wait(self, order_id: str, timeout: float) -> tuple[float, float, str]:
        """When the order's terminal event arrived (perf_counter and epoch seconds), and which."""
        try:
            return await asyncio.wait_for(self._future(order_id), timeout)
        finally:
            self._waiters.pop(order_id, None)


@dataclass(frozen=True)
class Sample:
    order_id: str
    sent: float  # perf_counter when POST /orders was sent
    answered: float  # its 201 arrived
    ended: float  # its terminal event arrived
    outcome: str  # OrderCompleted or OrderCancelled
    sent_epoch: float  # the same instants, in epoch seconds, to compare with the databases
    ended_epoch: float

    @property
    def latency_ms(self) -> float:
        return (self.ended - self.sent) * 1000


@dataclass
class Phase:
    """What one phase of load did: its samples, its failures, its window, its CPU."""

    name: str
    params: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    order_ids: list[str] = field(default_factory=list)
    started: float = 0.0  # perf_counter
    sending_ended: float = 0.0
    ended: float = 0.0
    wall_started: datetime = field(default_factory=lambda: datetime.now(UTC))
    wall_ended: datetime = field(default_factory=lambda: datetime.now(UTC))
    lateness_ms: list[float] = field(default_factory=list)
    cpu_before: dict[str, float] = field(default_factory=dict)
    cpu_after: dict[str, float] = field(default_factory=dict)
    sessions_before: dict[str, int] = field(default_factory=dict)
    sessions_after: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Load:
    """Places orders for seeded customers and skus, and follows each to its terminal event."""

    def __init__(
        self,
        order_url: str,
        observer: Observer,
        skus: list[str],
        customers: list[str],
        saga_timeout_s: float,
        seed: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._url = f"{order_url}/orders"
        self._observer = observer
        self._skus = skus
        self._customers = customers
        self._timeout = saga_timeout_s
        self._rng = random.Random(seed)
        # Idle connections are dropped before uvicorn's 5 s keep-alive does, so that no request
        # is sent on a connection the server is closing.
        # `headers`: the Authorization of an operator, minted once (a run is shorter than its TTL).
        self.http = httpx.AsyncClient(
            timeout=30,
            headers=headers,
            limits=httpx.Limits(
                max_connections=256, max_keepalive_connections=256, keepalive_expiry=2.0
            ),
        )

    def _body(self) -> bytes:
        lines = self._rng.choice((1, 1, 2))
        skus = self._rng.sample(self._skus, lines)
        return msgspec.json.encode(
            {
                "customer_id": self._rng.choice(self._customers),
                "items": [{"sku": sku, "quantity": self._rng.randint(1, 3)} for sku in skus],
            }
        )

    async def saga(self, phase: Phase) -> Sample | None:
        body = self._body()
        sent, sent_epoch = time.perf_counter(), time.time()
        try:
            response = await self.http.post(
                self._url, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            phase.error(f"http {type(exc).__name__}")
            return None
        answered = time.perf_counter()
        if response.status_code != 201:
            phase.error(f"http {response.status_code}")
            return None
        order_id = msgspec.json.decode(response.content)["order_id"]
        phase.order_ids.append(order_id)
        try:
            ended, ended_epoch, outcome = await self._observer.wait(order_id, self._timeout)
        except TimeoutError:
            phase.error("no terminal event in time")
            return None
        sample = Sample(order_id, sent, answered, ended, outcome, sent_epoch, ended_epoch)
        phase.samples.append(sample)
        return sample
