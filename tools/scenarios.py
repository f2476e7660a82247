"""The demo's scenarios: each path of the saga, its compensations and its recoveries, told as a story.

Each scenario stocks its own products and opens its own accounts (fresh names every run), drives
the services on ports 8000-8003 over HTTP, may stop, kill and restart them (`tools.services`),
prints each order's timeline (`tools.trace`) and the balances and stock before and after, and
records what it expected to see. A scenario ended as expected when every expectation held.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aio_pika
from rich import box
from rich.console import Console
from rich.table import Table

from harness.wait import eventually_sync
from tools import dlq, services, trace
from tools.client import TERMINAL, Shop, unique

T = TypeVar("T")

#: The order deadline order_service was started with (`make demo` starts it with 10 s).
ORDER_TIMEOUT_S = float(os.environ.get("ORDER_TIMEOUT_S", "30"))


class DemoTimeout(Exception):
    """Something the demo waited for did not happen in time."""


@dataclass(frozen=True)
class Expectation:
    what: str
    ok: bool
    detail: str


@dataclass
class Demo:
    """The stage a scenario plays on: the shop, the console, and what the scenario expects."""

    shop: Shop
    console: Console
    expectations: list[Expectation] = field(default_factory=list)
    skus: dict[str, dict[str, Any]] = field(default_factory=dict)  # sku -> product when stocked
    customers: dict[str, int] = field(default_factory=dict)  # customer -> opening balance

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.expectations)

    # --- setting the stage -------------------------------------------------------------------

    def product(self, name: str, on_hand: int, price_cents: int) -> str:
        sku = unique(name)
        self.skus[sku] = self.shop.stock(sku, on_hand=on_hand, price_cents=price_cents, name=name)
        return sku

    def customer(self, name: str, balance_cents: int) -> str:
        customer = unique(name)
        self.shop.open_account(customer, balance_cents=balance_cents)
        self.customers[customer] = balance_cents
        return customer

    def say(self, text: str) -> None:
        self.console.print(f"  {text}")

    # --- acting --------------------------------------------------------------------------------

    def place(self, customer: str, items: list[tuple[str, int]]) -> str:
        order = self.shop.place(customer, items)
        lines = ", ".join(f"{quantity} {sku}" for sku, quantity in items)
        self.say(f"[bold]{customer}[/] orders {lines}: order [cyan]{order['order_id']}[/]")
        return str(order["order_id"])

    def stop(self, service: str) -> None:
        self.say(f"[yellow]stopping {service}[/] (SIGTERM)")
        with contextlib.redirect_stdout(io.StringIO()):
            services.stop(service)

    def kill(self, service: str) -> None:
        self.say(f"[red]killing {service}[/] (SIGKILL: no shutdown, unacked messages in flight)")
        with contextlib.redirect_stdout(io.StringIO()):
            services.kill(service)

    def start(self, service: str) -> None:
        with self.console.status(f"starting {service}…"), contextlib.redirect_stdout(io.StringIO()):
            services.start(service)
            try:
                services.wait_ready(service)
            except SystemExit as exc:  # the CLI's way to say it: here, this scenario failed
                raise RuntimeError(str(exc)) from None
        self.say(f"[green]{service} is back[/] (log: .run/logs/{service}.log)")

    # --- waiting -----------------------------------------------------------------------------

    def wait_for(
        self, what: str, check: Callable[[], T], timeout: float = 30.0, interval: float = 0.05
    ) -> T:
        """Poll `check` until it returns something truthy, with a spinner saying what we wait for."""
        with self.console.status(f"waiting for {what}…"):
            try:
                return eventually_sync(check, timeout, interval)
            except TimeoutError:
                raise DemoTimeout(f"{what}: not after {timeout:.0f}s") from None

    def terminal(self, order_id: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait_for(
            f"order {order_id[:8]} to complete or be cancelled",
            lambda: (order := self.shop.order(order_id))["status"] in TERMINAL and order,
            timeout,
        )

    def settled(self, order_id: str, timeout: float = 30.0) -> trace.Timeline:
        """The order's saga has nothing in flight: every event published and handled."""
        return self.wait_for(
            f"the saga of order {order_id[:8]} to settle",
            lambda: (timeline := trace.read_timeline(order_id)).settled and timeline,
            timeout,
        )

    # --- showing and expecting -------------------------------------------------------------------

    def timeline(self, order_id: str, title: str) -> trace.Timeline:
        timeline = self.settled(order_id)
        self.console.print(
            trace.render(timeline, title=f"{title} — order {order_id}", legend=False)
        )
        return timeline

    def expect(self, what: str, actual: object, *expected: object) -> bool:
        """`actual` is `expected` (or one of several outcomes that are all right)."""
        ok = actual in expected
        wanted = " or ".join(show(e) for e in expected)
        detail = show(actual) if ok else f"got {show(actual)}, expected {wanted}"
        self.expectations.append(Expectation(what, ok, detail))
        mark = "[green]✓[/]" if ok else "[bold red]✗[/]"
        self.console.print(f"  {mark} {what}: {detail}")
        return ok

    def expect_order(self, order_id: str, status: str, reason: str | None = None) -> None:
        order = self.shop.order(order_id)
        self.expect(f"order {order_id[:8]}", outcome(order), outcome(status, reason))

    def expect_balance(self, customer: str, cents: int) -> None:
        self.expect(f"{customer}'s balance", money(self.shop.balance(customer)), money(cents))

    def expect_stock(self, sku: str, on_hand: int, reserved: int = 0) -> None:
        product = self.shop.product(sku)
        self.expect(
            f"{sku} on hand / reserved",
            f"{product['on_hand']} / {product['reserved']}",
            f"{on_hand} / {reserved}",
        )

    def expect_notifications(self, order_id: str, *events: str) -> None:
        sent = Counter(n["event"] for n in self.shop.notifications(order_id=order_id))
        self.expect(f"notifications for {order_id[:8]}", sent, Counter(events))

    def figures(self) -> None:
        """The scenario's balances and stock, before and after."""
        table = Table(title="balances and stock", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("account / product", "before", "after"):
            table.add_column(column, justify="left" if column.startswith("acc") else "right")
        for customer, opening in self.customers.items():
            table.add_row(customer, money(opening), money(self.shop.balance(customer)))
        for sku, stocked in self.skus.items():
            now = self.shop.product(sku)
            table.add_row(
                f"{sku} on hand / reserved",
                f"{stocked['on_hand']} / {stocked['reserved']}",
                f"{now['on_hand']} / {now['reserved']}",
            )
        self.console.print(table)


def money(cents: int) -> str:
    return f"{cents / 100:,.2f}"


def outcome(order: dict[str, Any] | str, reason: str | None = None) -> str:
    """`completed`, or `cancelled (timeout)`: an order's status and cancel reason."""
    if isinstance(order, dict):
        order, reason = order["status"], order["cancel_reason"]
    return f"{order} ({reason})" if reason else order


def show(value: object) -> str:
    """A value as the demo prints it: counts as `8 completed`, lists comma-separated."""
    if isinstance(value, Counter):
        return ", ".join(f"{count} {key}" for key, count in sorted(value.items())) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


# --- the scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    play: Callable[[Demo], None]


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str) -> Callable[[Callable[[Demo], None]], Callable[[Demo], None]]:
    def register(play: Callable[[Demo], None]) -> Callable[[Demo], None]:
        SCENARIOS[name] = Scenario(name, title, play)
        return play

    return register


