"""The invariant checker (`make check`) over a real system: silent when all is well, and it names
what is wrong when money, notifications, stock or dead-letter queues were tampered with."""

import contextlib
import uuid

import pytest
from sqlalchemy import create_engine, text

from contracts import OrderCompleted, encode
from harness.wait import eventually_sync
from tools.check import Report, check, snapshot
from tools.client import Shop, unique

pytestmark = pytest.mark.e2e

#: Generous: the machine running the suite may be busy.
SETTLE_S = 60.0


def checked(system, **options) -> Report:
    return check(system.urls, system.vhost.api, system.vhost.name, tokens=system.tokens, **options)


@contextlib.contextmanager
def database_of(system, service):
    engine = create_engine(system[service].env["DATABASE_URL"])
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def history(system):
    """A mix of orders, all ended: completed, out of stock, unknown product, short of money, no
    account, cancelled after completion. Returns the stock baseline taken before them."""
    with Shop(system.urls, tokens=system.tokens) as shop:
        book, lamp = unique("book"), unique("lamp")
        shop.stock(book, on_hand=10, price_cents=1500)
        shop.stock(lamp, on_hand=2, price_cents=4000)
        rich, poor = unique("rich"), unique("poor")
        shop.open_account(rich, balance_cents=20_000)
        shop.open_account(poor, balance_cents=1000)
        shop.deposit(poor, 500)
        baseline = snapshot(system.urls, system.tokens)

        orders = [
            (rich, [(book, 2)]),
            (rich, [(lamp, 3)]),
            (rich, [(unique("nothing"), 1)]),
            (poor, [(lamp, 1)]),
            (unique("nobody"), [(book, 1)]),
            (rich, [(book, 1), (lamp, 1)]),
        ]
        ended = [
            shop.wait_until_terminal(shop.place(customer, items)["order_id"], SETTLE_S)
            for customer, items in orders
        ]
        assert [(o["status"], o["cancel_reason"]) for o in ended] == [
            ("completed", None),
            ("cancelled", "out_of_stock"),
            ("cancelled", "unknown_product"),
            ("cancelled", "insufficient_funds"),
            ("cancelled", "no_account"),
            ("completed", None),
        ]
        assert shop.cancel(ended[-1]["order_id"]).status_code == 202
        return {"baseline": baseline, "rich": rich, "book": book, "orders": ended}


def test_after_a_mix_of_orders_the_checker_finds_nothing_wrong(system, history):
    report = checked(system, baseline=history["baseline"], wait=SETTLE_S)

    assert report.violations == []
    assert (report.counts["orders"], report.counts["accounts"], report.counts["skus"]) == (6, 2, 2)
    # one per ending (2 completed, 5 cancelled, one of them after completing) and 1 refund
    assert report.counts["notifications"] == 8
    assert report.counts["queues"] == 2 * 14  # each consumed event's queue and its .dlq


def test_the_checker_names_an_account_whose_balance_was_changed_behind_its_back(system, history):
    assert checked(system, wait=SETTLE_S).ok  # at rest first: the planted fault is the only one
    rich = history["rich"]
    with database_of(system, "payment_service") as db:
        db.execute(
            text("UPDATE accounts SET balance_cents = balance_cents + 1 WHERE customer_id = :c"),
            {"c": rich},
        )
    try:
        report = checked(system)
    finally:
        with database_of(system, "payment_service") as db:
            db.execute(
                text(
                    "UPDATE accounts SET balance_cents = balance_cents - 1 WHERE customer_id = :c"
                ),
                {"c": rich},
            )

    assert [(v.guarantee, v.subject) for v in report.violations] == [("money", rich)]
    assert "deposits minus charges" in report.violations[0].detail


def test_the_checker_names_an_order_notified_twice(system, history):
    assert checked(system, wait=SETTLE_S).ok
    order_id = history["orders"][0]["order_id"]
    copy_id = uuid.uuid4()
    with database_of(system, "notification_service") as db:
        db.execute(
            text(
                "INSERT INTO notifications (notification_id, source_event_id, order_id,"
                " customer_id, event, message, created_at)"
                " SELECT :copy, :source, order_id, customer_id, event, message, now()"
                " FROM notifications WHERE order_id = :order AND event = 'OrderCompleted'"
            ),
            {"copy": copy_id, "source": uuid.uuid4(), "order": order_id},
        )
    try:
        report = checked(system)
    finally:
        with database_of(system, "notification_service") as db:
            db.execute(
                text("DELETE FROM notifications WHERE notification_id = :copy"), {"copy": copy_id}
            )

    assert [(v.guarantee, v.subject) for v in report.violations] == [("notifications", order_id)]
    assert "2 OrderCompleted" in report.violations[0].detail


def test_the_checker_names_a_sku_whose_stock_does_not_add_up(system, history):
    assert checked(system, wait=SETTLE_S).ok
    book = history["book"]
    with database_of(system, "inventory_service") as db:
        db.execute(
            text("UPDATE products SET on_hand = on_hand - 1 WHERE sku = :sku"), {"sku": book}
        )
    try:
        report = checked(system, baseline=history["baseline"])
    finally:
        with database_of(system, "inventory_service") as db:
            db.execute(
                text("UPDATE products SET on_hand = on_hand + 1 WHERE sku = :sku"), {"sku": book}
            )

    assert [(v.guarantee, v.subject) for v in report.violations] == [("stock", book)]
    assert "received" in report.violations[0].detail


def test_the_checker_lists_dead_letters_and_flags_only_valid_events(system, history):
    assert checked(system, wait=SETTLE_S).ok
    queue = "notification_service.OrderCompleted.dlq"
    healthy = OrderCompleted(order_id=uuid.uuid4(), customer_id="someone", amount_cents=100)
    poison_order = uuid.uuid4()
    try:
        publish(system, queue, encode(healthy), "OrderCompleted", healthy.order_id)
        publish(system, queue, b"{not json", "OrderCompleted", poison_order)
        report = eventually_sync(lambda: len((r := checked(system)).dead_letters) == 2 and r)
    finally:
        system.vhost.management.purge(system.vhost.name, queue)

    assert [(v.guarantee, v.subject) for v in report.violations] == [
        ("pipes", str(healthy.order_id))
    ]
    assert "healthy OrderCompleted" in report.violations[0].detail
    problems = {d.order_id: d.problem for d in report.dead_letters}
    assert problems[str(healthy.order_id)] is None
    assert problems[str(poison_order)]  # listed, with what is wrong with it


def publish(system, queue: str, body: bytes, event: str, order_id: uuid.UUID) -> None:
    """Put a message straight into `queue` (through the default exchange), as a dead-letter would."""
    properties = {
        "message_id": str(uuid.uuid4()),
        "type": event,
        "correlation_id": str(order_id),
        "content_type": "application/json",
    }
    assert system.vhost.management.publish(system.vhost.name, queue, body, properties)
