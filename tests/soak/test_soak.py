"""The soak: the mixed load of the fault suite, for a long while at a rate the system keeps up
with, every process's resources sampled; a leak fails the run, and so does any broken guarantee.

`make soak` runs it (30 minutes at 13 orders/s: half what `make bench` sustained on the
development machine); `SAGA_SOAK_S`, `SAGA_SOAK_RATE` and `SAGA_SOAK_INTERVAL_S` change that. The
result file (`SAGA_SOAK_REPORT`, default `.run/soak/soak-<time>.json`) keeps every sample.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg
import pytest
from sqlalchemy.engine import make_url

from harness.servers import Servers
from harness.system import System, running_system
from tests.support.load import Load
from tools.check import check, snapshot
from tools.client import Shop
from tools.postgres import libpq

DURATION_S = float(os.environ.get("SAGA_SOAK_S", 1800))
RATE = float(os.environ.get("SAGA_SOAK_RATE", 13))
INTERVAL_S = float(os.environ.get("SAGA_SOAK_INTERVAL_S", 30))
#: Samples of the first minutes left out of the comparison: pools fill, caches warm up.
WARMUP_S = min(120.0, DURATION_S / 5)
#: How much a resource may grow between the first and the last fifth of the run (after the
#: warm-up) before it counts as a leak: memory by a share plus a little, counts by a few.
MEMORY_GROWTH = 0.10
MEMORY_SLACK_MB = 8.0
COUNT_SLACK = {"open_files": 4, "db_connections": 2, "broker_channels": 0}

pytestmark = pytest.mark.timeout(DURATION_S + 900)


def test_resources_stay_flat_and_every_guarantee_holds_after_a_long_steady_load(
    servers: Servers, tmp_path: Path
) -> None:
    with running_system(servers, tmp_path, extra_env={"DB_POOL_SIZE": "5"}) as system:
        load = Load(system.urls, system.tokens, rate=RATE, workers=12, seed=1)
        load.prepare()
        baseline = snapshot(system.urls, system.tokens)
        samples: list[dict] = []
        done = threading.Event()
        sampler = threading.Thread(target=_sample_every, args=(system, samples, done))
        began = time.monotonic()
        load.start()
        sampler.start()
        try:
            done.wait(DURATION_S)
        finally:
            done.set()
            sampler.join()
            load.stop()
        report = check(
            system.urls,
            system.vhost.api,
            system.vhost.name,
            baseline=baseline,
            wait=120,
            tokens=system.tokens,
        )
        with Shop(system.urls, timeout=30, tokens=system.tokens) as shop:
            problems = load.verify(shop) if report.ok else []
            outcomes = load.outcomes(shop)
        violations = [f"{v.guarantee} {v.subject}: {v.detail}" for v in report.violations]
        violations += problems
        leaks = find_leaks(samples)
        result = {
            "seconds": round(time.monotonic() - began),
            "rate": RATE,
            "orders": len(load.placed),
            "orders_per_s": round(len(load.placed) / DURATION_S, 2),
            "outcomes": dict(outcomes),
            "answers": dict(load.answers),
            "violations": violations,
            "leaks": leaks,
            "flat": summarize(samples),
            "samples": samples,
        }
        keep(result)
        assert not leaks, "resources grew:\n" + "\n".join(leaks)
        assert not violations, f"{len(violations)} violations:\n" + "\n".join(violations[:40])


def _sample_every(system: System, samples: list[dict], done: threading.Event) -> None:
    started = time.monotonic()
    while True:
        samples.append({"at_s": round(time.monotonic() - started), **sample(system)})
        if done.wait(INTERVAL_S):
            return


def sample(system: System) -> dict[str, dict[str, float]]:
    """Per service: resident memory (MiB), open files, database sessions, broker channels."""
    channels = {
        (c.get("client_properties") or {}).get("connection_name"): c.get("channels", 0)
        for c in system.vhost.connections()
    }
    figures: dict[str, dict[str, float]] = {}
    with psycopg.connect(libpq(system.servers.postgres_admin_url), autocommit=True) as admin:
        for name, service in system.services.items():
            process = psutil.Process(service.pid)
            database = make_url(system.databases[name]).database
            (sessions,) = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
            ).fetchone() or (0,)
            figures[name] = {
                "rss_mb": round(process.memory_info().rss / 2**20, 1),
                "open_files": process.num_fds(),
                "db_connections": sessions,
                "broker_channels": channels.get(name, 0),
            }
    return figures


def find_leaks(samples: list[dict]) -> list[str]:
    """Each resource of each service that grew from the first fifth of the run (after the warm-up)
    to the last fifth by more than its slack."""
    steady = [s for s in samples if s["at_s"] >= WARMUP_S]
    if len(steady) < 10:
        return [f"only {len(steady)} samples after the warm-up: too short a run to judge"]
    fifth = len(steady) // 5
    first, last = steady[:fifth], steady[-fifth:]
    leaks = []
    for service in steady[0]:
        if service == "at_s":
            continue
        before = statistics.median(s[service]["rss_mb"] for s in first)
        after = statistics.median(s[service]["rss_mb"] for s in last)
        if after > before * (1 + MEMORY_GROWTH) + MEMORY_SLACK_MB:
            leaks.append(f"{service}: memory {before} MiB -> {after} MiB")
        for resource, slack in COUNT_SLACK.items():
            before = max(s[service][resource] for s in first)
            after = max(s[service][resource] for s in last)
            if after > before + slack:
                leaks.append(f"{service}: {resource} {before} -> {after}")
    return leaks


def summarize(samples: list[dict]) -> dict[str, dict[str, str]]:
    """Per service and resource after the warm-up: "first -> last (min-max)"."""
    steady = [s for s in samples if s["at_s"] >= WARMUP_S] or samples
    summary: dict[str, dict[str, str]] = {}
    for service in steady[0]:
        if service == "at_s":
            continue
        summary[service] = {}
        for resource in steady[0][service]:
            values = [s[service][resource] for s in steady]
            summary[service][resource] = (
                f"{values[0]} -> {values[-1]} ({min(values)}-{max(values)})"
            )
    return summary


def keep(result: dict) -> None:
    default = Path(".run/soak") / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    target = Path(os.environ.get("SAGA_SOAK_REPORT") or default)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    brief = {k: v for k, v in result.items() if k != "samples"}
    print(f"soak ({target}):", json.dumps(brief, indent=2))
