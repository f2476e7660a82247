"""Before and after: the figures of `make bench` result files of two versions, run interleaved.

    python -m tools.bench.compare --before b1.json b2.json b3.json --after a1.json a2.json a3.json

Run the two versions in turn (before, after, before, after, …: the machine's speed drifts, and a
pair run side by side shares its drift), then compare: for each figure, the median of each side,
and the median of the after/before ratios taken pair by pair (the i-th before with the i-th
after), which is the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

#: The figures compared: a name, and its path in the result file.
FIGURES = (
    ("sustainable sagas/s", ("sustainable_sagas_per_s",)),
    ("CPU per saga vs raw", ("ratios", "cpu_vs_raw")),
    ("CPU ms per saga, all processes", ("bound", "measured_cpu_ms_per_saga_all_processes")),
    ("at 20/s p50 vs floor", ("ratios", "low_rate_p50_vs_floor")),
    ("at 20/s p99 vs floor", ("ratios", "low_rate_p99_vs_floor")),
    ("at 20/s p50 ms", ("low_rate_latency_ms", "p50")),
    ("sequential p50 ms", ("sequential_latency_ms", "p50")),
    ("sequential p99 ms", ("sequential_latency_ms", "p99")),
    ("relay drain vs raw publish", ("ratios", "relay_drain_vs_raw_publish")),
    ("statements per saga", ("statements_per_saga", "all")),
    ("transactions per saga", ("transactions_per_saga",)),
    ("deliveries per transaction", ("deliveries_per_transaction", "mean")),
    ("deadlocks", ("deadlocks",)),
)


def figure(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, path in FIGURES:
        b = [figure(r, path) for r in before]
        a = [figure(r, path) for r in after]
        ratios = [y / x for x, y in zip(b, a, strict=False) if x and y is not None]
        rows.append(
            {
                "figure": name,
                "before": _median(b),
                "after": _median(a),
                "after_vs_before": round(statistics.median(ratios), 3) if ratios else None,
                "pairs": len(ratios),
            }
        )
    return rows


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.compare", description=__doc__)
    parser.add_argument("--before", nargs="+", type=Path, required=True)
    parser.add_argument("--after", nargs="+", type=Path, required=True)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = compare(
        [json.loads(p.read_text()) for p in args.before],
        [json.loads(p.read_text()) for p in args.after],
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="before → after (medians; the ratio is the median of the pairs' ratios)")
    for column in ("figure", "before", "after", "after/before", "pairs"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in rows:
        table.add_row(
            row["figure"],
            f"{row['before']}",
            f"{row['after']}",
            f"{row['after_vs_before']}",
            f"{row['pairs']}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
