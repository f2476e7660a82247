"""`make bench` in miniature: it runs, writes the result file docs/performance.md promises, and checks
every saga it placed. Speed is not judged here (the figures are `make bench`'s to print): what is
checked is that each figure is there, consistent with the others, and that the search for the
sustainable rate follows its rule."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.servers import Servers
from tools.bench.hops import HOPS

SERVICES = {"order_service", "inventory_service", "payment_service", "notification_service"}

TINY = [
    "--warmup", "1",
    "--sequential-duration", "2",
    "--low-rate", "5", "--low-duration", "2",
    "--concurrency", "4", "--closed-duration", "2",
    "--first-rate", "4", "--step-duration", "3", "--search-s", "8",
    "--rate", "5", "--duration", "2",
    "--baseline-messages", "500", "--baseline-commit-s", "0.5", "--drain-rows", "500",
    "--no-built-in-variants", "--variant", "slow sweep:RELAY_SWEEP_INTERVAL_S=2",
]  # fmt: skip


def run_bench(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m tools.bench` to its end; past `timeout`, stopped with SIGTERM, on which it stops
    its services and its PostgreSQL server (a SIGKILL, subprocess.run's way, would leave them
    running), then the test fails with the end of its log."""
    command = [sys.executable, "-m", "tools.bench", *args]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as bench:
        try:
            stdout, stderr = bench.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            bench.terminate()
            try:
                _, stderr = bench.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                bench.kill()
                _, stderr = bench.communicate()
            pytest.fail(f"the benchmark ran past {timeout:.0f} s: {stderr[-3000:]}")
    return subprocess.CompletedProcess(command, bench.returncode, stdout, stderr)


