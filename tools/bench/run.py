"""One benchmark run: seeding, the phases of load, the search for the sustainable rate, the
comparison phases, their figures, the baselines and the check, assembled into the result that
`__main__` writes and `report` prints."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.progress import Progress

from harness.system import System
from tools.bench import baselines
from tools.bench.figures import counted, hops, outbox_dwell, snapshot, summarize
from tools.bench.load import Load, Observer, Phase
from tools.bench.phases import Sustained, closed_loop, open_loop, watch
from tools.bench.profile import start_profilers
from tools.bench.report import (
    COMMITS_PER_SAGA,
    DELIVERIES_PER_SAGA,
    PUBLISHES_PER_SAGA,
    bound,
    targets,
)
from tools.bench.world import INITIAL_ON_HAND, CpuMeter, World, seed
from tools.check import check


@dataclass(frozen=True)
class Variant:
    """A comparison phase: the services restarted with `env` added to theirs, the load sending
    `headers` with each order (a Bearer token, say), at the sustainable rate of the default."""

    name: str
    env: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`name:VAR=value,VAR=value` (`--variant`)."""
        name, _, assignments = text.partition(":")
        env = dict(item.split("=", 1) for item in assignments.split(",") if item)
        return cls(name, env)


def built_in_variants(traces_dir: Path) -> list[Variant]:
    """The comparison phases of features the services have: tracing on (OTLP JSON lines written
    to files, `TRACES_DIR`), where `web.tracing` exists; authentication off where it exists (it
    is on by default, as the harness starts the services: the default phases are "auth on")."""
    found = []
    if importlib.util.find_spec("web.tracing") is not None:
        found.append(Variant("tracing on", {"TRACES_DIR": str(traces_dir)}))
    if importlib.util.find_spec("web.auth") is not None:
        found.append(Variant("auth off", {"AUTH_DISABLED": "true"}))
    return found


@dataclass
class Settings:
    low_rate: float
    low_duration: float
    sequential_duration: float
    concurrency: int
    closed_duration: float
    step_duration: float
    search_s: float
    refinements: int
    first_rate: float | None
    rate: float | None
    duration: float
    warmup: float
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
    variants: list[Variant]
    own_postgres: bool


Body = Callable[[Phase, Callable[[], None]], Awaitable[None]]


