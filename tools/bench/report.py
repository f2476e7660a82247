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


def targets(
    params: dict[str, Any], main: dict[str, Any], low: dict[str, Any], drain: dict[str, Any]
) -> dict[str, Any]:
    """The targets of the issue, met or not, with the figures they were judged on."""
    throughput = main["sagas_per_s"] >= 300 and main["latency_ms"].get("p99", 1e9) <= 250
    return {
        "300_sagas_per_s_for_60s_p99_250ms": {
            "met": throughput and params["rate"] >= 300 and params["duration_s"] >= 60,
            "sagas_per_s": main["sagas_per_s"],
            "p99_ms": main["latency_ms"].get("p99"),
        },
        "20_per_s_p50_15ms_p99_50ms": {
            "met": low["latency_ms"].get("p50", 1e9) <= 15
            and low["latency_ms"].get("p99", 1e9) <= 50,
            "p50_ms": low["latency_ms"].get("p50"),
            "p99_ms": low["latency_ms"].get("p99"),
        },
        "relay_drain_0.7x_publish": {
            "met": drain["ratio_to_publish"] >= 0.7,
            "ratio": drain["ratio_to_publish"],
        },
    }


def _load(params: dict[str, Any]) -> str:
    if "concurrency" in params:
        return f"{params['concurrency']} at once, {params['duration_s']:g} s"
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
        "busy",
    ):
        table.add_column(column, justify="left" if column in ("phase", "load") else "right")
    for name, phase in result["phases"].items():
        lat, dwell = phase["latency_ms"], phase["outbox_dwell_ms"]["all"]
        table.add_row(
            name,
            _load(phase["params"]),
            f"{phase['sagas_per_s']}",
            *(f"{lat.get(k, '-')}" for k in ("p50", "p90", "p99", "max")),
            f"{dwell.get('p50', '-')}/{dwell.get('p99', '-')}",
            f"{phase['cpu_ms_per_saga'].get('services (4 processes)', '-')}",
            f"{phase['machine_cpu_busy']:.0%}",
        )
    console.print(table)
    hops = Table(title="where the time goes: hops of completed sagas, p50 / p90 ms")
    hops.add_column("hop")
    for name in ("low_rate", "throughput"):
        hops.add_column(name, justify="right")
    for hop in HOPS:
        cells = []
        for name in ("low_rate", "throughput"):
            found = result["phases"][name].get("hops_ms", {}).get(hop, {})
            cells.append(f"{found.get('p50', '-')} / {found.get('p90', '-')}")
        hops.add_row(hop, *cells)
    console.print(hops)
    cpu = Table(title="CPU ms per saga, throughput phase")
    cpu.add_column("process")
    cpu.add_column("ms", justify="right")
    for name, ms in result["cpu_ms_per_saga"].items():
        cpu.add_row(name, f"{ms}")
    console.print(cpu)
    base, ratios, drain = result["baseline"], result["ratios"], result["relay_drain"]
    console.print(
        f"raw baselines: {base['publish_per_s']:.0f} confirmed publishes/s, "
        f"{base['consume_ack_per_s']:.0f} consume+ack/s, {base['commit_per_s']:.0f} commits/s "
        f"({base['commit_connections']} connections; {base['commit_per_s_one_connection']:.0f} on one)"
    )
    console.print(
        f"raw latency: a broker hop (publish to delivery, one at a time) p50 "
        f"{base['broker_hop_ms']['p50']} ms, an insert+commit {base['commit_ms_one_connection']} "
        f"ms: a saga's chain of {HOPS_IN_CHAIN} hops and {COMMITS_IN_CHAIN} commits needs "
        f"{result['bound']['latency_floor_ms_if_only_raw_operations']} ms with no code at all"
    )
    console.print(
        f"saga traffic vs raw: publishes {ratios['publishes_per_s_vs_raw']:.0%}, deliveries "
        f"{ratios['deliveries_per_s_vs_raw']:.0%}, commits {ratios['commits_per_s_vs_raw']:.0%} "
        f"of what the servers do raw"
    )
    console.print(
        f"relay drain: {drain['per_s']:.0f} rows/s = {drain['ratio_to_publish']:.2f}x the raw "
        "confirmed-publish rate"
    )
    for name, target in result["targets"].items():
        mark = "[green]met[/]" if target["met"] else "[red]not met[/]"
        details = ", ".join(f"{k}={v}" for k, v in target.items() if k != "met")
        console.print(f"target {name}: {mark} ({details})")
    check = result["check"]
    if check["violations"]:
        console.print(f"[red]invariant violations ({len(check['violations'])}):[/]")
        for violation in check["violations"][:20]:
            console.print(f"  - {violation}")
    else:
        console.print(f"[green]invariants hold[/] for all {check['sagas_checked']} sagas")
