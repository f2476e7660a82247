"""The shapes of load a phase puts on the system: an open loop on a fixed schedule, and a closed
loop of customers each waiting for the end of their order before placing the next (one customer:
the sequential phase); and what makes a step of the search for the sustainable rate pass."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from tools.bench.load import Load, Phase


@dataclass(frozen=True)
class Sustained:
    """What a step must do to count as sustained: complete at least `completed` of the orders
    offered, with a p99 latency of at most `p99_ms`."""

    completed: float = 0.98
    p99_ms: float = 250.0

    def verdict(self, phase: Phase, offered: int) -> dict[str, object]:
        completed = sum(1 for s in phase.samples if s.outcome == "OrderCompleted")
        latencies = sorted(s.latency_ms for s in phase.samples)
        p99 = latencies[max(0, -(-99 * len(latencies) // 100) - 1)] if latencies else None
        ratio = completed / offered if offered else 0.0
        return {
            "offered": offered,
            "completed": completed,
            "completed_ratio": round(ratio, 4),
            "p99_ms": round(p99, 2) if p99 is not None else None,
            "passed": phase.aborted is None
            and ratio >= self.completed
            and p99 is not None
            and p99 <= self.p99_ms,
        }

    def certain_failure(self, phase: Phase, offered: int) -> str | None:
        """Why the step cannot pass any more, however the rest of it goes, or None.

        Slow: sagas that took longer than `p99_ms`, or are open for longer. Lost: sagas that
        failed or were not sent. More than 1% slow of all offered makes the p99 fail (there are
        at most `offered` samples); more than 2% lost fails completion; and beyond 3% slow or lost
        together, one of the two fails (an open saga is either slow or lost in the end)."""
        now = time.perf_counter()
        slow_done = sum(1 for s in phase.samples if s.latency_ms > self.p99_ms)
        slow_open = sum(1 for t in phase.open_since.values() if (now - t) * 1000 > self.p99_ms)
        lost = sum(phase.errors.values())
        allowed_slow = (1 - 0.99) * offered
        allowed_lost = (1 - self.completed) * offered
        if slow_done > allowed_slow:
            return f"{slow_done} sagas over {self.p99_ms:g} ms: the p99 cannot be met"
        if lost > allowed_lost:
            return f"{lost} sagas failed or not sent: completion cannot be met"
        if slow_done + slow_open + lost > allowed_slow + allowed_lost:
            return f"{slow_done + slow_open + lost} sagas slow or lost: one target cannot be met"
        return None


async def watch(
    phase: Phase, sustained: Sustained, offered: int, stop: asyncio.Event, every_s: float = 0.25
) -> None:
    """Set `stop` (and why, in `phase.aborted`) as soon as the step has certainly failed."""
    while not stop.is_set():
        await asyncio.sleep(every_s)
        why = sustained.certain_failure(phase, offered)
        if why is not None:
            phase.aborted = why
            stop.set()


async def open_loop(
    load: Load,
    phase: Phase,
    rate: float,
    duration: float,
    max_in_flight: int,
    advance: Callable[[], None],
    stop: asyncio.Event | None = None,
) -> None:
    """Send at `rate` orders/s on a fixed schedule for `duration` seconds, whatever the answers;
    at most `max_in_flight` sagas open at once (when the system falls that far behind, sending
    waits: the lateness and the orders not sent show it). Once `stop` is set, no more is sent;
    the sagas open are still followed to their end."""
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
        if stop is not None and stop.is_set():
            break
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