class Runner:
    """The phases of one run, each measured the same way: counters read before and after."""

    def __init__(self, world: World, progress: Progress, load: Load, statements: bool) -> None:
        self.system: System = world.system
        self.progress = progress
        self.load = load
        self.meter = CpuMeter(world.system, world.postgres_pid)
        self.statements = statements
        self.phases: dict[str, Phase] = {}
        self.sustained = Sustained()

    async def measured(self, name: str, params: dict[str, Any], total: int, body: Body) -> Phase:
        phase = Phase(name, params)
        bar = self.progress.add_task(name, total=total)
        phase.before = await asyncio.to_thread(snapshot, self.system, self.statements, True)
        phase.cpu_before = self.meter.sample()
        phase.wall_started = datetime.now(UTC)
        await body(phase, lambda: self.progress.advance(bar))
        phase.wall_ended = datetime.now(UTC)
        phase.cpu_after = self.meter.sample()
        phase.after = await asyncio.to_thread(snapshot, self.system, self.statements, False)
        self.progress.update(bar, completed=total)
        self.phases[name] = phase
        return phase

    async def open_loop(self, name: str, rate: float, duration: float) -> Phase:
        """Orders at `rate`/s for `duration` s, with at most one second's worth open at once."""
        in_flight = int(max(50, rate))
        return await self.measured(
            name,
            {"rate": rate, "duration_s": duration, "max_in_flight": in_flight},
            int(rate * duration),
            lambda p, adv: open_loop(self.load, p, rate, duration, in_flight, adv),
        )

    async def closed_loop(self, name: str, concurrency: int, duration: float) -> Phase:
        return await self.measured(
            name,
            {"concurrency": concurrency, "duration_s": duration},
            int(duration * concurrency * 10),
            lambda p, adv: closed_loop(self.load, p, concurrency, duration, adv),
        )

    async def idle(self, duration: float) -> Phase:
        """Nothing offered for `duration` s: what the processes spend meanwhile (the services'
        sweeps, and on a shared machine the other tenants of the broker)."""

        async def body(phase: Phase, advance: Callable[[], None]) -> None:
            phase.started = time.perf_counter()
            await asyncio.sleep(duration)
            phase.sending_ended = phase.ended = time.perf_counter()

        return await self.measured("idle", {"duration_s": duration}, 0, body)

    async def step(
        self, name: str, rate: float, duration: float, stop_early: bool = True
    ) -> tuple[Phase, dict[str, Any]]:
        """An open loop judged by `Sustained`, stopped as soon as it cannot pass any more (unless
        not `stop_early`: a comparison phase runs its whole duration, for its rate and CPU)."""
        offered = int(rate * duration)
        in_flight = int(max(50, rate))

        async def body(phase: Phase, advance: Callable[[], None]) -> None:
            stop = asyncio.Event()
            watcher = asyncio.create_task(
                watch(phase, self.sustained, offered, stop) if stop_early else stop.wait()
            )
            try:
                await open_loop(self.load, phase, rate, duration, in_flight, advance, stop)
            finally:
                stop.set()
                await watcher

        phase = await self.measured(
            name, {"rate": rate, "duration_s": duration, "max_in_flight": in_flight}, offered, body
        )
        verdict = {"rate": rate, **self.sustained.verdict(phase, offered)}
        verdict["aborted"] = phase.aborted
        verdict["ran_s"] = round(phase.ended - phase.started, 1)
        return phase, verdict

    async def search(self, settings: Settings, estimate: float) -> list[dict[str, Any]]:
        """The highest rate sustained: from 0.6x the closed loop's rate, up by 1.5x while steps
        pass (down by 0.6x while they fail), then `refinements` steps halving the bracket; no new
        step once `search_s` is spent and a step has passed."""
        rate = nice(settings.first_rate or 0.6 * estimate)
        steps: list[dict[str, Any]] = []
        passed: float | None = None
        failed: float | None = None
        refined = 0
        started = time.perf_counter()
        while True:
            _, verdict = await self.step(f"step {rate:g}/s", rate, settings.step_duration)
            steps.append(verdict)
            if verdict["passed"]:
                passed = max(passed or 0.0, rate)
            else:
                failed = min(failed or float("inf"), rate)
            if failed is None:
                following = nice(rate * 1.5)
            elif passed is None:
                following = nice(rate * 0.6)
            elif refined < settings.refinements and failed / passed > 1.1:
                following, refined = nice((passed + failed) / 2), refined + 1
            else:
                break
            out_of_time = time.perf_counter() - started + settings.step_duration > settings.search_s
            tried = any(s["rate"] == following for s in steps)
            if tried or following < 2 or (out_of_time and passed is not None):
                break
            rate = following
        return steps

    async def variant(self, variant: Variant, rate: float, duration: float) -> dict[str, Any]:
        """The services restarted with the variant's environment, a step at `rate`, and the
        services restarted as they were."""
        defaults = {name: dict(service.env) for name, service in self.system.services.items()}
        headers = dict(self.load.headers)
        changed = {name: {**env, **variant.env} for name, env in defaults.items()}
        await asyncio.to_thread(restart, self.system, changed)
        self.load.headers.update(variant.headers)
        try:
            # Fresh processes: their pools and caches warmed as the default's were.
            await self.open_loop(f"variant {variant.name} warmup", 50, 3)
            phase, verdict = await self.step(f"variant {variant.name}", rate, duration, False)
        finally:
            self.load.headers = headers
            await asyncio.to_thread(restart, self.system, defaults)
        return {"env": variant.env, "phase": phase.name, **verdict}


def restart(system: System, env: dict[str, dict[str, str]]) -> None:
    """Every service stopped, then started again with `env[name]`, and ready."""
    for name, service in system.services.items():
        service.stop()
        service.env = env[name]
    system.start(120)


def nice(rate: float) -> float:
    """A rate to offer: a whole number below 20/s, a multiple of 5 above."""
    return float(max(2, round(rate))) if rate < 20 else float(5 * round(rate / 5))


