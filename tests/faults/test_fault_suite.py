"""The fault suite: a mixed load runs while processes are killed, paused and cut off, the broker
drops connections, the databases drop sessions, then the whole broker stops and the whole
PostgreSQL server restarts; once healed, every guarantee must hold.

The system runs on a RabbitMQ node and a PostgreSQL server of the test's own
(`harness.cluster.OwnServers`), so that its global faults strike nothing else and it runs beside
the rest of `make test`; like the cluster suite, it needs `rabbitmq-server` and `pg_createcluster`
installed (and root), and fails saying what is missing. `make test-faults` runs it alone.
`SAGA_FAULTS_SEED` replays a run's random choices; `SAGA_FAULTS_REPORT=<file>` keeps its figures.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import OwnServers, own_servers
from harness.rabbitmq import Vhost
from harness.system import SERVICES, running_system
from harness.wait import eventually_sync
from tests.support.audit import audit_deliveries
from tests.support.faults import (
    HEARTBEAT_S,
    RECONNECT_INTERVAL_S,
    BrokerUsers,
    Faults,
    engines_base,
    keep_and_judge,
)
from tests.support.load import Load
from tools.check import check, snapshot
from tools.client import Shop

pytestmark = [pytest.mark.faults, pytest.mark.timeout(480)]

#: Orders per second the clients aim at: moderate, for a busy two-core machine.
RATE = 4.0
#: How long the saga may take, once the faults are over, to bring everything to rest: an order
#: delayed past its deadline is cancelled by the sweeper, then compensated.
HEAL_S = 120.0
#: Seconds between two faults, drawn at random: the system is at work, with a few orders in flight,
#: when each one strikes.
GAP_S = (0.5, 2.0)


@pytest.fixture(scope="module")
def own() -> Iterator[OwnServers]:
    with engines_base("fault suite") as base, own_servers(base) as started:
        yield started


def test_every_guarantee_holds_after_crashes_and_broker_and_database_faults_under_load(
    own: OwnServers, tmp_path: Path
) -> None:
    seed = int(os.environ.get("SAGA_FAULTS_SEED") or random.randrange(1_000_000))
    rng = random.Random(seed)
    began = time.monotonic()
    servers = own.servers
    vhost = Vhost.create(servers)
    query = f"heartbeat={HEARTBEAT_S}&reconnect_interval={RECONNECT_INTERVAL_S}"
    try:
        with (
            BrokerUsers.create(vhost, SERVICES, query) as users,
            running_system(
                servers,
                tmp_path,
                vhost=vhost,
                extra_env={"DB_POOL_SIZE": "5"},  # a shared PostgreSQL: 40 sessions at most
                per_service_env={s: {"AMQP_URL": url} for s, url in users.amqp_urls.items()},
            ) as system,
        ):
            urls = system.urls
            faults = Faults(system, vhost, users, servers.postgres_admin_url, rng, own=own)
            load = Load(urls, system.tokens, rate=RATE, seed=rng.randrange(1_000_000))
            load.prepare()
            baseline = snapshot(urls, system.tokens)

            load.start()
            try:
                # Faults strike a system at work: once the first orders have been answered.
                eventually_sync(lambda: load.answers["POST /orders 201"] >= 20, timeout=60)
                inject(faults, rng)
                # ...and the load goes on until the healed system has answered 20 more.
                answered = load.answers["POST /orders 201"]
                eventually_sync(
                    lambda: load.answers["POST /orders 201"] >= answered + 20, timeout=90
                )
            finally:
                load.stop()
            for service in system.services.values():
                if not service.running:
                    service.start()
                service.wait_ready(timeout=90)
            faults.wait_all_consumed()
            report = check(
                urls,
                vhost.api,
                vhost.name,
                baseline=baseline,
                wait=HEAL_S,
                tokens=system.tokens,
            )
            with Shop(urls, timeout=30, tokens=system.tokens) as shop:
                problems = load.verify(shop) if report.ok else []
                outcomes = load.outcomes(shop)
            published, undelivered = audit_deliveries(system.databases)

            violations = [f"{v.guarantee} {v.subject}: {v.detail}" for v in report.violations]
            violations += problems + undelivered
            figures = {
                "seed": seed,
                "orders": len(load.placed),
                "kinds": dict(load.kinds),
                "outcomes": dict(outcomes),
                "events published": sum(published.values()),
                "faults injected": len(faults.log),
                "faults": dict(faults.log.counts),
                "requests retried": sum(n for a, n in load.answers.items() if "retried" in a),
                "answers": dict(load.answers),
                "checked": report.counts,
                "violations": len(violations),
                "seconds": round(time.monotonic() - began),
            }
            keep_and_judge(figures, faults.log.entries, violations, seed, tmp_path)
    finally:
        vhost.delete()


def inject(faults: Faults, rng: random.Random) -> None:
    """Every local fault, in a row, while the load runs; then the global ones."""
    for _ in range(2):  # each service killed at a random moment, twice
        for name in rng.sample(SERVICES, len(SERVICES)):
            time.sleep(rng.uniform(*GAP_S))
            faults.kill_and_restart(name, down_s=rng.uniform(0.5, 2.0))
    faults.kill_storm(rng.choice(["inventory_service", "payment_service", "order_service"]))
    time.sleep(rng.uniform(*GAP_S))
    faults.pause_past_heartbeat(rng.choice(SERVICES))
    time.sleep(rng.uniform(*GAP_S))
    faults.close_all_connections()
    time.sleep(rng.uniform(*GAP_S))
    faults.cut_off(rng.choice(SERVICES), seconds=10)
    for _ in range(2):
        time.sleep(rng.uniform(*GAP_S))
        faults.terminate_sessions()
    time.sleep(rng.uniform(*GAP_S))
    faults.databases_down(seconds=6)
    time.sleep(rng.uniform(*GAP_S))
    faults.restart_broker()
    faults.wait_reconnected(SERVICES)
    time.sleep(rng.uniform(*GAP_S))
    faults.restart_postgres()
