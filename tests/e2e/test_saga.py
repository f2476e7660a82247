"""The saga end to end: four real service processes, driven over HTTP as a customer would."""

import pytest

from harness.wait import eventually_sync
from tools.client import unique

pytestmark = pytest.mark.e2e


def test_an_order_completes_with_the_right_total_charge_stock_and_one_notification(shop):
    sku, customer = unique("widget"), unique("alice")
    shop.stock(sku, on_hand=10, price_cents=1250)
    shop.open_account(customer, balance_cents=10_000)

    placed = shop.place(customer, [(sku, 3)])
    assert placed["status"] == "pending"

    order = shop.wait_until_terminal(placed["order_id"])
    assert order["status"] == "completed"
    assert order["total_cents"] == 3750
    assert order["items"] == [{"sku": sku, "quantity": 3, "unit_price_cents": 1250}]
    assert shop.balance(customer) == 10_000 - 3750
    assert shop.payment(placed["order_id"])["status"] == "succeeded"
    product = shop.product(sku)
    assert (product["on_hand"], product["reserved"], product["available"]) == (7, 0, 7)
    assert shop.reservation(placed["order_id"])["status"] == "committed"
    eventually_sync(
        lambda: (
            [n["event"] for n in shop.notifications(order_id=placed["order_id"])]
            == ["OrderCompleted"]
        )
    )


def test_an_order_for_more_than_is_in_stock_is_cancelled_and_nothing_is_charged(shop):
    sku, customer = unique("gadget"), unique("bob")
    shop.stock(sku, on_hand=1, price_cents=500)
    shop.open_account(customer, balance_cents=10_000)

    order = shop.wait_until_terminal(shop.place(customer, [(sku, 2)])["order_id"])

    assert (order["status"], order["cancel_reason"]) == ("cancelled", "out_of_stock")
    assert shop.balance(customer) == 10_000
    payment = shop.payment(order["order_id"])  # payment only hears of the cancellation
    assert payment is None or (payment["status"], payment["amount_cents"]) == ("failed", 0)
    assert shop.product(sku)["available"] == 1
    eventually_sync(
        lambda: (
            [n["event"] for n in shop.notifications(order_id=order["order_id"])]
            == ["OrderCancelled"]
        )
    )


def test_an_order_for_an_unknown_product_is_cancelled(shop):
    customer = unique("carol")
    shop.open_account(customer, balance_cents=10_000)

    order = shop.wait_until_terminal(shop.place(customer, [(unique("nothing"), 1)])["order_id"])

    assert (order["status"], order["cancel_reason"]) == ("cancelled", "unknown_product")
    assert shop.balance(customer) == 10_000


def test_an_order_the_customer_cannot_pay_for_is_cancelled_and_its_stock_released(shop):
    sku, customer = unique("gizmo"), unique("dave")
    shop.stock(sku, on_hand=5, price_cents=4000)
    shop.open_account(customer, balance_cents=1000)

    order = shop.wait_until_terminal(shop.place(customer, [(sku, 1)])["order_id"])

    assert (order["status"], order["cancel_reason"]) == ("cancelled", "insufficient_funds")
    assert shop.balance(customer) == 1000
    assert shop.payment(order["order_id"])["status"] == "failed"
    eventually_sync(lambda: shop.reservation(order["order_id"])["status"] == "released")
    product = shop.product(sku)
    assert (product["on_hand"], product["reserved"]) == (5, 0)


def test_an_order_from_a_customer_without_an_account_is_cancelled(shop):
    sku = unique("doohickey")
    shop.stock(sku, on_hand=5, price_cents=100)

    order = shop.wait_until_terminal(shop.place(unique("nobody"), [(sku, 1)])["order_id"])

    assert (order["status"], order["cancel_reason"]) == ("cancelled", "no_account")
    eventually_sync(lambda: shop.product(sku)["reserved"] == 0)


def test_a_retried_post_with_one_idempotency_key_makes_one_order(shop):
    sku, customer = unique("thing"), unique("erin")
    shop.stock(sku, on_hand=5, price_cents=100)
    shop.open_account(customer, balance_cents=1000)
    key = unique("key")

    first = shop.place_raw(customer, [(sku, 1)], key=key)
    again = shop.place_raw(customer, [(sku, 1)], key=key)
    other_body = shop.place_raw(customer, [(sku, 2)], key=key)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert other_body.status_code == 422
    assert len(shop.orders(customer_id=customer)) == 1
