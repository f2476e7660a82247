"""The cluster fault suite: the saga on three RabbitMQ nodes behind haproxy and a PostgreSQL
server per service (`harness.cluster`), under the fault suite's mixed load, while broker nodes
crash, freeze, are partitioned off and restarted one by one, a memory alarm blocks every
publisher, and a service's database server crashes. Once healed, every guarantee must hold.

`make test` runs it (about 4 minutes); it needs `rabbitmq-server` and PostgreSQL's
`pg_createcluster` installed (and root, to run them as on a server): without them it fails,
saying what is missing. `SAGA_FAULTS_SEED` replays a run, `SAGA_FAULTS_REPORT=<file>` keeps its
figures.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from harness import http_client
from harness.cluster import LocalCluster, local_cluster
from harness.rabbitmq import Vhost
from harness.system import SERVICES, System, running_system
from harness.wait import eventually_sync
from tests.support.audit import audit_deliveries
from tests.support.cluster_faults import ClusterFaults, LeaderWatch
from tests.support.faults import (
    HEARTBEAT_S,
    RECONNECT_INTERVAL_S,
    BrokerUsers,
    engines_base,
    keep_and_judge,
)
from tests.support.load import Load
from tools.check import check, snapshot
from tools.client import Shop

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

RATE = 4.0
HEAL_S = 120.0
#: How long the memory alarm holds: POST /orders must answer meanwhile.
ALARM_S = 20.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with engines_base("cluster suite") as base, local_cluster(base, SERVICES) as started:
        yield started


def test_every_guarantee_holds_after_broker_node_and_database_server_faults_under_load(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    seed = int(os.environ.get("SAGA_FAULTS_SEED") or random.randrange(1_000_000))
    rng = random.Random(seed)
    began = time.monotonic()
    vhost = Vhost.create(cluster.servers)
    query = f"heartbeat={HEARTBEAT_S}&reconnect_interval={RECONNECT_INTERVAL_S}"
    try:
        with (
            BrokerUsers.create(vhost, SERVICES, query) as users,
            running_system(
                cluster.servers,
                tmp_path,
                vhost=vhost,
                database_servers=cluster.database_servers,
                extra_env={"DB_POOL_SIZE": "5"},
                per_service_env={s: {"AMQP_URL": url} for s, url in users.amqp_urls.items()},
            ) as system,
        ):
            faults = ClusterFaults(cluster, system, vhost, users, "", rng)
            faults.wait_whole()
            assert all(len(q["members"]) == 3 for q in faults.quorum_queues()), (
                "every quorum queue is replicated on the three nodes"
            )
            load = Load(system.urls, system.tokens, rate=RATE, seed=rng.randrange(1_000_000))
            load.prepare()
            baseline = snapshot(system.urls, system.tokens)
            watch = LeaderWatch(vhost)
            watch.start()
            load.start()
            try:
                eventually_sync(lambda: load.answers["POST /orders 201"] >= 20, timeout=60)
                inject(faults, system, load, rng)
                answered = load.answers["POST /orders 201"]
                eventually_sync(
                    lambda: load.answers["POST /orders 201"] >= answered + 20, timeout=90
                )
            finally:
                load.stop()
                watch.stop()
            for service in system.services.values():
                service.wait_ready(timeout=90)
            faults.wait_all_consumed()
            report = check(
                system.urls,
                vhost.api,
                vhost.name,
                baseline=baseline,
                wait=HEAL_S,
                tokens=system.tokens,
            )
            with Shop(system.urls, timeout=30, tokens=system.tokens) as shop:
                problems = load.verify(shop) if report.ok else []
                outcomes = load.outcomes(shop)
                longest = longest_saga_s(load.orders(shop))
            published, undelivered = audit_deliveries(system.databases)
            services = system.services.values()  # never restarted here: their counters hold
            batches = sum(s.metric("saga_consumer_batch_size_count") for s in services)
            batched = sum(s.metric("saga_consumer_batch_size_sum") for s in services)

            violations = [f"{v.guarantee} {v.subject}: {v.detail}" for v in report.violations]
            violations += problems + undelivered
            figures = {
                "seed": seed,
                "orders": len(load.placed),
                "kinds": dict(load.kinds),
                "outcomes": dict(outcomes),
                "events published": sum(published.values()),
                "faults": dict(faults.log.counts),
                "leader elections seen": watch.total,
                "longest completed saga s": longest,
                "deliveries handled in batches": f"{batched:.0f} in {batches:.0f}",
                "duplicates skipped": sum(
                    s.metric("saga_messages_handled_total", outcome="duplicate") for s in services
                ),
                "requests retried": sum(n for a, n in load.answers.items() if "retried" in a),
                "answers": dict(load.answers),
                "violations": len(violations),
                "seconds": round(time.monotonic() - began),
            }
            keep_and_judge(figures, faults.log.entries, violations, seed, tmp_path)
    finally:
        vhost.delete()


def inject(faults: ClusterFaults, system: System, load: Load, rng: random.Random) -> None:
    """Every cluster fault in a row, the cluster whole again between two."""
    faults.kill_busiest_node()
    faults.freeze_node(rng.choice(faults.cluster.nodes))
    faults.partition(faults.cluster.node(faults.leader_counts().most_common(1)[0][0]))
    faults.rolling_restart()
    faults.memory_alarm(ALARM_S, lambda: orders_taken_while_blocked(system, load))
    faults.crash_postgres(rng.choice(SERVICES))


def orders_taken_while_blocked(system: System, load: Load) -> None:
    """While the broker blocks publishers: order_service's readiness names the alarm, and the
    shop still takes orders (their events wait in the outbox)."""

    def says_why() -> bool:
        body = http_client.get(f"{system.order}/health/ready", timeout=5).json()
        return "blocks publishers" in body.get("failed", {}).get("relay", "")

    eventually_sync(says_why, timeout=15, interval=0.5)
    answered = load.answers["POST /orders 201"]
    eventually_sync(lambda: load.answers["POST /orders 201"] >= answered + 5, timeout=15)


def longest_saga_s(orders: list[dict]) -> float:
    """The longest time from placing an order to its completion, among the completed ones."""
    return round(
        max(
            (
                datetime.fromisoformat(o["updated_at"]) - datetime.fromisoformat(o["created_at"])
            ).total_seconds()
            for o in orders
            if o["status"] == "completed"
        ),
        1,
    )
