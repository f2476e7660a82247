"""`python -m tools.bench`: the command line of the benchmark (`--help`), the run in its own world,
the result file and the report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import uvloop
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import tools.bench
from tools.bench.report import console, report
from tools.bench.run import Settings, Variant, built_in_variants, run
from tools.bench.world import describe_machine, isolated_world

#: Where results go by default, under the working directory (the repository, for `make bench`).
RESULTS = Path(".run") / "bench"
#: Where the "tracing on" phase's services write their spans (emptied at each run).
TRACES = RESULTS / "traces"


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=(tools.bench.__doc__ or "").split("\n")[0]
    )
    add = parser.add_argument
    add("--low-rate", type=float, default=20, help="low-rate phase: orders/s (20)")
    add("--low-duration", type=float, default=15, help="low-rate phase: seconds (15)")
    add(
        "--sequential-duration",
        type=float,
        default=10,
        help="sequential phase: one order at a time, seconds; 0 skips (10)",
    )
    add(
        "--concurrency",
        type=int,
        default=32,
        help="closed loop (the first estimate of the search): customers at once (32)",
    )
    add("--closed-duration", type=float, default=10, help="closed loop: seconds (10)")
    add("--step-duration", type=float, default=20, help="each step of the search: seconds (20)")
    add(
        "--search-s",
        type=float,
        default=90,
        help="no new step once the search took this long and a step has passed (90)",
    )
    add("--refinements", type=int, default=2, help="steps halving the bracket at the end (2)")
    add(
        "--first-rate",
        type=float,
        default=None,
        help="the search's first rate (default: 0.6x the closed loop's sagas/s)",
    )
    add(
        "--rate",
        type=float,
        default=None,
        help="also a throughput phase: an open loop at this rate (orders/s), after the search",
    )
    add("--duration", type=float, default=20, help="the throughput phase: seconds (20)")
    add("--warmup", type=float, default=3, help="warmup seconds at 50/s (3)")
    add("--skus", type=int, default=200)
    add("--customers", type=int, default=1000)
    add("--baseline-messages", type=int, default=4000)
    add("--baseline-commit-s", type=float, default=2.0)
    add("--commit-connections", type=int, default=8)
    add("--drain-rows", type=int, default=4000)
    add("--saga-timeout", type=float, default=60.0, help="give up on a saga after this (60 s)")
    add("--seed", type=int, default=1)
    add(
        "--profile",
        type=Path,
        default=None,
        help="py-spy each service during a step at the sustainable rate, into this folder",
    )
    add("--output", type=Path, default=None, help="result file (.run/bench/bench-<time>.json)")
    add(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the services, in every phase",
    )
    add(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE,…",
        help="a comparison phase: the services restarted with these variables, a step at the"
        " sustainable rate (repeatable)",
    )
    add(
        "--no-built-in-variants",
        action="store_true",
        help="skip the comparison phases of the services' features (tracing on)",
    )
    add(
        "--shared-postgres",
        action="store_true",
        help="run on the shared PostgreSQL server (SAGA_TEST_POSTGRES_URL) rather than one of"
        " the benchmark's own: statements are then not counted",
    )
    args = parser.parse_args(argv)
    return Settings(
        low_rate=args.low_rate,
        low_duration=args.low_duration,
        sequential_duration=args.sequential_duration,
        concurrency=args.concurrency,
        closed_duration=args.closed_duration,
        step_duration=args.step_duration,
        search_s=args.search_s,
        refinements=args.refinements,
        first_rate=args.first_rate,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
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
        variants=[
            *([] if args.no_built_in_variants else built_in_variants(TRACES.resolve())),
            *(Variant.parse(text) for text in args.variant),
        ],
        own_postgres=not args.shared_postgres,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    shutil.rmtree(TRACES, ignore_errors=True)
    # Stopped by a signal, the run still stops its services and drops its vhost and databases.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    with isolated_world(settings.service_env, settings.own_postgres) as world:
        ready = time.perf_counter()
        machine = describe_machine(world.system.servers)
        machine["postgresql_server"] = (
            "the benchmark's own (pg_stat_statements preloaded)" if world.postgres_pid else "shared"
        )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            result = uvloop.run(run(settings, world, progress))
        ran = time.perf_counter()
    params = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()
    }
    result = {
        "started_at": started.isoformat(),
        "run_s": round(time.perf_counter() - clock, 1),
        "stages_s": {
            "setup": round(ready - clock, 1),
            **result.pop("stages_s"),
            "teardown": round(time.perf_counter() - ran, 1),
        },
        "command": "python -m tools.bench " + " ".join(sys.argv[1:]),
        "machine": machine,
        "params": params,
        **result,
    }
    output = settings.output or (RESULTS / f"bench-{started:%Y%m%dT%H%M%S}.json").resolve()
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
