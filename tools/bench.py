"""`make bench`: the saga under load, end to end, beside the raw speed of the servers it runs on.

In its own world (a fresh vhost, fresh databases, the four services on free ports; see
`tools.bench_world`) it runs, in order:

1. warmup: a few seconds of orders, not counted;
2. low rate: an open loop at `--low-rate` orders/s (latency of a quiet system);
3. throughput: an open loop at `--rate` orders/s for `--duration` seconds (completed sagas/s);
4. closed loop: `--concurrency` customers, each placing an order and waiting for its end;
5. raw baselines: confirmed publishes and consume-and-ack on RabbitMQ, insert-and-commit on
   PostgreSQL, and the outbox relay draining a staged backlog (`tools.bench_baselines`);
6. the invariant check of every saga placed.

A saga's latency runs from sending `POST /orders` to the arrival of its terminal event
(OrderCompleted or OrderCancelled) at the benchmark's own queue, bound to both. Outbox dwell is
an outbox row's insert to its mark after the broker's confirm, read from the services' outbox
tables. CPU is read from each process (and from the PostgreSQL and RabbitMQ servers as a whole).
The result is written as JSON; its path is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import msgspec
import psycopg
import uvloop
from aio_pika.abc import AbstractIncomingMessage
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import make_url

from outbox.topology import declare_exchange
from tests.support.system import SERVICES
from tools import bench_baselines
from tools.bench_hops import HOPS, hop_times
from tools.bench_report import (
    COMMITS_PER_SAGA,
    DELIVERIES_PER_SAGA,
    PUBLISHES_PER_SAGA,
    bound,
    console,
    report,
    targets,
)
from tools.bench_world import (
    INITIAL_ON_HAND,
    CpuMeter,
    World,
    describe_machine,
    isolated_world,
    seed,
)
from tools.check import check
from tools.postgres import libpq

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".run" / "bench"
TERMINAL_EVENTS = ("OrderCompleted", "OrderCancelled")


# --- measuring one saga ----------------------------------------------------------------------


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
    ) -> None:
        self._url = f"{order_url}/orders"
        self._observer = observer
        self._skus = skus
        self._customers = customers
        self._timeout = saga_timeout_s
        self._rng = random.Random(seed)
        # Idle connections are dropped before uvicorn's 5 s keep-alive does, so that no request
        # is sent on a connection the server is closing.
        self.http = httpx.AsyncClient(
            timeout=30,
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


# --- phases ----------------------------------------------------------------------------------


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


# --- statistics ------------------------------------------------------------------------------


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles, and the maximum."""
    if not values:
        return {}
    ordered = sorted(values)
    result = {
        f"p{p}": round(ordered[min(len(ordered) - 1, max(0, -(-p * len(ordered) // 100) - 1))], 2)
        for p in points
    }
    result["max"] = round(ordered[-1], 2)
    return result


def summarize(phase: Phase, dwell: dict[str, Any]) -> dict[str, Any]:
    samples = phase.samples
    window = phase.sending_ended - phase.started
    in_window = [s for s in samples if s.ended <= phase.sending_ended]
    per_second: dict[int, int] = {}
    for s in in_window:
        second = int(s.ended - phase.started)
        per_second[second] = per_second.get(second, 0) + 1
    seconds = [per_second.get(i, 0) for i in range(1, int(window))]  # the first second ramps up
    completed = sum(1 for s in samples if s.outcome == "OrderCompleted")
    return {
        "params": phase.params,
        "sagas": len(samples),
        "outcomes": {
            event: sum(1 for s in samples if s.outcome == event) for event in TERMINAL_EVENTS
        },
        "errors": phase.errors,
        "window_s": round(window, 2),
        "placed_per_s": round(len(phase.order_ids) / window, 1) if window else 0.0,
        "sagas_per_s": round(len(in_window) / window, 1) if window else 0.0,
        "sagas_per_s_each_second": percentiles([float(x) for x in seconds], (1, 50))
        if seconds
        else {},
        "drain_after_window_s": round(phase.ended - phase.sending_ended, 2),
        "latency_ms": percentiles([s.latency_ms for s in samples]),
        "http_ms": percentiles([(s.answered - s.sent) * 1000 for s in samples]),
        "send_lateness_ms": percentiles(phase.lateness_ms) if phase.lateness_ms else {},
        "outbox_dwell_ms": dwell,
        "cpu_ms_per_saga": CpuMeter.per_saga(phase.cpu_before, phase.cpu_after, len(samples)),
        "machine_cpu_busy": CpuMeter.machine_busy(phase.cpu_before, phase.cpu_after),
        "database_sessions_opened": {
            name: phase.sessions_after[name] - phase.sessions_before.get(name, 0)
            for name in phase.sessions_after
        },
        "completed": completed,
    }


async def outbox_dwell(world: World, phase: Phase) -> dict[str, Any]:
    """Insert-to-confirmed-mark time of the outbox rows written during the phase, per service."""
    result: dict[str, Any] = {}
    everything: list[float] = []
    for service in SERVICES:
        async with await psycopg.AsyncConnection.connect(
            libpq(world.databases[service])
        ) as connection:
            rows = await (
                await connection.execute(
                    "SELECT extract(epoch FROM published_at - created_at) * 1000 FROM outbox"
                    " WHERE published_at IS NOT NULL AND created_at BETWEEN %s AND %s",
                    [phase.wall_started, phase.wall_ended],
                )
            ).fetchall()
        values = [float(row[0]) for row in rows]
        everything += values
        if values:
            result[service] = percentiles(values)
    result["all"] = percentiles(everything)
    return result


def hops(world: World, phase: Phase, most: int = 2000) -> dict[str, dict[str, float]]:
    """Percentiles of each hop of the phase's completed sagas (up to `most` of them)."""
    completed = [s for s in phase.samples if s.outcome == "OrderCompleted"][:most]
    times = hop_times(
        world.databases, ((s.order_id, s.sent_epoch, s.ended_epoch) for s in completed)
    )
    return {hop: percentiles(times[hop]) for hop in HOPS if hop in times}


def database_sessions(world: World) -> dict[str, int]:
    """Sessions each service's database has seen so far (pg_stat_database): connection churn."""
    names = {make_url(url).database: service for service, url in world.databases.items()}
    with psycopg.connect(libpq(world.servers.postgres_admin_url)) as connection:
        rows = connection.execute(
            "SELECT datname, sessions FROM pg_stat_database WHERE datname = ANY(%s)", [list(names)]
        ).fetchall()
    return {names[name]: int(sessions) for name, sessions in rows}


# --- profiling -------------------------------------------------------------------------------


def start_profilers(world: World, directory: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy on every service for `seconds`: a speedscope profile and collapsed stacks each."""
    directory.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    started = []
    for name, service in world.system.services.items():
        assert service.proc is not None
        started.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(service.proc.pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(directory / f"{name}.folded"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return started


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Settings:
    rate: float
    duration: float
    low_rate: float
    low_duration: float
    concurrency: int
    closed_duration: float
    warmup: float
    max_in_flight: int
    skus: int
    customers: int
    baseline_messages: int
    baseline_commit_s: float
    commit_connections: int
    drain_rows: int
    saga_timeout_s: float
    seed: int
    profile: Path | None
    output: Path | None
    service_env: dict[str, str]


async def run(settings: Settings, world: World, progress: Progress) -> dict[str, Any]:
    skus = [f"sku-{i:04d}" for i in range(settings.skus)]
    customers = [f"customer-{i:05d}" for i in range(settings.customers)]
    task = progress.add_task("seeding products and accounts", total=None)
    await seed(world.urls, skus, customers)
    progress.update(task, visible=False)

    observer = Observer()
    await observer.start(world.vhost.amqp_url)
    load = Load(world.urls.order, observer, skus, customers, settings.saga_timeout_s, settings.seed)
    meter = CpuMeter(world)
    phases: dict[str, Phase] = {}
    profilers: list[subprocess.Popen[bytes]] = []

    async def measured(name: str, params: dict[str, Any], total: int, body: Any) -> Phase:
        phase = Phase(name, params)
        bar = progress.add_task(name, total=total)
        phase.cpu_before = meter.sample()
        phase.sessions_before = await asyncio.to_thread(database_sessions, world)
        phase.wall_started = datetime.now(UTC)
        await body(phase, lambda: progress.advance(bar))
        phase.wall_ended = datetime.now(UTC)
        phase.cpu_after = meter.sample()
        phase.sessions_after = await asyncio.to_thread(database_sessions, world)
        progress.update(bar, completed=total)
        phases[name] = phase
        return phase

    try:
        if settings.warmup > 0:
            await measured(
                "warmup",
                {"rate": 50, "duration_s": settings.warmup},
                int(50 * settings.warmup),
                lambda p, adv: open_loop(load, p, 50, settings.warmup, 100, adv),
            )
        await measured(
            "low_rate",
            {"rate": settings.low_rate, "duration_s": settings.low_duration},
            int(settings.low_rate * settings.low_duration),
            lambda p, adv: open_loop(
                load, p, settings.low_rate, settings.low_duration, settings.max_in_flight, adv
            ),
        )
        if settings.profile is not None:
            profilers = start_profilers(world, settings.profile, settings.duration)
        await measured(
            "throughput",
            {
                "rate": settings.rate,
                "duration_s": settings.duration,
                "max_in_flight": settings.max_in_flight,
            },
            int(settings.rate * settings.duration),
            lambda p, adv: open_loop(
                load, p, settings.rate, settings.duration, settings.max_in_flight, adv
            ),
        )
        for profiler in profilers:
            await asyncio.to_thread(profiler.wait, 60)
        if settings.closed_duration > 0:
            await measured(
                "closed_loop",
                {"concurrency": settings.concurrency, "duration_s": settings.closed_duration},
                int(settings.closed_duration * settings.concurrency * 10),
                lambda p, adv: closed_loop(
                    load, p, settings.concurrency, settings.closed_duration, adv
                ),
            )
    finally:
        await load.http.aclose()
        await observer.close()
        for profiler in profilers:
            if profiler.poll() is None:
                profiler.terminate()

    summaries = {
        name: summarize(phase, await outbox_dwell(world, phase)) for name, phase in phases.items()
    }
    for name in ("low_rate", "throughput"):
        summaries[name]["hops_ms"] = await asyncio.to_thread(hops, world, phases[name])

    baseline = await bench_baselines.measure(
        world,
        meter,
        progress,
        messages=settings.baseline_messages,
        drain_rows=settings.drain_rows,
        commit_s=settings.baseline_commit_s,
        commit_connections=settings.commit_connections,
        batch=int(settings.service_env.get("RELAY_BATCH_SIZE", 256)),
        prefetch=int(settings.service_env.get("PREFETCH", 64)),
    )
    drain = baseline.pop("relay_drain")

    bar = progress.add_task("checking every saga (tools.check)", total=None)
    placed = [order_id for phase in phases.values() for order_id in phase.order_ids]
    violations = await asyncio.to_thread(check_all, world, skus, len(placed))
    progress.update(bar, visible=False)

    main = summaries["throughput"]
    low = summaries["low_rate"]
    sagas_per_s = main["sagas_per_s"]
    return {
        "sagas_per_s": sagas_per_s,
        "latency_ms": main["latency_ms"],
        "low_rate_latency_ms": low["latency_ms"],
        "outbox_dwell_ms": main["outbox_dwell_ms"]["all"],
        "cpu_ms_per_saga": main["cpu_ms_per_saga"],
        "baseline": baseline,
        "relay_drain": drain,
        "ratios": {
            "publishes_per_s_vs_raw": round(
                sagas_per_s * PUBLISHES_PER_SAGA / baseline["publish_per_s"], 3
            ),
            "deliveries_per_s_vs_raw": round(
                sagas_per_s * DELIVERIES_PER_SAGA / baseline["consume_ack_per_s"], 3
            ),
            "commits_per_s_vs_raw": round(
                sagas_per_s * COMMITS_PER_SAGA / baseline["commit_per_s"], 3
            ),
        },
        "bound": bound(main, baseline),
        "targets": targets(main["params"], main, low, drain),
        "phases": summaries,
        "check": {"sagas_checked": len(placed), "violations": violations},
    }


def check_all(world: World, skus: list[str], placed: int) -> list[str]:
    """The invariant checker over everything the run did, once the last sagas have settled;
    and one order for each 201 the load received."""
    report = check(
        world.urls,
        world.servers.rabbitmq_api,
        world.vhost.name,
        baseline={sku: INITIAL_ON_HAND for sku in skus},
        wait=60,
    )
    violations = [f"{v.guarantee}: {v.subject}: {v.detail}" for v in report.violations]
    if report.counts.get("orders") != placed:
        violations.append(f"{placed} orders placed, {report.counts.get('orders')} exist")
    return violations


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=__doc__.split("\n")[0]
    )
    add = parser.add_argument
    add("--rate", type=float, default=300, help="throughput phase: orders/s offered (300)")
    add("--duration", type=float, default=60, help="throughput phase: seconds (60)")
    add("--low-rate", type=float, default=20, help="low-rate phase: orders/s (20)")
    add("--low-duration", type=float, default=15, help="low-rate phase: seconds (15)")
    add("--concurrency", type=int, default=32, help="closed-loop phase: customers at once (32)")
    add(
        "--closed-duration", type=float, default=10, help="closed-loop phase: seconds, 0 skips (10)"
    )
    add("--warmup", type=float, default=3, help="warmup seconds at 50/s, not counted (3)")
    add(
        "--max-in-flight",
        type=int,
        default=0,
        help="open loop: most sagas open at once (default: one second's worth, at least 50)",
    )
    add("--skus", type=int, default=200)
    add("--customers", type=int, default=1000)
    add("--baseline-messages", type=int, default=5000)
    add("--baseline-commit-s", type=float, default=2.0)
    add("--commit-connections", type=int, default=8)
    add("--drain-rows", type=int, default=5000)
    add("--saga-timeout", type=float, default=60.0, help="give up on a saga after this (60 s)")
    add("--seed", type=int, default=1)
    add(
        "--profile",
        type=Path,
        default=None,
        help="py-spy each service during the throughput phase, into this folder",
    )
    add("--output", type=Path, default=None, help="result file (.run/bench/bench-<time>.json)")
    add(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the services",
    )
    args = parser.parse_args(argv)
    return Settings(
        rate=args.rate,
        duration=args.duration,
        low_rate=args.low_rate,
        low_duration=args.low_duration,
        concurrency=args.concurrency,
        closed_duration=args.closed_duration,
        warmup=args.warmup,
        max_in_flight=args.max_in_flight or int(max(50, args.rate)),
        skus=args.skus,
        customers=args.customers,
        baseline_messages=args.baseline_messages,
        baseline_commit_s=args.baseline_commit_s,
        commit_connections=args.commit_connections,
        drain_rows=args.drain_rows,
        saga_timeout_s=args.saga_timeout,
        seed=args.seed,
        profile=args.profile,
        output=args.output,
        service_env=dict(item.split("=", 1) for item in args.env),
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    # Stopped by a signal, the run still stops its services and drops its vhost and databases.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    with isolated_world(settings.service_env) as world:
        machine = describe_machine(world.servers)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            result = uvloop.run(run(settings, world, progress))
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()}
    result = {
        "started_at": started.isoformat(),
        "run_s": round(time.perf_counter() - clock, 1),
        "command": "python -m tools.bench " + " ".join(sys.argv[1:]),
        "machine": machine,
        "params": params,
        **result,
    }
    output = settings.output or RESULTS / f"bench-{started:%Y%m%dT%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"result: {output}")
    if result["check"]["violations"]:
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
