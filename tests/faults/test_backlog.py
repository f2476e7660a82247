"""A long outage with a backlog behind it: payment_service down for twice the order deadline while
orders keep coming at 20/s, then back. Every order ends (completed, or cancelled: for its reason,
or for the deadline the outage made it miss), none of the timed-out ones costs its customer
anything, every guarantee holds, and the time the saga took to catch up is reported: until every
order had ended, and until the system was at rest (queues drained, the checker clean)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness.servers import Servers
from harness.system import running_system
from harness.wait import eventually_sync, poll
from tests.support.audit import audit_deliveries
from tests.support.load import Load
from tools.check import check, snapshot
from tools.client import Shop

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

RATE = 20.0
ORDER_TIMEOUT_S = 10.0
OUTAGE_S = 2 * ORDER_TIMEOUT_S
TERMINAL = ("completed", "cancelled")


def test_orders_placed_through_a_long_payment_outage_all_end_and_the_late_ones_cost_nothing(
    servers: Servers, tmp_path: Path
) -> None:
    env = {"DB_POOL_SIZE": "5", "ORDER_TIMEOUT_S": str(ORDER_TIMEOUT_S)}
    with running_system(servers, tmp_path, extra_env=env) as system:
        load = Load(system.urls, system.tokens, rate=RATE, workers=16, seed=7)
        load.prepare()
        baseline = snapshot(system.urls, system.tokens)
        payment = system["payment_service"]
        load.start()
        try:
            eventually_sync(lambda: load.answers["POST /orders 201"] >= 40, timeout=60)
            payment.kill()
            placed_before = load.answers["POST /orders 201"]
            time.sleep(OUTAGE_S)
            placed_during = load.answers["POST /orders 201"] - placed_before
            payment.start()
            payment.wait_ready(timeout=60)
            back = time.monotonic()
            time.sleep(5)  # orders keep coming while payment works through its backlog
        finally:
            load.stop()
        with Shop(system.urls, timeout=30, tokens=system.tokens) as shop:
            orders = poll(
                lambda: load.orders(shop),
                lambda found: all(o["status"] in TERMINAL for o in found),
                timeout=180,
                interval=0.5,
            )
            ended_s = time.monotonic() - back
            # At rest: payment's queues drained, every guarantee checked (the broker's queue
            # statistics lag by a few seconds).
            report = check(
                system.urls,
                system.vhost.api,
                system.vhost.name,
                baseline=baseline,
                wait=120,
                tokens=system.tokens,
            )
            at_rest_s = time.monotonic() - back
            problems = load.verify(shop)
            outcomes = load.outcomes(shop)
        _, undelivered = audit_deliveries(system.databases)
        figures = {
            "orders": len(load.placed),
            "placed while payment was down": placed_during,
            "outage s": OUTAGE_S,
            "outcomes": dict(outcomes),
            "payment back -> every order ended s": round(ended_s, 1),
            "payment back -> at rest, checker clean s": round(at_rest_s, 1),
        }
        print("backlog:", json.dumps(figures))

        assert all(o["status"] in TERMINAL for o in orders), "an order never ended"
        assert placed_during >= RATE * OUTAGE_S / 2, f"the load slowed down: {placed_during}"
        assert outcomes["cancelled: timeout"] > 0, "the outage made no order miss its deadline"
        # `verify` holds each balance to its deposits minus the completed orders: an order that
        # timed out was never charged, or was refunded.
        violations = [f"{v.guarantee} {v.subject}: {v.detail}" for v in report.violations]
        violations += problems + undelivered
        assert not violations, "\n".join(violations[:40])
