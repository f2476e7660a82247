"""One benchmark run: seeding, the phases of load, their figures, the baselines and the check,
assembled into the result that `__main__` writes and `report` prints."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.progress import Progress

from harness.system import System
from tools.bench import baselines
from tools.bench.figures import database_sessions, hops, outbox_dwell, summarize
from tools.bench.load import Load, Observer, Phase
from tools.bench.phases import closed_loop, open_loop
from tools.bench.profile import start_profilers
from tools.bench.report import (
    COMMITS_PER_SAGA,
    DELIVERIES_PER_SAGA,
    PUBLISHES_PER_SAGA,
    bound,
    targets,
)
from tools.bench.world import INITIAL_ON_HAND, CpuMeter, seed
from tools.check import check


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


async def run(settings: Settings, world: System, progress: Progress) -> dict[str, Any]:
    skus = [f"sku-{i:04d}" for i in range(settings.skus)]
    customers = [f"customer-{i:05d}" for i in range(settings.customers)]
    task = progress.add_task("seeding products and accounts", total=None)
    # An operator's token (the services verify every request, as under `make up`).
    auth = world.tokens.operator() if world.tokens else {}
    await seed(world.urls, skus, customers, auth)
    progress.update(task, visible=False)

    observer = Observer()
    await observer.start(world.vhost.amqp_url)
    load = Load(
        world.urls.order,
        observer,
        skus,
        customers,
        settings.saga_timeout_s,
        settings.seed,
        headers=auth,
    )
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

    baseline = await baselines.measure(
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
