"""Compensations end to end: cancellations by the customer and by the deadline undo what was done."""

import uuid

import pytest

from harness.wait import eventually_sync
from tools.check import Report, check
from tools.client import unique

pytestmark = pytest.mark.e2e

#: Generous: the machine running the suite may be busy.
SETTLE_S = 60.0


def events_of(shop, order_id):
    return sorted(n["event"] for n in shop.notifications(order_id=order_id))


def stock_of(shop, order_id):
    reservation = shop.reservation(order_id)
    return reservation and reservation["status"]


def settled_payment(shop, order_id):
    """The payment of a cancelled order, once payment_service has undone or refused the charge."""

    def settled():
        payment = shop.payment(order_id)
        return payment if payment and payment["status"] in ("failed", "refunded") else None

    return eventually_sync(settled, SETTLE_S)


def checked(system) -> Report:
    """The invariant checker over this module's system, once it has come to rest."""
    urls = system.urls
    report = check(urls, system.vhost.api, system.vhost.name, wait=SETTLE_S, tokens=system.tokens)
    assert report.ok, report.violations
    return report


def test_a_customer_who_cancels_a_completed_order_is_refunded_and_the_stock_returns(shop):
    sku, customer = unique("kettle"), unique("fiona")
    shop.stock(sku, on_hand=10, price_cents=1000)
    shop.open_account(customer, balance_cents=10_000)
    order = shop.wait_until_terminal(shop.place(customer, [(sku, 2)])["order_id"])
    assert order["status"] == "completed"
    assert shop.balance(customer) == 8000
    assert shop.product(sku)["on_hand"] == 8

    response = shop.cancel(order["order_id"])

    assert response.status_code == 202
    cancelled = response.json()
    assert (cancelled["status"], cancelled["cancel_reason"]) == ("cancelled", "customer_request")
    assert settled_payment(shop, order["order_id"])["status"] == "refunded"
    assert shop.balance(customer) == 10_000
    eventually_sync(lambda: stock_of(shop, order["order_id"]) == "released", SETTLE_S)
    product = shop.product(sku)
    assert (product["on_hand"], product["reserved"], product["available"]) == (10, 0, 10)
    eventually_sync(
        lambda: (
            events_of(shop, order["order_id"])
            == ["OrderCancelled", "OrderCompleted", "PaymentRefunded"]
        ),
        SETTLE_S,
    )


def test_an_order_times_out_while_payment_is_down_and_no_money_moves_for_it(system, shop):
    sku, customer = unique("toaster"), unique("gus")
    shop.stock(sku, on_hand=5, price_cents=2500)
    shop.open_account(customer, balance_cents=10_000)
    payment_service = system["payment_service"]
    payment_service.stop()
    try:
        placed = shop.place(customer, [(sku, 2)])

        order = shop.wait_until_terminal(placed["order_id"], timeout=SETTLE_S)

        assert (order["status"], order["cancel_reason"]) == ("cancelled", "timeout")
        eventually_sync(lambda: stock_of(shop, placed["order_id"]) == "released", SETTLE_S)
        product = shop.product(sku)
        assert (product["on_hand"], product["reserved"]) == (5, 0)
    finally:
        payment_service.start()
        payment_service.wait_ready()

    # Back, payment reads the order's StockReserved and its OrderCancelled, in either order: it
    # refuses to charge, or charges and refunds.
    payment = settled_payment(shop, placed["order_id"])
    assert shop.balance(customer) == 10_000
    refunded = ["PaymentRefunded"] if payment["status"] == "refunded" else []
    eventually_sync(
        lambda: events_of(shop, placed["order_id"]) == sorted(["OrderCancelled", *refunded]),
        SETTLE_S,
    )
    checked(system)


def test_cancelling_an_order_twice_changes_nothing_the_second_time(shop):
    sku, customer = unique("teapot"), unique("hana")
    shop.stock(sku, on_hand=3, price_cents=700)
    shop.open_account(customer, balance_cents=5000)
    order = shop.wait_until_terminal(shop.place(customer, [(sku, 1)])["order_id"])
    assert order["status"] == "completed"

    first = shop.cancel(order["order_id"])
    second = shop.cancel(order["order_id"])

    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json() == first.json()
    eventually_sync(
        lambda: (
            events_of(shop, order["order_id"])
            == ["OrderCancelled", "OrderCompleted", "PaymentRefunded"]
        ),
        SETTLE_S,
    )
    assert shop.balance(customer) == 5000
    eventually_sync(lambda: shop.product(sku)["on_hand"] == 3, SETTLE_S)
    assert shop.order(order["order_id"]) == second.json()


def test_orders_cancelled_right_after_they_were_placed_cost_nothing_and_hold_no_stock(system, shop):
    sku, customer = unique("mug"), unique("ivan")
    shop.stock(sku, on_hand=20, price_cents=300)
    shop.open_account(customer, balance_cents=10_000)

    # Each cancellation races the saga: it may land while pending, reserved, paid or completed.
    order_ids = [shop.place(customer, [(sku, 2)])["order_id"] for _ in range(6)]
    responses = [shop.cancel(order_id) for order_id in order_ids]

    assert [r.status_code for r in responses] == [202] * 6
    for order_id in order_ids:
        assert_undone(shop, order_id)
    assert shop.balance(customer) == 10_000
    product = shop.product(sku)
    assert (product["on_hand"], product["reserved"]) == (20, 0)
    checked(system)


def assert_undone(shop, order_id):
    """A cancelled order left no charge, no stock held, and one notification per terminal event."""
    order = shop.order(order_id)
    assert (order["status"], order["cancel_reason"]) == ("cancelled", "customer_request")
    refunded = settled_payment(shop, order_id)["status"] == "refunded"
    eventually_sync(lambda: stock_of(shop, order_id) in ("released", "rejected"), SETTLE_S)
    # It may have completed before the cancellation landed: then it was charged and refunded.
    expected = [["OrderCancelled"]]
    if refunded:
        expected = [
            ["OrderCancelled", "PaymentRefunded"],
            ["OrderCancelled", "OrderCompleted", "PaymentRefunded"],
        ]
    eventually_sync(lambda: events_of(shop, order_id) in expected, SETTLE_S)


def test_cancelling_an_order_nobody_placed_is_not_found(shop):
    response = shop.cancel(str(uuid.uuid4()))

    assert response.status_code == 404
    assert "no order" in response.json()["detail"]
