"""A mixed load for the fault suite: customers ordering from a small shop, as careful clients do.

About 70% of orders should complete, 15% ask for more than a scarce product's stock and 15% come
from customers who cannot pay; some are cancelled by the customer soon after. Each order is placed
with its own Idempotency-Key, and retried with that same key after a timeout, a dropped
connection, a 5xx or a 409 (still in flight), until the shop answers 201: so every order the load
meant to place exists exactly once, whatever the faults did to the requests.

`Load.verify()` then compares what the shop says with what the load did: the same orders, each
ending as its kind says it must, and balances and stock as the completed orders make them.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tools.client import Shop, Urls, unique
from tools.tokens import Tokens

COMPLETE, NO_STOCK, NO_MONEY = "complete", "no_stock", "no_money"
EXPECTED_REASON = {NO_STOCK: "out_of_stock", NO_MONEY: "insufficient_funds"}

#: How long a client keeps retrying one request before it gives up (and the run fails).
GIVE_UP_AFTER_S = 150.0


@dataclass
class Placed:
    """One order the load placed, and what the shop answered."""

    kind: str
    customer_id: str
    items: list[tuple[str, int]]
    key: str = field(default_factory=lambda: unique("order"))
    order_id: str | None = None
    attempts: int = 0
    cancel: str | None = (
        None  # None, "asked" (answered 200: already cancelled) or "cancelled" (202)
    )


@dataclass
class Shelf:
    """The shop's products and customers, as the load set them up."""

    prices: dict[str, int]  # plenty of stock
    scarce: str  # never enough for a NO_STOCK order
    stock: dict[str, int]  # sku -> on_hand at the start
    rich: list[str]
    poor: list[str]
    deposits: dict[str, int]  # customer -> money paid in