async def run(settings: Settings, world: World, progress: Progress) -> dict[str, Any]:
    system = world.system
    clock = [time.perf_counter()]

    def lap() -> float:
        """Seconds since the previous lap."""
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 1)

    skus = [f"sku-{i:04d}" for i in range(settings.skus)]
    customers = [f"customer-{i:05d}" for i in range(settings.customers)]
    # The services verify Bearer tokens (unless AUTH_DISABLED), and the system mints them
    # (`harness.system`): an operator's to seed, each customer's own to place their orders.
    tokens = system.tokens
    task = progress.add_task("seeding products and accounts", total=None)
    operator = tokens.operator() if tokens else None
    await seed(system.urls, skus, customers, headers=operator)
    progress.update(task, visible=False)

    observer = Observer()
    await observer.start(system.vhost.amqp_url)
    load = Load(system.order, observer, skus, customers, settings.saga_timeout_s, settings.seed)
    if tokens:
        load.per_customer = {customer: tokens.bearer(customer) for customer in customers}
    statements = world.postgres_pid is not None
    runner = Runner(world, progress, load, statements)
    start = await asyncio.to_thread(snapshot, system, statements, True)
    profilers: list[subprocess.Popen[bytes]] = []
    steps: list[dict[str, Any]] = []
    variants: dict[str, dict[str, Any]] = {}
    try:
        if settings.warmup > 0:
            await runner.open_loop("warmup", 50, settings.warmup)
        await runner.idle(3)
        if settings.sequential_duration > 0:
            await runner.closed_loop("sequential", 1, settings.sequential_duration)
        await runner.open_loop("low_rate", settings.low_rate, settings.low_duration)
        closed = await runner.closed_loop(
            "closed_loop", settings.concurrency, settings.closed_duration
        )
        estimate = len(closed.samples) / max(1e-9, closed.ended - closed.started)
        steps = await runner.search(settings, estimate)
        best = sustainable(steps)
        rate = best["rate"] if best else steps[-1]["rate"]
        if settings.rate:
            await runner.open_loop("throughput", settings.rate, settings.duration)
        for variant in settings.variants:
            variants[variant.name] = await runner.variant(variant, rate, settings.step_duration)
        if settings.profile is not None:
            profilers = start_profilers(system, settings.profile, settings.step_duration)
            await runner.open_loop("profiled", rate, settings.step_duration)
            for profiler in profilers:
                await asyncio.to_thread(profiler.wait, 60)
    finally:
        await load.close()
        await observer.close()
        for profiler in profilers:
            if profiler.poll() is None:
                profiler.terminate()
    end = await asyncio.to_thread(snapshot, system, statements, False)
    stages = {"load": lap()}

    phases = runner.phases
    summaries = {
        name: summarize(phase, await outbox_dwell(system, phase)) for name, phase in phases.items()
    }
    # The figures at load are those of the highest step sustained; with none sustained, those of
    # the closed loop (the system at full load: its idle costs spread over the most sagas).
    best = sustainable(steps)
    main_name = f"step {best['rate']:g}/s" if best else "closed_loop"
    for name in ("sequential", "low_rate", main_name):
        if name in phases:
            summaries[name]["hops_ms"] = await asyncio.to_thread(hops, system, phases[name])

    baseline = await baselines.measure(
        system,
        runner.meter,
        progress,
        messages=settings.baseline_messages,
        drain_rows=settings.drain_rows,
        commit_s=settings.baseline_commit_s,
        commit_connections=settings.commit_connections,
        batch=int(settings.service_env.get("RELAY_BATCH_SIZE", 256)),
        prefetch=int(settings.service_env.get("PREFETCH", 64)),
    )
    drain = baseline.pop("relay_drain")
    stages["figures and baselines"] = lap()

    bar = progress.add_task("checking every saga (tools.check)", total=None)
    placed = [order_id for phase in phases.values() for order_id in phase.order_ids]
    violations = await asyncio.to_thread(check_all, system, skus, len(placed))
    progress.update(bar, visible=False)
    stages["check"] = lap()

    main, low = summaries[main_name], summaries["low_rate"]
    sequential = summaries.get("sequential", {}).get("latency_ms", {})
    limits = bound(main, baseline)
    floor = limits["latency_floor_ms_if_only_raw_operations"]
    sustained = best["rate"] if best else 0.0
    # What the processes spend with nothing offered (the sweeps; on a shared machine, the other
    # tenants of the broker), over the main phase's seconds, per saga of it.
    busy = phases[main_name]
    idle_ms = all_processes(summaries["idle"]["cpu_ms_per_s"]) * (busy.ended - busy.started)
    less_idle = limits["measured_cpu_ms_per_saga_all_processes"] - idle_ms / max(
        1, len(busy.samples)
    )
    sagas_per_s = main["sagas_per_s"]
    whole_run = counted(start, end, len(placed))
    for step in steps:
        step["cpu_ms_per_saga_all_processes"] = all_processes(
            summaries[f"step {step['rate']:g}/s"]["cpu_ms_per_saga"]
        )
    for found in variants.values():
        found["cpu_ms_per_saga"] = summaries[found["phase"]]["cpu_ms_per_saga"]
        found["cpu_ms_per_saga_all_processes"] = all_processes(found["cpu_ms_per_saga"])
        found["sagas_per_s"] = summaries[found["phase"]]["sagas_per_s"]
    result: dict[str, Any] = {
        "sustainable_sagas_per_s": sustained,
        "sustained": {"completed_at_least": 0.98, "p99_ms_at_most": 250.0},
        "steps": steps,
        "main_phase": main_name,
        "sagas_per_s": sagas_per_s,
        "latency_ms": main["latency_ms"],
        "low_rate_latency_ms": low["latency_ms"],
        "sequential_latency_ms": sequential,
        "outbox_dwell_ms": main["outbox_dwell_ms"]["all"],
        "cpu_ms_per_saga": main["cpu_ms_per_saga"],
        "cpu_counted": CPU_COUNTED["own" if statements else "shared"],
        "idle_cpu_ms_per_s": summaries["idle"]["cpu_ms_per_s"],
        "deliveries_per_transaction": main.get("deliveries_per_transaction"),
        "statements_per_saga": main.get("statements_per_saga"),
        "statements_counted_by": "pg_stat_statements on the benchmark's own PostgreSQL server"
        if statements
        else None,
        "transactions_per_saga": main.get("transactions_per_saga"),
        "database_sessions_opened": {
            name: sum(s.get("database_sessions_opened", {}).values())
            for name, s in summaries.items()
        },
        "deadlocks": whole_run["deadlocks"],
        "baseline": baseline,
        "relay_drain": drain,
        "bound": limits,
        "ratios": {
            "cpu_vs_raw": ratio(
                limits["measured_cpu_ms_per_saga_all_processes"],
                limits["raw_operations_cpu_ms_per_saga"],
            ),
            "cpu_vs_raw_less_idle": ratio(less_idle, limits["raw_operations_cpu_ms_per_saga"]),
            "sustainable_vs_raw_bound": ratio(
                sustained, limits["max_sagas_per_s_if_only_raw_operations"]
            ),
            "low_rate_p50_vs_floor": ratio(low["latency_ms"].get("p50"), floor),
            "low_rate_p99_vs_floor": ratio(low["latency_ms"].get("p99"), floor),
            "relay_drain_vs_raw_publish": drain["ratio_to_publish"],
            "publishes_per_s_vs_raw": ratio(
                sagas_per_s * PUBLISHES_PER_SAGA, baseline["publish_per_s"]
            ),
            "deliveries_per_s_vs_raw": ratio(
                sagas_per_s * DELIVERIES_PER_SAGA, baseline["consume_ack_per_s"]
            ),
            "commits_per_s_vs_raw": ratio(sagas_per_s * COMMITS_PER_SAGA, baseline["commit_per_s"]),
        },
        "variants": variants,
        "phases": summaries,
        "check": {"sagas_checked": len(placed), "violations": violations},
        "stages_s": stages,
    }
    result["targets"] = targets(result)
    return result


