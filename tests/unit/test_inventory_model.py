"""A product's stock adds up through reserve, sell and return; a reservation moves only forward,
whatever order its events come in."""

import uuid

import pytest

from inventory_service.models import Product, Reservation, Status, StockBelowReserved, quantities

PRICED = [{"sku": "lamp", "quantity": 2, "unit_price_cents": 4000}]
LINES = [{"sku": "lamp", "quantity": 2}]


def lamp(on_hand: int = 10) -> Product:
    return Product(sku="lamp", name="Lamp", price_cents=4000, on_hand=on_hand, reserved=0)


def held() -> Reservation:
    return Reservation.hold(uuid.uuid4(), "alice", PRICED)


def test_reserving_then_selling_takes_the_units_off_the_shelf():
    product = lamp()
    product.reserve(3)
    assert (product.on_hand, product.reserved, product.available) == (10, 3, 7)
    product.sell(3)
    assert (product.on_hand, product.reserved, product.available) == (7, 0, 7)


def test_unreserving_gives_the_units_back_and_a_return_restocks():
    product = lamp()
    product.reserve(4)
    product.unreserve(4)
    assert (product.on_hand, product.reserved) == (10, 0)
    product.take_back(2)
    assert (product.on_hand, product.available) == (12, 12)


def test_stock_cannot_be_set_below_what_is_reserved():
    product = lamp()
    product.reserve(5)
    with pytest.raises(StockBelowReserved, match="on_hand 4 is below the 5 units of lamp"):
        product.update("Lamp", 4500, on_hand=4)
    assert (product.on_hand, product.price_cents) == (10, 4000), "a refused update changes nothing"
    product.update("Desk lamp", 4500, on_hand=5)
    assert (product.name, product.price_cents, product.available) == ("Desk lamp", 4500, 0)


def test_a_held_reservation_is_priced_at_the_moment():
    reservation = held()
    assert (reservation.status, reservation.amount_cents) == (Status.RESERVED, 8000)
    assert reservation.quantities() == {"lamp": 2}


def test_quantities_add_up_a_sku_listed_twice_in_sku_order():
    lines = [{"sku": "b", "quantity": 1}, {"sku": "a", "quantity": 2}, {"sku": "b", "quantity": 3}]
    assert list(quantities(lines).items()) == [("a", 2), ("b", 4)]


def test_only_a_live_reservation_is_sold():
    reservation = held()
    assert reservation.commit()
    assert reservation.status == Status.COMMITTED
    assert not reservation.commit(), "a second PaymentSucceeded sells nothing more"


def test_a_failed_payment_releases_held_stock_but_never_undoes_a_sale():
    reservation = held()
    assert reservation.release(return_sold=False)
    assert reservation.status == Status.RELEASED
    assert not reservation.release(return_sold=True), "released once"

    sold = held()
    sold.commit()
    assert not sold.release(return_sold=False)
    assert sold.status == Status.COMMITTED
    assert sold.release(return_sold=True), "a cancellation returns sold stock"
    assert sold.status == Status.RELEASED


def test_a_refused_reservation_holds_nothing_and_cannot_be_sold_or_released():
    refused = Reservation.refuse(uuid.uuid4(), "alice", LINES)
    assert (refused.status, refused.amount_cents) == (Status.REJECTED, 0)
    assert refused.items == [{"sku": "lamp", "quantity": 2, "unit_price_cents": None}]
    assert not refused.commit()
    assert not refused.release(return_sold=True)


def test_a_tombstone_refuses_its_late_order_once():
    tombstone = Reservation.tombstone(uuid.uuid4(), "alice")
    assert tombstone.is_tombstone
    assert not tombstone.commit(), "nothing to sell"
    assert tombstone.refuse_cancelled(LINES)
    assert (tombstone.status, tombstone.is_tombstone) == (Status.REJECTED, False)
    assert not tombstone.refuse_cancelled(LINES), "a copy of OrderCreated is not answered again"


def test_only_a_tombstone_refuses_a_cancelled_order():
    reservation = held()
    assert not reservation.refuse_cancelled(LINES)
    assert reservation.status == Status.RESERVED
