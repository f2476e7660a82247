"""`make bench` in miniature: it runs, writes the result file docs/performance.md promises, and checks
every saga it placed. Speed is not judged here (the figures are `make bench`'s to print)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness.servers import Servers

TINY = [
    "--warmup", "1",
    "--low-rate", "5", "--low-duration", "2",
    "--rate", "10", "--duration", "3",
    "--concurrency", "4", "--closed-duration", "2",
    "--baseline-messages", "500", "--baseline-commit-s", "0.5", "--drain-rows", "500",
]  # fmt: skip


def test_the_benchmark_writes_its_figures_and_every_saga_it_placed_holds_the_invariants(
    servers: Servers, tmp_path: Path
) -> None:
    output = tmp_path / "bench.json"

    finished = subprocess.run(
        [sys.executable, "-m", "tools.bench", *TINY, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["sagas_per_s"] > 0
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p90"]
    assert result["latency_ms"]["p90"] <= result["latency_ms"]["p99"]
    assert result["baseline"]["publish_per_s"] > 0
    assert result["baseline"]["commit_per_s"] > 0
    assert result["baseline"]["broker_hop_ms"]["p50"] > 0
    assert result["relay_drain"]["per_s"] > 0
    assert {"order_service", "inventory_service", "payment_service", "notification_service"} <= set(
        result["cpu_ms_per_saga"]
    )
    assert result["params"]["rate"] == 10
    assert all(phase["outcomes"]["OrderCompleted"] > 0 for phase in result["phases"].values())
    placed = sum(phase["sagas"] for phase in result["phases"].values())
    assert result["check"] == {"sagas_checked": placed, "violations": []}
    assert str(output) in finished.stderr + finished.stdout