@scenario("happy", "a customer buys two books: reserved, paid, completed")
def happy_path(demo: Demo) -> None:
    book = demo.product("book", on_hand=10, price_cents=1500)
    alice = demo.customer("alice", balance_cents=10_000)
    order_id = demo.place(alice, [(book, 2)])
    demo.terminal(order_id)
    demo.timeline(order_id, "happy path")
    demo.expect_order(order_id, "completed")
    demo.expect("total", money(demo.shop.order(order_id)["total_cents"]), money(3000))
    demo.expect_balance(alice, 7_000)
    demo.expect_stock(book, on_hand=8)
    demo.expect_notifications(order_id, "OrderCompleted")


@scenario("out-of-stock", "three lamps wanted, one in stock: inventory refuses, nothing is held")
def out_of_stock(demo: Demo) -> None:
    lamp = demo.product("lamp", on_hand=1, price_cents=4000)
    alice = demo.customer("alice", balance_cents=50_000)
    order_id = demo.place(alice, [(lamp, 3)])
    demo.terminal(order_id)
    demo.timeline(order_id, "out of stock")
    demo.expect_order(order_id, "cancelled", "out_of_stock")
    demo.expect_balance(alice, 50_000)
    demo.expect_stock(lamp, on_hand=1)
    demo.expect_notifications(order_id, "OrderCancelled")


