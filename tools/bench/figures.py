"""The figures of a phase: percentiles, throughput, latency, outbox dwell, hops; and the counters
read before and after it (`snapshot`): PostgreSQL's own per database (sessions opened, deadlocks,
transactions; statements, from pg_stat_statements where the server has it) and the services'
`saga_consumer_batch_size` histograms, scraped from their /metrics."""

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
        "aborted": phase.aborted,
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
        "cpu_ms_per_saga": CpuMeter.ms_per(phase.cpu_before, phase.cpu_after, len(samples)),
        "cpu_ms_per_s": CpuMeter.ms_per(
            phase.cpu_before, phase.cpu_after, phase.ended - phase.started
        ),
        "machine_cpu_busy": CpuMeter.machine_busy(phase.cpu_before, phase.cpu_after),
        **counted(phase.before, phase.after, len(samples)),
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


def snapshot(world: System, statements: bool, scrape_first: bool) -> dict[str, Any]:
    """The counters a phase's figures are differences of, as they stand now. A scrape of
    /metrics runs statements of its own (the outbox's backlog, read at scrape): before a phase it
    comes first, after a phase last, so that PostgreSQL's counts of the phase leave it out."""
    batches = batch_histograms(world) if scrape_first else {}
    counters = {
        "database": database_counters(world),
        "statements": statement_calls(world) if statements else None,
    }
    return {"batches": batches or batch_histograms(world), **counters}


def counted(before: dict[str, Any], after: dict[str, Any], sagas: int) -> dict[str, Any]:
    """What the counters say about the phase between two snapshots: sessions opened, deadlocks,
    transactions and statements (per saga), and deliveries per consumer transaction."""
    if not before or not after:
        return {}
    delta = {
        service: {k: v - before["database"].get(service, {}).get(k, 0) for k, v in counts.items()}
        for service, counts in after["database"].items()
    }
    result: dict[str, Any] = {
        "database_sessions_opened": {s: d["sessions"] for s, d in delta.items()},
        "deadlocks": sum(d["deadlocks"] for d in delta.values()),
        "transactions_per_saga": round(sum(d["xact_commit"] for d in delta.values()) / sagas, 2)
        if sagas
        else None,
        "rollbacks": sum(d["xact_rollback"] for d in delta.values()),
        "deliveries_per_transaction": deliveries_per_transaction(
            before["batches"], after["batches"]
        ),
    }
    if after["statements"] is None or before["statements"] is None:
        result["statements_per_saga"] = None
        return result
    calls: dict[str, dict[str, Any]] = {}
    for key, (service, query, n) in after["statements"].items():
        done = n - before["statements"].get(key, (service, query, 0))[2]
        if done:
            calls[key] = {"service": service, "query": query, "calls": done}
    by_service: dict[str, float] = {}
    for call in calls.values():
        by_service[call["service"]] = by_service.get(call["service"], 0) + call["calls"]
    top = sorted(calls.values(), key=lambda c: -c["calls"])[:12]
    result["statements_per_saga"] = (
        {
            "all": round(sum(by_service.values()) / sagas, 1),
            **{s: round(n / sagas, 1) for s, n in sorted(by_service.items())},
            "top": [
                {**c, "per_saga": round(c["calls"] / sagas, 2), "calls": c["calls"]} for c in top
            ],
        }
        if sagas
        else None
    )
    return result


def _service_databases(world: System) -> dict[str, str]:
    return {str(make_url(url).database): service for service, url in world.databases.items()}


def database_counters(world: System) -> dict[str, dict[str, int]]:
    """pg_stat_database for each service's database: sessions opened so far (connection churn),
    deadlocks, commits and rollbacks."""
    names = _service_databases(world)
    with psycopg.connect(libpq(world.servers.postgres_admin_url)) as connection:
        rows = connection.execute(
            "SELECT datname, sessions, deadlocks, xact_commit, xact_rollback"
            " FROM pg_stat_database WHERE datname = ANY(%s)",
            [list(names)],
        ).fetchall()
    return {
        names[name]: {
            "sessions": int(sessions),
            "deadlocks": int(deadlocks),
            "xact_commit": int(commits),
            "xact_rollback": int(rollbacks),
        }
        for name, sessions, deadlocks, commits, rollbacks in rows
    }


def statement_calls(world: System) -> dict[str, tuple[str, str, int]]:
    """pg_stat_statements for the services' databases: by database and query, the service, the
    query's text and how many times it ran so far (BEGIN and COMMIT included)."""
    names = _service_databases(world)
    with psycopg.connect(libpq(world.servers.postgres_admin_url)) as connection:
        rows = connection.execute(
            "SELECT d.datname, s.queryid, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 160),"
            " s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = ANY(%s)",
            [list(names)],
        ).fetchall()
    result: dict[str, tuple[str, str, int]] = {}
    for database, queryid, query, calls in rows:
        key = f"{database}:{queryid}"
        previous = result.get(key, (names[database], query, 0))
        result[key] = (names[database], query, previous[2] + int(calls))
    return result


#: The buckets of `saga_consumer_batch_size` (outbox.metrics), as non-cumulative ranges.
BATCH_RANGES = (
    ("1", 1),
    ("2", 2),
    ("3-4", 4),
    ("5-8", 8),
    ("9-16", 16),
    ("17-32", 32),
    ("33-64", 64),
)
BATCH_METRIC = "saga_consumer_batch_size"


def batch_histograms(world: System) -> dict[str, dict[str, float]]:
    """Each service process's `saga_consumer_batch_size` so far: cumulative counts by bucket
    (`le`), `sum` and `count`, from its /metrics."""
    result: dict[str, dict[str, float]] = {}
    for name, service in world.services.items():
        found: dict[str, float] = {}
        for family in service.metrics():
            if family.name != BATCH_METRIC:
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    found[sample.labels["le"]] = sample.value
                elif sample.name.endswith(("_sum", "_count")):
                    found[sample.name.rsplit("_", 1)[1]] = sample.value
        result[name] = found
    return result


def deliveries_per_transaction(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Deliveries per consumer transaction between two scrapes: the mean, each service's mean,
    and how many transactions handled 1, 2, 3-4, … deliveries."""

    def delta(service: str, key: str) -> float:
        return after[service].get(key, 0.0) - before.get(service, {}).get(key, 0.0)

    services = [s for s in after if after[s]]
    transactions = sum(delta(s, "count") for s in services)
    deliveries = sum(delta(s, "sum") for s in services)
    histogram: dict[str, int] = {}
    below = 0.0
    for label, bound in BATCH_RANGES:
        upto = sum(delta(s, f"{float(bound)}") for s in services)
        histogram[label] = int(upto - below)
        below = upto
    histogram[f">{BATCH_RANGES[-1][1]}"] = int(transactions - below)
    return {
        "mean": round(deliveries / transactions, 2) if transactions else None,
        "transactions": int(transactions),
        "deliveries": int(deliveries),
        "by_service": {
            s: round(delta(s, "sum") / delta(s, "count"), 2) for s in services if delta(s, "count")
        },
        "histogram": histogram,
    }
