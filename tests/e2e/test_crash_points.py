"""Deterministic crash points: a service started with `ORDER_SAGA_CRASH_AT=<point>` exits (code 70,
as abruptly as SIGKILL) the first time it gets there; restarted, it finishes the order, and every
effect happens exactly once.

- relay.after_publish: the broker has the event, the outbox row is not marked: published again.
- consumer.after_commit: the handler's transaction committed, the message is not acked: delivered
  again, and the inbox turns it into a no-op.
- consumer.before_commit: the handler ran, its transaction did not commit: delivered again, and
  handled as if for the first time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.system import System, running_system
from tests.support.wait import eventually_sync
from tools.check import check
from tools.client import Shop, Urls, unique

pytestmark = pytest.mark.e2e

CRASH_EXIT_CODE = 70
SETTLE_S = 60.0


@dataclass(frozen=True)
class Case:
    point: str
    service: str
    # Where the message at the crash point shows up again: (service, event, outcome counted there)
    again: tuple[str, str, str]

    def __str__(self) -> str:
        return f"{self.point}@{self.service}"


CASES = [
    Case(
        "relay.after_publish", "order_service", ("inventory_service", "OrderCreated", "duplicate")
    ),
    Case(
        "relay.after_publish", "payment_service", ("order_service", "PaymentSucceeded", "duplicate")
    ),
    Case(
        "consumer.after_commit",
        "payment_service",
        ("payment_service", "StockReserved", "duplicate"),
    ),
    Case(
        "consumer.after_commit",
        "notification_service",
        ("notification_service", "OrderCompleted", "duplicate"),
    ),
    Case(
        "consumer.before_commit",
        "inventory_service",
        ("inventory_service", "OrderCreated", "handled"),
    ),
    Case("consumer.before_commit", "order_service", ("order_service", "StockReserved", "handled")),
]


@pytest.fixture(scope="module")
def system(servers, tmp_path_factory) -> Iterator[System]:
    # A deadline far away: the order must complete however long the crashed service is down.
    with running_system(
        servers,
        tmp_path_factory.mktemp("logs"),
        extra_env={"ORDER_TIMEOUT_S": "600", "DB_POOL_SIZE": "5"},
    ) as running:
        yield running


@pytest.fixture
def shop(system) -> Iterator[Shop]:
    with Shop(urls_of(system), timeout=30) as client:
        yield client


def urls_of(system: System) -> Urls:
    return Urls(system.order, system.inventory, system.payment, system.notification)


def handled(system: System, service: str, event: str, outcome: str) -> float:
    """The service's `saga_messages_handled_total{event, outcome}` (its process's count so far)."""
    text = httpx.get(f"{system[service].url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "saga_messages_handled_total" and sample.labels == {
                "event": event,
                "outcome": outcome,
            }:
                return sample.value
    return 0.0


def restart(system: System, service: str, crash_at: str | None) -> None:
    process = system[service]
    process.stop()
    if crash_at is None:
        process.env.pop("ORDER_SAGA_CRASH_AT", None)
    else:
        process.env["ORDER_SAGA_CRASH_AT"] = crash_at
    process.start()
    process.wait_ready()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_service_that_dies_at_a_crash_point_recovers_with_exactly_one_effect(system, shop, case):
    sku, customer = unique("crash"), unique("ivy")
    shop.stock(sku, on_hand=10, price_cents=700)
    shop.open_account(customer, balance_cents=5000)
    restart(system, case.service, crash_at=case.point)
    seen_by, event, outcome = case.again
    seen_before = 0.0 if seen_by == case.service else handled(system, seen_by, event, outcome)

    placed = shop.place(customer, [(sku, 2)])

    process = system[case.service]
    eventually_sync(lambda: process.proc.poll() is not None, SETTLE_S)
    assert process.proc.returncode == CRASH_EXIT_CODE, process.log_tail()
    restart(system, case.service, crash_at=None)
    order = shop.wait_until_terminal(placed["order_id"], timeout=SETTLE_S)
    assert (order["status"], order["total_cents"]) == ("completed", 1400)
    eventually_sync(lambda: handled(system, seen_by, event, outcome) >= seen_before + 1, SETTLE_S)
    report = check(urls_of(system), system.vhost.api, system.vhost.name, wait=SETTLE_S)
    assert report.ok, report.violations
    assert shop.balance(customer) == 5000 - 1400
    payment = shop.payment(order["order_id"])
    assert (payment["status"], payment["amount_cents"]) == ("succeeded", 1400)
    product = shop.product(sku)
    assert (product["on_hand"], product["reserved"]) == (8, 0)
    assert shop.reservation(order["order_id"])["status"] == "committed"
    assert [n["event"] for n in shop.notifications(order_id=order["order_id"])] == [
        "OrderCompleted"
    ]