@scenario("insufficient-funds", "a lamp for 40.00 with 10.00 in the account: stock is released")
def insufficient_funds(demo: Demo) -> None:
    lamp = demo.product("lamp", on_hand=1, price_cents=4000)
    bob = demo.customer("bob", balance_cents=1_000)
    order_id = demo.place(bob, [(lamp, 1)])
    demo.terminal(order_id)
    demo.timeline(order_id, "insufficient funds")
    demo.expect_order(order_id, "cancelled", "insufficient_funds")
    demo.expect_balance(bob, 1_000)
    demo.expect_stock(lamp, on_hand=1)
    demo.expect_notifications(order_id, "OrderCancelled")


@scenario("cancel-after-completion", "the customer cancels a completed order: refund and restock")
def cancel_after_completion(demo: Demo) -> None:
    kettle = demo.product("kettle", on_hand=5, price_cents=2500)
    carol = demo.customer("carol", balance_cents=10_000)
    order_id = demo.place(carol, [(kettle, 2)])
    demo.expect("before the cancel", demo.terminal(order_id)["status"], "completed")
    demo.expect_balance(carol, 5_000)
    response = demo.shop.cancel(order_id)
    demo.say(f"carol cancels: POST /orders/{order_id[:8]}…/cancel → {response.status_code}")
    demo.expect("cancel answered", response.status_code, 202)
    demo.timeline(order_id, "cancelled after completion")
    demo.expect_order(order_id, "cancelled", "customer_request")
    demo.expect("payment", (demo.shop.payment(order_id) or {}).get("status"), "refunded")
    demo.expect_balance(carol, 10_000)
    demo.expect_stock(kettle, on_hand=5)
    demo.expect_notifications(order_id, "OrderCompleted", "OrderCancelled", "PaymentRefunded")


@scenario("payment-down", "payment_service is down: the order times out, stock is released")
def payment_down(demo: Demo) -> None:
    lamp = demo.product("lamp", on_hand=3, price_cents=4000)
    dave = demo.customer("dave", balance_cents=10_000)
    demo.stop("payment_service")
    try:
        order_id = demo.place(dave, [(lamp, 1)])
        demo.wait_for(
            "inventory to reserve the lamp",
            lambda: demo.shop.order(order_id)["status"] == "reserved",
        )
        demo.say(
            "the order is [bold]reserved[/] and nobody charges it: it waits for its deadline,"
            f" ORDER_TIMEOUT_S ({ORDER_TIMEOUT_S:g} s for the order_service `make demo` starts)"
        )
        demo.terminal(order_id, timeout=ORDER_TIMEOUT_S + 60)
        demo.expect_order(order_id, "cancelled", "timeout")
        demo.wait_for(
            "inventory to release the lamp", lambda: demo.shop.product(lamp)["reserved"] == 0
        )
        demo.expect_stock(lamp, on_hand=3)
    finally:
        demo.start("payment_service")
    demo.say(
        "payment_service now finds StockReserved and OrderCancelled waiting in its queues:"
        " whichever it takes first, the order is never left charged"
    )
    demo.timeline(order_id, "timeout while payment is down")
    payment = demo.shop.payment(order_id) or {}
    demo.expect(
        "payment",
        outcome(payment.get("status", "none"), payment.get("reason")),
        # Charged, then refunded (StockReserved came first); or refused (OrderCancelled first).
        "refunded",
        "failed (order_cancelled)",
    )
    demo.expect_balance(dave, 10_000)
    refunded = payment.get("status") == "refunded"
    demo.expect_notifications(
        order_id, "OrderCancelled", *(("PaymentRefunded",) if refunded else ())
    )


