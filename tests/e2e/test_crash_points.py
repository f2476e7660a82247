"""Deterministic crash points: a service started with `ORDER_SAGA_CRASH_AT=<point>` exits (code 70,
as abruptly as SIGKILL) the first time it gets there; restarted, it finishes the order, and every
effect happens exactly once.

- relay.after_publish: the broker has the event, the outbox row is not marked: published again.
- consumer.after_commit: the handler's transaction committed, the message is not acked: delivered
  again, and the inbox turns it into a no-op.
- consumer.before_commit: the handler ran, its transaction did not commit: delivered again, and
  handled as if for the first time.
- http.after_commit: `POST /orders` committed the order and its OrderCreated, the client got no
  answer: it retries with its Idempotency-Key and gets the same order, placed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from harness.system import System
from harness.wait import eventually_sync
from tools.check import check
from tools.client import unique

pytestmark = pytest.mark.e2e

CRASH_EXIT_CODE = 70
SETTLE_S = 60.0
#: A deadline far away: the order must complete however long the crashed service is down.
ORDER_TIMEOUT_S = 600.0


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


def handled(system: System, service: str, event: str, outcome: str) -> float:
    """The service's `saga_messages_handled_total{event, outcome}` (its process's count so far)."""
    return system[service].metric("saga_messages_handled_total", event=event, outcome=outcome)


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
    eventually_sync(lambda: not process.running, SETTLE_S)
    assert process.returncode == CRASH_EXIT_CODE, process.log_tail()
    restart(system, case.service, crash_at=None)
    order = shop.wait_until_terminal(placed["order_id"], timeout=SETTLE_S)
    assert (order["status"], order["total_cents"]) == ("completed", 1400)
    eventually_sync(lambda: handled(system, seen_by, event, outcome) >= seen_before + 1, SETTLE_S)
    report = check(
        system.urls, system.vhost.api, system.vhost.name, wait=SETTLE_S, tokens=system.tokens
    )
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


def test_an_order_whose_service_dies_before_answering_is_placed_once_when_the_client_retries(
    system, shop
):
    sku, customer, key = unique("crash"), unique("jo"), unique("key")
    shop.stock(sku, on_hand=10, price_cents=700)
    shop.open_account(customer, balance_cents=5000)
    restart(system, "order_service", crash_at="http.after_commit")

    with pytest.raises(httpx.TransportError):
        shop.place_raw(customer, [(sku, 1)], key=key)

    process = system["order_service"]
    eventually_sync(lambda: not process.running, SETTLE_S)
    assert process.returncode == CRASH_EXIT_CODE, process.log_tail()
    restart(system, "order_service", crash_at=None)
    retried = shop.place_raw(customer, [(sku, 1)], key=key)
    assert retried.status_code == 201, retried.text
    order = shop.wait_until_terminal(retried.json()["order_id"], timeout=SETTLE_S)
    assert (order["status"], order["total_cents"]) == ("completed", 700)
    assert [o["order_id"] for o in shop.orders(customer_id=customer)] == [order["order_id"]]
    assert shop.balance(customer) == 5000 - 700
    assert shop.product(sku)["on_hand"] == 9
