"""The order's state machine accepts events in any order and never leaves a terminal state."""

import pytest

from order_service.models import Order, Status

ITEMS = [{"sku": "A", "quantity": 2}]
PRICED = [{"sku": "A", "quantity": 2, "unit_price_cents": 250}]


def placed():
    return Order.place("alice", ITEMS, timeout_s=30)


def test_the_happy_path_reserves_pays_and_completes():
    order = placed()
    assert order.status == Status.PENDING
    assert order.mark_reserved(PRICED, 500)
    assert (order.status, order.total_cents) == (Status.RESERVED, 500)
    assert order.mark_paid(500)
    assert not order.complete(), "not complete before stock is committed"
    assert order.mark_stock_committed()
    assert order.complete()
    assert order.status == Status.COMPLETED


def test_stock_committed_before_payment_still_completes():
    order = placed()
    order.mark_reserved(PRICED, 500)
    assert order.mark_stock_committed()
    assert order.complete()
    assert not order.mark_paid(500), "a late PaymentSucceeded changes nothing"
    assert order.status == Status.COMPLETED


def test_payment_before_reservation_keeps_the_prices_coming():
    order = placed()
    assert order.mark_paid(500)
    assert order.mark_reserved(PRICED, 500)
    assert order.status == Status.PAID
    assert order.items[0]["unit_price_cents"] == 250


def test_completion_waits_for_a_known_total():
    order = placed()
    order.mark_stock_committed()
    assert not order.complete()
    order.mark_paid(500)
    assert order.complete()


@pytest.mark.parametrize("status_before", ["pending", "reserved", "paid", "completed"])
def test_a_cancellation_is_accepted_in_any_status_but_cancelled(status_before):
    order = placed()
    order.status = status_before
    assert order.cancel("customer_request")
    assert (order.status, order.cancel_reason) == (Status.CANCELLED, "customer_request")
    assert not order.cancel("timeout")
    assert order.cancel_reason == "customer_request"


def test_late_events_after_cancellation_change_nothing():
    order = placed()
    order.cancel("out_of_stock")
    assert not order.mark_reserved(PRICED, 500)
    assert not order.mark_paid(500)
    assert not order.mark_stock_committed()
    assert not order.complete()
    assert order.status == Status.CANCELLED
    assert order.total_cents is None