@scenario("inventory-crash", "inventory_service is killed with orders in flight, then restarted")
def inventory_crash(demo: Demo) -> None:
    mug = demo.product("mug", on_hand=20, price_cents=500)
    erin = demo.customer("erin", balance_cents=10_000)
    orders = [demo.place(erin, [(mug, 1)]) for _ in range(4)]
    demo.kill("inventory_service")
    at_kill = Counter(demo.shop.order(o)["status"] for o in orders)
    demo.say(f"at the kill: {show(at_kill)}")
    try:
        late = [demo.place(erin, [(mug, 1)]) for _ in range(4)]
        demo.say(
            "4 more orders placed while inventory is down: their OrderCreated wait in its queue"
        )
    finally:
        demo.start("inventory_service")
    orders += late
    for order_id in orders:
        demo.terminal(order_id)
    demo.timeline(late[0], "placed while inventory was down")
    for order_id in orders:
        demo.settled(order_id)
    demo.expect(
        "orders", Counter(demo.shop.order(o)["status"] for o in orders), Counter(completed=8)
    )
    demo.expect(
        "each charged once",
        Counter((demo.shop.payment(o) or {}).get("status") for o in orders),
        Counter(succeeded=8),
    )
    demo.expect_balance(erin, 10_000 - 8 * 500)
    demo.expect_stock(mug, on_hand=12)
    demo.expect(
        "one OrderCompleted notification each",
        Counter(n["event"] for o in orders for n in demo.shop.notifications(order_id=o)),
        Counter(OrderCompleted=8),
    )


@scenario("poison", "a malformed message is dead-lettered while orders keep flowing")
def poison(demo: Demo) -> None:
    pen = demo.product("pen", on_hand=10, price_cents=200)
    frank = demo.customer("frank", balance_cents=1_000)
    message_id, body = str(uuid.uuid4()), b'{"event": "OrderCreated", "order_id": "not-a-uu'
    asyncio.run(_publish_by_hand(message_id, body))
    demo.say(
        f"published by hand to exchange `events`, routing key OrderCreated: message {message_id}"
        f" with body {body.decode()!r}"
    )
    order_id = demo.place(frank, [(pen, 1)])
    demo.terminal(order_id)
    demo.timeline(order_id, "placed right after the poison")
    demo.expect_order(order_id, "completed")
    queue = "inventory_service.OrderCreated.dlq"
    [letter] = demo.wait_for(
        f"the poison in {queue}",
        lambda: [
            letter
            for letter in asyncio.run(dlq.list_dead_letters(queue=queue))
            if letter.message_id == message_id
        ],
        interval=0.5,
    )
    demo.console.print(dlq.render([letter], "the poison, in the dead-letter queue (`make dlq`)"))
    demo.expect("dead-lettered because", letter.reason, "rejected")
    demo.expect_balance(frank, 800)
    demo.expect_stock(pen, on_hand=9)


async def _publish_by_hand(message_id: str, body: bytes) -> None:
    connection = await aio_pika.connect(dlq.AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange("events")
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                type="OrderCreated",
                correlation_id=str(uuid.uuid4()),
                app_id="the demo, by hand",
            ),
            routing_key="OrderCreated",
        )


@scenario("idempotent-retry", "one POST sent three times with one Idempotency-Key: one order")
def idempotent_retry(demo: Demo) -> None:
    clock = demo.product("clock", on_hand=5, price_cents=3000)
    grace = demo.customer("grace", balance_cents=10_000)
    key = f"demo-{uuid.uuid4()}"
    responses = [demo.shop.place_raw(grace, [(clock, 1)], key=key) for _ in range(3)]
    demo.say(f"POST /orders three times with Idempotency-Key {key}")
    demo.expect("answers", [r.status_code for r in responses], [201, 201, 201])
    ids = {r.json()["order_id"] for r in responses}
    demo.expect("distinct order ids in the answers", len(ids), 1)
    other = demo.shop.place_raw(grace, [(clock, 2)], key=key)
    demo.expect("the same key with another body", other.status_code, 422)
    [order_id] = ids
    demo.terminal(order_id)
    demo.timeline(order_id, "three POSTs, one order")
    demo.expect("grace's orders", len(demo.shop.orders(customer_id=grace)), 1)
    demo.expect_order(order_id, "completed")
    demo.expect_balance(grace, 7_000)
    demo.expect_stock(clock, on_hand=4)
