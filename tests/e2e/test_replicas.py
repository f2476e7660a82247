"""Two processes each of inventory_service and payment_service, side by side (docs/spec.md §2): competing
consumers on the same queues, relays sharing one outbox through `FOR UPDATE SKIP LOCKED`, one
database per service. Both replicas take part, and every guarantee holds."""

from collections.abc import Iterator

import pytest

from harness.system import System, running_system
from harness.wait import eventually_sync
from tests.support.load import Load
from tools.check import Report, check
from tools.client import Shop

pytestmark = pytest.mark.e2e

REPLICATED = ("inventory_service", "payment_service")
ORDERS = 150


@pytest.fixture
def replicated(servers, tmp_path_factory) -> Iterator[System]:
    with running_system(servers, tmp_path_factory.mktemp("logs")) as system:
        for name in REPLICATED:
            system.add_replica(name).start()
        for name in REPLICATED:
            system[f"{name}#2"].wait_ready(timeout=60)
        yield system


def every_saga_ended_right(load: Load, system: System) -> Report:
    """Once every order the load placed has ended: the load's own account of each, and the
    invariant checker over the whole system, find nothing wrong."""
    with Shop(system.urls, timeout=30, tokens=system.tokens) as shop:
        eventually_sync(
            lambda: all(o["status"] in ("completed", "cancelled") for o in load.orders(shop)),
            timeout=120,
            interval=0.5,
        )
        assert load.verify(shop) == []
    report = check(system.urls, system.vhost.api, system.vhost.name, wait=60, tokens=system.tokens)
    assert report.violations == []
    return report


def test_two_replicas_of_inventory_and_payment_share_the_work_and_every_guarantee_holds(
    replicated: System,
) -> None:
    urls = replicated.urls
    load = Load(urls, replicated.tokens, rate=25, workers=5, cancel_share=0.1, seed=42)
    load.prepare()
    load.start()
    try:
        eventually_sync(lambda: len(load.placed) >= ORDERS, timeout=120, interval=0.1)
    finally:
        load.stop()
    report = every_saga_ended_right(load, replicated)
    assert report.counts["completed"] > 0
    assert report.counts["cancelled"] > 0

    for name in REPLICATED:
        for process in (replicated[name], replicated[f"{name}#2"]):
            assert process.metric("saga_messages_handled_total", outcome="handled") > 0, (
                f"{name} on {process.url} handled nothing"
            )
            assert process.metric("saga_outbox_published_total") > 0, (
                f"{name} on {process.url} published nothing"
            )
    reserved_by = [
        p.metric("saga_messages_handled_total", event="OrderCreated", outcome="handled")
        for p in (replicated["inventory_service"], replicated["inventory_service#2"])
    ]
    placed = sum(1 for order in load.placed if order.order_id)
    assert sum(reserved_by) == placed == report.counts["orders"]  # each by exactly one replica


def test_when_one_replica_of_each_is_killed_mid_load_the_other_finishes_every_saga(
    replicated: System,
) -> None:
    urls = replicated.urls
    load = Load(urls, replicated.tokens, rate=25, workers=5, cancel_share=0.1, seed=7)
    load.prepare()
    load.start()
    try:
        eventually_sync(lambda: len(load.placed) >= ORDERS // 2, timeout=120, interval=0.1)
        for name in REPLICATED:
            replicated[f"{name}#2"].kill()  # its unacked messages go back to the queue
        eventually_sync(lambda: len(load.placed) >= ORDERS, timeout=120, interval=0.1)
    finally:
        load.stop()
    every_saga_ended_right(load, replicated)
