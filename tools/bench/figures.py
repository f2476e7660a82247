"""The figures of a phase: percentiles, throughput, latency, outbox dwell, hops and database sessions."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from harness.system import SERVICES, System
from tools.bench.hops import HOPS, hop_times
from tools.bench.load import TERMINAL_EVENTS, Phase
from tools.bench.world import CpuMeter
from tools.postgres import libpq


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


async def outbox_dwell(world: System, phase: Phase) -> dict[str, Any]:
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


def hops(world: System, phase: Phase, most: int = 2000) -> dict[str, dict[str, float]]:
    """Percentiles of each hop of the phase's completed sagas (up to `most` of them)."""
    completed = [s for s in phase.samples if s.outcome == "OrderCompleted"][:most]
    times = hop_times(
        world.databases, ((s.order_id, s.sent_epoch, s.ended_epoch) for s in completed)
    )
    return {hop: percentiles(times[hop]) for hop in HOPS if hop in times}


def database_sessions(world: System) -> dict[str, int]:
    """Sessions each service's database has seen so far (pg_stat_database): connection churn."""
    names = {make_url(url).database: service for service, url in world.databases.items()}
    with psycopg.connect(libpq(world.servers.postgres_admin_url)) as connection:
        rows = connection.execute(
            "SELECT datname, sessions FROM pg_stat_database WHERE datname = ANY(%s)", [list(names)]
        ).fetchall()
    return {names[name]: int(sessions) for name, sessions in rows}