class Load:
    """Client threads placing a mixed load at about `rate` orders per second until stopped."""

    def __init__(
        self,
        urls: Urls,
        tokens: Tokens | None,
        *,
        rate: float = 4.0,
        workers: int = 4,
        cancel_share: float = 0.1,
        seed: int | None = None,
    ) -> None:
        self.urls = urls
        self.tokens = tokens
        self.rate = rate
        self.workers = workers
        self.cancel_share = cancel_share
        self.rng = random.Random(seed)
        self.placed: list[Placed] = []
        self.answers: Counter[str] = Counter()  # what the shop answered, retried or not
        self.problems: list[str] = []  # answers no correct shop gives
        self.shelf: Shelf | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- setting up ---

    def prepare(self, products: int = 6, rich: int = 8, poor: int = 4) -> Shelf:
        prices = {unique("sku"): 100 * (i + 1) for i in range(products)}
        scarce = unique("scarce")
        stock = dict.fromkeys(prices, 1_000_000) | {scarce: 2}
        customers = {unique("rich"): 10**9 for _ in range(rich)}
        customers |= {unique("poor"): 50 for _ in range(poor)}  # less than any price
        with Shop(self.urls, timeout=30, tokens=self.tokens) as shop:
            for sku, on_hand in stock.items():
                shop.stock(sku, on_hand=on_hand, price_cents=prices.get(sku, 100))
            for customer, balance in customers.items():
                shop.open_account(customer, balance_cents=balance)
        self.shelf = Shelf(
            prices | {scarce: 100},
            scarce,
            stock,
            [c for c, b in customers.items() if b > 50],
            [c for c, b in customers.items() if b == 50],
            customers,
        )
        return self.shelf

    # --- running ---

    def start(self) -> None:
        for number in range(self.workers):
            thread = threading.Thread(
                target=self._work, args=(random.Random(self.rng.random()),), name=f"load-{number}"
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Place no new order; wait for those in flight to be answered."""
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _work(self, rng: random.Random) -> None:
        interval = self.workers / self.rate
        with Shop(self.urls, timeout=5, tokens=self.tokens) as shop:
            while not self._stop.is_set():
                began = time.monotonic()
                order = self._plan(rng)
                with self._lock:
                    self.placed.append(order)
                self._place(shop, order, rng)
                if order.order_id is not None and rng.random() < self.cancel_share:
                    time.sleep(rng.uniform(0.0, 1.5))
                    self._cancel(shop, order, rng)
                self._stop.wait(max(0.0, interval - (time.monotonic() - began)))

    def _plan(self, rng: random.Random) -> Placed:
        assert self.shelf is not None, "prepare() first"
        plenty = [sku for sku in self.shelf.prices if sku != self.shelf.scarce]
        lines = [(sku, rng.randint(1, 3)) for sku in rng.sample(plenty, rng.randint(1, 3))]
        roll = rng.random()
        if roll < 0.70:
            return Placed(COMPLETE, rng.choice(self.shelf.rich), lines)
        if roll < 0.85:
            short = (self.shelf.scarce, self.shelf.stock[self.shelf.scarce] + rng.randint(1, 3))
            return Placed(NO_STOCK, rng.choice(self.shelf.rich), [*lines[:1], short])
        return Placed(NO_MONEY, rng.choice(self.shelf.poor), lines)

    def _place(self, shop: Shop, order: Placed, rng: random.Random) -> None:
        def send() -> httpx.Response:
            return shop.place_raw(order.customer_id, order.items, key=order.key)

        response = self._until_answered(send, "POST /orders", rng, order)
        if response is None:
            return
        if response.status_code == 201:
            order.order_id = response.json()["order_id"]
        else:
            self._problem(f"POST /orders {order.key}: {response.status_code} {response.text[:200]}")

    def _cancel(self, shop: Shop, order: Placed, rng: random.Random) -> None:
        response = self._until_answered(
            lambda: shop.cancel(str(order.order_id)), "POST /orders/{id}/cancel", rng
        )
        if response is None:
            return
        if response.status_code in (200, 202):
            order.cancel = "cancelled" if response.status_code == 202 else "asked"
        else:
            self._problem(f"cancel {order.order_id}: {response.status_code} {response.text[:200]}")

    def _until_answered(
        self, send: Any, what: str, rng: random.Random, order: Placed | None = None
    ) -> httpx.Response | None:
        """Send until the answer is final: not a transport error, a 5xx, nor a 409 in flight."""
        deadline = time.monotonic() + GIVE_UP_AFTER_S
        for attempt in range(1, 10_000):
            if order is not None:
                order.attempts = attempt
            try:
                response = send()
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            else:
                final = response.status_code < 500 and response.status_code != 409
                if response.status_code == 409 and "in flight" not in response.text:
                    final = True
                outcome = str(response.status_code)
                if response.status_code == 500:
                    self._problem(f"{what}: 500 {response.text[:200]}")
                if final:
                    self._count(f"{what} {outcome}")
                    return response
            self._count(f"{what} {outcome} (retried)")
            if time.monotonic() > deadline:
                self._problem(f"{what}: no final answer in {GIVE_UP_AFTER_S}s, last {outcome}")
                return None
            time.sleep(min(0.1 * 2 ** min(attempt, 5), 2.0) * rng.uniform(0.5, 1.0))
        return None

    def _count(self, answer: str) -> None:
        with self._lock:
            self.answers[answer] += 1

    def _problem(self, problem: str) -> None:
        with self._lock:
            self.problems.append(problem)

    # --- checking ---

    @property
    def kinds(self) -> Counter[str]:
        return Counter(order.kind for order in self.placed)

    def verify(self, shop: Shop) -> list[str]:
        """What the shop says against what the load did; each string is one violation."""
        assert self.shelf is not None
        problems = list(self.problems)
        orders = {o["order_id"]: o for o in self.orders(shop)}
        placed = {order.order_id: order for order in self.placed if order.order_id}
        for order_id in orders.keys() - placed.keys():
            problems.append(f"order {order_id} exists, but no client was told it was placed")
        for order_id in placed.keys() - orders.keys():
            problems.append(f"order {order_id} was answered 201, and does not exist")
        charged: Counter[str] = Counter()
        sold: Counter[str] = Counter()
        for order_id, order in placed.items():
            found = orders.get(order_id)
            if found is None:
                continue
            problems += _outcome_problems(order, found, self.shelf)
            if found["status"] == "completed":
                charged[order.customer_id] += found["total_cents"] or 0
                for sku, quantity in order.items:
                    sold[sku] += quantity
        for customer, deposit in self.shelf.deposits.items():
            balance = shop.balance(customer)
            if balance != deposit - charged[customer]:
                problems.append(
                    f"{customer}: balance {balance}, but {deposit} paid in and "
                    f"{charged[customer]} charged for completed orders"
                )
        for sku, on_hand in self.shelf.stock.items():
            product = shop.product(sku)
            if (product["on_hand"], product["reserved"]) != (on_hand - sold[sku], 0):
                problems.append(
                    f"{sku}: on_hand {product['on_hand']} reserved {product['reserved']}, but "
                    f"{on_hand} stocked and {sold[sku]} sold to completed orders"
                )
        return problems

    def orders(self, shop: Shop) -> list[dict[str, Any]]:
        """Every order the shop has (the load must be stopped: pages shift under inserts)."""
        orders: list[dict[str, Any]] = []
        while True:
            response = shop.http.get(
                f"{self.urls.order}/orders", params={"limit": 1000, "offset": len(orders)}
            )
            response.raise_for_status()
            orders += response.json()
            if len(response.json()) < 1000:
                return orders

    def outcomes(self, shop: Shop) -> Counter[str]:
        """How the orders ended: `completed`, `cancelled: <reason>`."""
        found: Counter[str] = Counter()
        for order in self.orders(shop):
            reason = order["cancel_reason"]
            found[order["status"] + (f": {reason}" if reason else "")] += 1
        return found


def _outcome_problems(order: Placed, found: dict[str, Any], shelf: Shelf) -> list[str]:
    """How the order must have ended, given its kind and what the customer did. An order the
    faults delayed past its deadline may have been cancelled for `timeout` instead."""
    subject = f"{order.kind} order {order.order_id}"
    got = (found["status"], found["cancel_reason"])
    if (found["customer_id"], sorted(found_lines(found))) != (
        order.customer_id,
        sorted(order.items),
    ):
        return [f"{subject}: placed {order.customer_id} {order.items}, shop has {found}"]
    if order.cancel == "cancelled":
        allowed = {("cancelled", "customer_request")}
    elif order.cancel == "asked":
        allowed = {
            ("cancelled", reason)
            for reason in ("customer_request", "timeout", *EXPECTED_REASON.values())
        }
    elif order.kind == COMPLETE:
        allowed = {("completed", None), ("cancelled", "timeout")}
    else:
        allowed = {("cancelled", EXPECTED_REASON[order.kind]), ("cancelled", "timeout")}
    problems = (
        []
        if got in allowed
        else [f"{subject} ended {got}, expected one of {sorted(allowed, key=str)}"]
    )
    if found["status"] == "completed":
        total = sum(shelf.prices[sku] * quantity for sku, quantity in order.items)
        if found["total_cents"] != total:
            problems.append(f"{subject}: total {found['total_cents']}, prices make {total}")
    return problems


def found_lines(order: dict[str, Any]) -> list[tuple[str, int]]:
    return [(item["sku"], item["quantity"]) for item in order["items"]]