@pytest.mark.timeout(400)  # past run_bench's own timeout and the bench's cleanup
def test_the_benchmark_writes_its_figures_and_every_saga_it_placed_holds_the_invariants(
    servers: Servers, tmp_path: Path
) -> None:
    output = tmp_path / "bench.json"

    finished = run_bench([*TINY, "--output", str(output)], timeout=300)

    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(output.read_text())
    phases = result["phases"]
    assert {"warmup", "idle", "sequential", "low_rate", "closed_loop", "throughput"} <= set(phases)
    assert all(p["outcomes"]["OrderCompleted"] > 0 for n, p in phases.items() if n != "idle")
    assert phases["idle"]["sagas"] == 0
    assert result["idle_cpu_ms_per_s"]["order_service"] > 0
    assert phases["sequential"]["params"]["concurrency"] == 1
    assert phases["throughput"]["params"]["rate"] == 5
    for latency in (result["sequential_latency_ms"], result["low_rate_latency_ms"]):
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert result["baseline"]["publish_per_s"] > 0
    assert result["baseline"]["commit_per_s"] > 0
    assert result["baseline"]["broker_hop_ms"]["p50"] > 0
    assert result["relay_drain"]["per_s"] > 0
    assert set(result["cpu_ms_per_saga"]) >= SERVICES
    assert {"postgresql", "rabbitmq", "bench (load + consumer)"} <= set(result["cpu_ms_per_saga"])

    # The search: up after a pass until a failure, down after a failure until a pass; the
    # sustainable rate is the highest step that passed, and a step passed by the rule.
    steps = result["steps"]
    assert steps
    assert steps[0]["rate"] == 4
    for step in steps:
        by_rule = (
            step["aborted"] is None
            and step["completed_ratio"] >= 0.98
            and step["p99_ms"] is not None
            and step["p99_ms"] <= 250
        )
        assert step["passed"] == by_rule, step
        assert f"step {step['rate']:g}/s" in phases
    for before, after in itertools.pairwise(steps):
        if not any(s["passed"] for s in steps[: steps.index(after)]):
            assert after["rate"] < before["rate"]
        elif not any(not s["passed"] for s in steps[: steps.index(after)]):
            assert after["rate"] > before["rate"]
    passed = [s["rate"] for s in steps if s["passed"]]
    assert result["sustainable_sagas_per_s"] == max(passed, default=0.0)

    ratios, limits = result["ratios"], result["bound"]
    assert ratios["cpu_vs_raw"] == round(
        limits["measured_cpu_ms_per_saga_all_processes"] / limits["raw_operations_cpu_ms_per_saga"],
        3,
    )
    assert ratios["cpu_vs_raw"] > 1  # the raw operations are part of what a saga does
    assert ratios["cpu_vs_raw_less_idle"] <= ratios["cpu_vs_raw"]
    assert result["main_phase"] == (f"step {max(passed):g}/s" if passed else "closed_loop")
    floor = limits["latency_floor_ms_if_only_raw_operations"]
    assert ratios["low_rate_p50_vs_floor"] == round(result["low_rate_latency_ms"]["p50"] / floor, 3)
    assert ratios["low_rate_p99_vs_floor"] >= ratios["low_rate_p50_vs_floor"] > 0
    assert limits["max_sagas_per_s_if_only_raw_operations"] > 0

    # Where the time goes, hop by hop: in both quiet phases and at the main one.
    for name in ("sequential", "low_rate", result["main_phase"]):
        hops = phases[name]["hops_ms"]
        assert list(hops) == list(HOPS), name
        assert all(0 <= hop["p50"] <= hop["p90"] for hop in hops.values()), name

    deliveries = result["deliveries_per_transaction"]
    assert deliveries["transactions"] > 0
    assert deliveries["mean"] >= 1
    assert sum(deliveries["histogram"].values()) == deliveries["transactions"]
    assert set(deliveries["by_service"]) == SERVICES
    statements = result["statements_per_saga"]
    assert statements is not None, "the benchmark's own PostgreSQL server counts statements"
    assert statements["all"] > 0
    assert set(statements) >= SERVICES
    assert statements["top"]
    assert all(s["service"] in SERVICES for s in statements["top"])
    assert result["transactions_per_saga"] > 0
    assert set(result["database_sessions_opened"]) == set(phases)
    assert all(n >= 0 for n in result["database_sessions_opened"].values())
    assert result["deadlocks"] == 0
    assert len(result["cpu_counted"]) == 4

    # The comparison phase: the services restarted with its variables, a step at the rate of
    # the sustained one (or the last tried), measured like the others.
    variant = result["variants"]["slow sweep"]
    assert variant["env"] == {"RELAY_SWEEP_INTERVAL_S": "2"}
    assert variant["rate"] == (max(passed) if passed else steps[-1]["rate"])
    assert variant["phase"] == "variant slow sweep"
    assert variant["phase"] in phases
    assert set(variant["cpu_ms_per_saga"]) >= SERVICES
    assert variant["offered"] > 0
    assert variant["aborted"] is None  # a comparison runs its whole step, pass or fail
    compared = phases[variant["phase"]]
    assert compared["sagas"] + sum(compared["errors"].values()) == variant["offered"]

    targets = result["targets"]
    assert {
        "cpu_vs_raw",
        "sustainable_sagas_per_s",
        "sustainable_vs_raw_bound",
        "low_rate_p50_vs_floor",
        "low_rate_p99_vs_floor",
        "sequential_p50_ms",
        "relay_drain_vs_raw_publish",
        "deadlocks",
    } <= set(targets)
    assert targets["cpu_vs_raw"]["figure"] == ratios["cpu_vs_raw"]
    assert targets["cpu_vs_raw"]["met"] == (ratios["cpu_vs_raw"] <= 2.5)
    assert targets["invariant_violations"] == {**targets["invariant_violations"], "met": True}

    placed = sum(phase["sagas"] for phase in phases.values())
    assert result["check"] == {"sagas_checked": placed, "violations": []}
    assert str(output) in finished.stderr + finished.stdout
    assert "targets (issue 10)" in finished.stderr
