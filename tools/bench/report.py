"""Judging and showing a `make bench` result: the bound the raw operations set, the targets of
the issue, and the tables printed at the end of a run."""

from __future__ import annotations

import sys
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from tools.bench.hops import HOPS

#: Messages published, delivered and transactions committed by one completed saga (happy path):
#: OrderCreated, StockReserved, PaymentSucceeded, StockCommitted, OrderCompleted are published;
#: StockReserved and PaymentSucceeded go to two services each, the bench queue is not counted;
#: the POST and seven handlers commit (the relay's marks come on top, one per batch).
PUBLISHES_PER_SAGA = 5
DELIVERIES_PER_SAGA = 7
COMMITS_PER_SAGA = 8
#: One after the other from POST to OrderCompleted: five commits (the POST, inventory reserving,
#: payment charging, inventory selling, order completing), each followed by a broker hop.
COMMITS_IN_CHAIN = 5
HOPS_IN_CHAIN = 5

console = Console(stderr=True, width=None if sys.stderr.isatty() else 130)


def bound(main: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """What the raw operations alone would cost per saga, in CPU, and the rate that caps."""
    cpu = baseline["cpu_ms_per_op"]
    raw_ms = (
        PUBLISHES_PER_SAGA * cpu["publish"]["total"]
        + DELIVERIES_PER_SAGA * cpu["consume_ack"]["total"]
        + COMMITS_PER_SAGA * cpu["insert_and_commit"]["total"]
    )
    cores = psutil.cpu_count() or 1
    measured = sum(v for k, v in main["cpu_ms_per_saga"].items() if k != "services (4 processes)")
    floor_ms = (
        HOPS_IN_CHAIN * baseline["broker_hop_ms"]["p50"]
        + COMMITS_IN_CHAIN * baseline["commit_ms_one_connection"]
    )
    return {
        "latency_floor_ms_if_only_raw_operations": round(floor_ms, 1),
        "raw_operations_cpu_ms_per_saga": round(raw_ms, 2),
        "measured_cpu_ms_per_saga_all_processes": round(measured, 2),
        "cores": cores,
        "max_sagas_per_s_if_only_raw_operations": round(cores * 1000 / raw_ms, 1)
        if raw_ms
        else None,
        "max_sagas_per_s_at_measured_cpu": round(cores * 1000 / measured, 1) if measured else None,
    }


#: The targets of issue 10: (key, what, the figure's path in the result, comparison, limit).
TARGETS = (
    ("cpu_vs_raw", "CPU per saga vs the raw operations'", ("ratios", "cpu_vs_raw"), "<=", 2.5),
    (
        "sustainable_sagas_per_s",
        "sustainable sagas/s (>= 98% completed, p99 <= 250 ms, 20 s)",
        ("sustainable_sagas_per_s",),
        ">=",
        150,
    ),
    (
        "sustainable_vs_raw_bound",
        "sustainable vs the raw operations' bound",
        ("ratios", "sustainable_vs_raw_bound"),
        ">=",
        0.4,
    ),
    (
        "low_rate_p50_vs_floor",
        "at 20/s, p50 vs the latency floor",
        ("ratios", "low_rate_p50_vs_floor"),
        "<=",
        1.6,
    ),
    (
        "low_rate_p99_vs_floor",
        "at 20/s, p99 vs the latency floor",
        ("ratios", "low_rate_p99_vs_floor"),
        "<=",
        4,
    ),
    ("sequential_p50_ms", "sequential p50 (ms)", ("sequential_latency_ms", "p50"), "<=", 20),
    (
        "relay_drain_vs_raw_publish",
        "relay drain vs raw confirmed publishes",
        ("ratios", "relay_drain_vs_raw_publish"),
        ">=",
        0.9,
    ),
    ("deadlocks", "deadlocks in the run (pg_stat_database)", ("deadlocks",), "<=", 0),
    (
        "sessions_opened_under_load",
        "database sessions opened at the sustainable rate",
        ("sessions_opened_under_load",),
        "<=",
        0,
    ),
    ("invariant_violations", "invariant violations (tools.check)", ("violations",), "<=", 0),
)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The targets of the issue, met or not, with the figure each was judged on."""
    figures = {
        **result,
        "sessions_opened_under_load": result["database_sessions_opened"].get(result["main_phase"]),
        "violations": len(result["check"]["violations"]),
    }
    judged = {}
    for key, what, path, comparison, limit in TARGETS:
        figure: Any = figures
        for part in path:
            figure = figure.get(part) if isinstance(figure, dict) else None
        met = figure is not None and (figure <= limit if comparison == "<=" else figure >= limit)
        judged[key] = {
            "what": what,
            "figure": figure,
            "target": f"{comparison} {limit}",
            "met": met,
        }
    return judged


def _load(params: dict[str, Any]) -> str:
    if "concurrency" in params:
        return f"{params['concurrency']} at once, {params['duration_s']:g} s"
    if "rate" not in params:
        return f"nothing, {params['duration_s']:g} s"
    return f"{params['rate']:g}/s, {params['duration_s']:g} s"


def report(result: dict[str, Any]) -> None:
    table = Table(title="saga benchmark (latency: POST to terminal event, ms)")
    for column in (
        "phase",
        "load",
        "sagas/s",
        "p50",
        "p90",
        "p99",
        "max",
        "dwell p50/p99",
        "CPU ms/saga",
        "deliv/txn",
        "stmts/saga",
        "sessions",
        "busy",
    ):
        table.add_column(column, justify="left" if column in ("phase", "load") else "right")
    for name, phase in result["phases"].items():
        lat, dwell = phase["latency_ms"], phase["outbox_dwell_ms"]["all"]
        statements = phase.get("statements_per_saga") or {}
        table.add_row(
            name + (" (stopped)" if phase.get("aborted") else ""),
            _load(phase["params"]),
            f"{phase['sagas_per_s']}",
            *(f"{lat.get(k, '-')}" for k in ("p50", "p90", "p99", "max")),
            f"{dwell.get('p50', '-')}/{dwell.get('p99', '-')}",
            f"{_all(phase['cpu_ms_per_saga'])}",
            f"{(phase.get('deliveries_per_transaction') or {}).get('mean', '-')}",
            f"{statements.get('all', '-')}",
            f"{sum(phase.get('database_sessions_opened', {}).values())}",
            f"{phase['machine_cpu_busy']:.0%}",
        )
    console.print(table)
    steps = Table(title="the search for the sustainable rate (>= 98% completed, p99 <= 250 ms)")
    for column in ("offered/s", "completed", "p99 ms", "ran s", "CPU ms/saga", "verdict"):
        steps.add_column(column, justify="right")
    for step in result["steps"]:
        steps.add_row(
            f"{step['rate']:g}",
            f"{step['completed_ratio']:.1%}",
            f"{step['p99_ms']}",
            f"{step['ran_s']}",
            f"{step['cpu_ms_per_saga_all_processes']}",
            "[green]sustained[/]" if step["passed"] else f"[red]not[/] {step['aborted'] or ''}",
        )
    console.print(steps)
    main = result["main_phase"]
    hops = Table(title="where the time goes: hops of completed sagas, p50 / p90 ms")
    hops.add_column("hop")
    shown = [name for name, phase in result["phases"].items() if "hops_ms" in phase]
    for name in shown:
        hops.add_column(name, justify="right")
    for hop in HOPS:
        cells = []
        for name in shown:
            found = result["phases"][name].get("hops_ms", {}).get(hop, {})
            cells.append(f"{found.get('p50', '-')} / {found.get('p90', '-')}")
        hops.add_row(hop, *cells)
    console.print(hops)
    cpu = Table(title=f"CPU ms per saga, {main} (all processes counted: see cpu_counted)")
    cpu.add_column("process")
    cpu.add_column("ms", justify="right")
    for name, ms in result["cpu_ms_per_saga"].items():
        cpu.add_row(name, f"{ms}")
    console.print(cpu)
    idle = result["idle_cpu_ms_per_s"]
    rate = result["sagas_per_s"]
    console.print(
        "idle, nothing offered (CPU ms per second): "
        + ", ".join(f"{k} {v:.0f}" for k, v in idle.items() if k != "services (4 processes)")
        + (
            f"; at {rate} sagas/s that background alone is "
            f"{_all(idle)} / {rate} = {float(_all(idle)) / rate:.1f} ms per saga"
            if rate and idle
            else ""
        )
    )
    _counts(result)
    base, ratios, drain = result["baseline"], result["ratios"], result["relay_drain"]
    console.print(
        f"raw baselines: {base['publish_per_s']:.0f} confirmed publishes/s, "
        f"{base['consume_ack_per_s']:.0f} consume+ack/s, {base['commit_per_s']:.0f} commits/s "
        f"({base['commit_connections']} connections; {base['commit_per_s_one_connection']:.0f} on one)"
    )
    limits = result["bound"]
    console.print(
        f"raw latency: a broker hop (publish to delivery, one at a time, quorum queue) p50 "
        f"{base['broker_hop_ms']['p50']} ms, an insert+commit {base['commit_ms_one_connection']} "
        f"ms: a saga's chain of {HOPS_IN_CHAIN} hops and {COMMITS_IN_CHAIN} commits needs "
        f"{limits['latency_floor_ms_if_only_raw_operations']} ms with no code at all"
    )
    console.print(
        f"raw CPU: {limits['raw_operations_cpu_ms_per_saga']} ms per saga's raw operations, "
        f"{limits['measured_cpu_ms_per_saga_all_processes']} ms measured per saga "
        f"= {ratios['cpu_vs_raw']}x ({ratios['cpu_vs_raw_less_idle']}x less what the idle phase "
        "spent per second); raw operations alone would allow "
        f"{limits['max_sagas_per_s_if_only_raw_operations']} sagas/s on {limits['cores']} cores, "
        f"sustained {result['sustainable_sagas_per_s']:g} = {ratios['sustainable_vs_raw_bound']}x"
    )
    console.print(
        f"relay drain: {drain['per_s']:.0f} rows/s = {drain['ratio_to_publish']:.2f}x the raw "
        "confirmed-publish rate"
    )
    for name, found in result["variants"].items():
        console.print(
            f"variant {name} ({', '.join(found['env'])}) at {found['rate']:g}/s: "
            f"{found['sagas_per_s']} sagas/s, {found['completed_ratio']:.1%} completed, p99 "
            f"{found['p99_ms']} ms, CPU {found['cpu_ms_per_saga_all_processes']} ms/saga "
            f"({'sustained' if found['passed'] else 'not sustained'})"
        )
    judged = Table(title="targets (issue 10)")
    for column in ("target", "figure", "needs", "met"):
        judged.add_column(column, justify="left" if column == "target" else "right")
    for target in result["targets"].values():
        judged.add_row(
            target["what"],
            f"{target['figure']}",
            target["target"],
            "[green]met[/]" if target["met"] else "[red]not met[/]",
        )
    console.print(judged)
    check = result["check"]
    if check["violations"]:
        console.print(f"[red]invariant violations ({len(check['violations'])}):[/]")
        for violation in check["violations"][:20]:
            console.print(f"  - {violation}")
    else:
        console.print(f"[green]invariants hold[/] for all {check['sagas_checked']} sagas")


def _counts(result: dict[str, Any]) -> None:
    """Deliveries per transaction, statements per saga and the database's counters."""
    deliveries = result["deliveries_per_transaction"] or {}
    histogram = ", ".join(f"{k}: {v}" for k, v in deliveries.get("histogram", {}).items() if v)
    console.print(
        f"deliveries per consumer transaction ({result['main_phase']}): mean "
        f"{deliveries.get('mean')} over {deliveries.get('transactions')} transactions "
        f"({histogram}); by service {deliveries.get('by_service')}"
    )
    statements = result["statements_per_saga"]
    if statements is None:
        console.print("statements per saga: not counted (no server of our own)")
    else:
        by = ", ".join(f"{k} {v}" for k, v in statements.items() if k not in ("all", "top"))
        console.print(
            f"statements per saga, counted by PostgreSQL: {statements['all']} ({by}); "
            f"transactions per saga {result['transactions_per_saga']}"
        )
        for top in statements["top"][:8]:
            console.print(f"  {top['per_saga']:6.2f}  {top['service']}: {top['query'][:90]}")
    sessions = ", ".join(f"{k} {v}" for k, v in result["database_sessions_opened"].items())
    console.print(f"database sessions opened, by phase: {sessions}")
    console.print(f"deadlocks in the run: {result['deadlocks']}")


def _all(cpu: dict[str, float]) -> str:
    return f"{sum(v for k, v in cpu.items() if k != 'services (4 processes)'):.1f}" if cpu else "-"