#: Which processes' CPU `cpu_ms_per_saga` counts, on the benchmark's own PostgreSQL server or on
#: the shared one.
_SERVICES = "the four services (each process)"
_RABBITMQ = "RabbitMQ: the shared broker's beam.smp, all of it (other vhosts' traffic included)"
_CLIENT = (
    "the benchmark's process: the load's HTTP client, its consumer of terminal events, the"
    " progress display"
)
CPU_COUNTED = {
    "own": [
        _SERVICES,
        "PostgreSQL: the benchmark's own server, all of it (postmaster, backends live and"
        " exited, background workers)",
        _RABBITMQ,
        _CLIENT,
    ],
    "shared": [
        _SERVICES,
        "PostgreSQL: the shared server, all of it (other tenants' backends included)",
        _RABBITMQ,
        _CLIENT,
    ],
}


def sustainable(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The step of the highest rate that passed."""
    return max((s for s in steps if s["passed"]), key=lambda s: s["rate"], default=None)


def all_processes(cpu: dict[str, float]) -> float:
    return round(sum(v for k, v in cpu.items() if k != "services (4 processes)"), 2)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def check_all(world: System, skus: list[str], placed: int) -> list[str]:
    """The invariant checker over everything the run did, once the last sagas have settled;
    and one order for each 201 the load received."""
    report = check(
        world.urls,
        world.servers.rabbitmq_api,
        world.vhost.name,
        baseline={sku: INITIAL_ON_HAND for sku in skus},
        wait=60,
        tokens=world.tokens,
    )
    violations = [f"{v.guarantee}: {v.subject}: {v.detail}" for v in report.violations]
    if report.counts.get("orders") != placed:
        violations.append(f"{placed} orders placed, {report.counts.get('orders')} exist")
    return violations
