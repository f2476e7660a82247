"""The shapes of load a phase puts on the system: an open loop on a fixed schedule, and a closed
loop of customers each waiting for the end of their order before placing the next."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from tools.bench.load import Load, Phase


async def open_loop(
    load: Load,
    phase: Phase,
    rate: float,
    duration: float,
    max_in_flight: int,
    advance: Callable[[], None],
) -> None:
    """Send at `rate` orders/s on a fixed schedule for `duration` seconds, whatever the answers;
    at most `max_in_flight` sagas open at once (when the system falls that far behind, sending
    waits: the lateness and the orders not sent show it)."""
    total = int(rate * duration)
    in_flight = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        try:
            await load.saga(phase)
        finally:
            in_flight.release()
            advance()

    phase.started = time.perf_counter()
    deadline = phase.started + duration
    for i in range(total):
        due = phase.started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(in_flight.acquire(), deadline - time.perf_counter())
        if time.perf_counter() >= deadline:
            phase.errors["not sent: too many sagas in flight"] = total - i
            break
        phase.lateness_ms.append(max(0.0, time.perf_counter() - due) * 1000)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    phase.sending_ended = time.perf_counter()
    if tasks:
        await asyncio.gather(*tasks)
    phase.ended = time.perf_counter()


async def closed_loop(
    load: Load, phase: Phase, concurrency: int, duration: float, advance: Callable[[], None]
) -> None:
    """`concurrency` customers, each placing an order and waiting for its end, for `duration` s."""
    phase.started = time.perf_counter()
    deadline = phase.started + duration

    async def customer() -> None:
        while time.perf_counter() < deadline:
            if await load.saga(phase) is None:
                await asyncio.sleep(0.1)  # do not spin on errors
            advance()

    await asyncio.gather(*(customer() for _ in range(concurrency)))
    phase.sending_ended = deadline
    phase.ended = time.perf_counter()
