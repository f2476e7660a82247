"""`make check` / `python -m tools.check`: are the guarantees of docs/spec.md §7 (items 2-6) kept?

Reads everything at once through the services' HTTP APIs (orders, reservations, products, accounts,
deposits, payments, notifications, each service's outbox backlog from `/metrics`) and RabbitMQ's
management API (queues, dead-lettered messages), then lists every violation with the order, account,
sku, queue or service it concerns. Meant for a system at rest: `--wait SECONDS` re-checks until
clean, for use right after a run. Importable: `check(urls, rabbitmq_api, vhost) -> Report`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from contracts import ALL_EVENTS, event_name
from harness import http_client
from harness.rabbitmq import ManagementApi
from harness.wait import poll
from outbox.parsing import PoisonMessage, parse_event
from tools.client import Urls
from tools.tokens import Tokens

DEFAULT_RABBITMQ_API = "http://guest:guest@127.0.0.1:15672"
#: Rows per request when listing; the services accept at most 1000.
PAGE = 1000
#: Most dead-lettered messages looked at per queue.
DEAD_LETTERS_SHOWN = 1000

TERMINAL_NOTIFICATIONS = ("OrderCompleted", "OrderCancelled", "PaymentRefunded")


class Unreachable(Exception):
    """A service or the broker did not answer: nothing can be concluded."""


@dataclass(frozen=True)
class Violation:
    guarantee: str  # which of docs/spec.md §7: terminal, money, stock, notifications, pipes
    subject: str  # what it concerns: an order id, account, sku, queue or service
    detail: str


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    message_id: str | None
    event: str | None
    order_id: str | None  # the message's correlation id
    problem: str | None  # why it is bad; None for a valid event, which had no reason to be there


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def about(self, subject: object) -> list[Violation]:
        """The violations that concern one order id, account, sku, queue or service."""
        return [v for v in self.violations if v.subject == str(subject)]

    def add(self, guarantee: str, subject: object, detail: str) -> None:
        self.violations.append(Violation(guarantee, str(subject), detail))


@dataclass
class State:
    """What the services and the broker say, read in one go."""

    orders: dict[str, dict[str, Any]]
    reservations: dict[str, dict[str, Any]]
    products: dict[str, dict[str, Any]]
    accounts: dict[str, int]
    deposits: list[dict[str, Any]]
    payments: dict[str, dict[str, Any]]
    notifications: list[dict[str, Any]]
    queues: list[dict[str, Any]]
    dead_letters: dict[str, list[dict[str, Any]]]
    backlogs: dict[str, float | None]


def check(
    urls: Urls | None = None,
    rabbitmq_api: str = DEFAULT_RABBITMQ_API,
    vhost: str = "/",
    *,
    baseline: dict[str, int] | None = None,
    wait: float = 0.0,
    tokens: Tokens | None = None,
) -> Report:
    """Check docs/spec.md §7 items 2-6 over the running system; with `wait`, re-check until clean or that
    many seconds have passed, and return the last report.

    `baseline` (sku → units received so far, as `snapshot` returns it; for a new sku, the on_hand it
    was stocked with) adds the conservation of stock: on_hand + units sold == baseline. Add any
    restock made since to the baseline. It reads as an operator, with a token of `tokens`.
    """
    urls = urls or Urls()
    return poll(
        lambda: _check_once(urls, rabbitmq_api, vhost, baseline, tokens),
        until=lambda report: report.ok,
        retry_on=Unreachable,
        timeout=wait,
        interval=1.0,
    )


def snapshot(urls: Urls | None = None, tokens: Tokens | None = None) -> dict[str, int]:
    """Per sku, the units the shop has received so far: on_hand plus units sold (a baseline)."""
    urls = urls or Urls()
    with _client(tokens) as http:
        products = _get(http, f"{urls.inventory}/products")
        reservations = _pages(http, f"{urls.inventory}/reservations")
    sold = _units(reservations, "committed")
    return {p["sku"]: p["on_hand"] + sold.get(p["sku"], 0) for p in products}


# --- reading ---------------------------------------------------------------------------------


def _client(tokens: Tokens | None) -> httpx.Client:
    return http_client.client(timeout=30, auth=tokens.auth() if tokens else None)


def _check_once(
    urls: Urls,
    rabbitmq_api: str,
    vhost: str,
    baseline: dict[str, int] | None,
    tokens: Tokens | None,
) -> Report:
    state = _read(urls, ManagementApi(rabbitmq_api), vhost, tokens)
    report = Report(
        counts={
            "orders": len(state.orders),
            "completed": sum(o["status"] == "completed" for o in state.orders.values()),
            "cancelled": sum(o["status"] == "cancelled" for o in state.orders.values()),
            "reservations": len(state.reservations),
            "skus": len(state.products),
            "accounts": len(state.accounts),
            "deposits": len(state.deposits),
            "payments": len(state.payments),
            "notifications": len(state.notifications),
            "queues": len(state.queues),
            "dead letters": sum(len(m) for m in state.dead_letters.values()),
        }
    )
    _check_orders(state, report)
    _check_money(state, report)
    _check_stock(state, report, baseline)
    _check_notifications(state, report)
    _check_pipes(state, report)
    return report


def _read(urls: Urls, api: ManagementApi, vhost: str, tokens: Tokens | None) -> State:
    with _client(tokens) as http, ThreadPoolExecutor(8) as pool:
        get = {
            "orders": lambda: _pages(http, f"{urls.order}/orders"),
            "reservations": lambda: _pages(http, f"{urls.inventory}/reservations"),
            "products": lambda: _get(http, f"{urls.inventory}/products"),
            "accounts": lambda: _pages(http, f"{urls.payment}/accounts"),
            "deposits": lambda: _pages(http, f"{urls.payment}/deposits"),
            "payments": lambda: _pages(http, f"{urls.payment}/payments"),
            "notifications": lambda: _pages(http, f"{urls.notification}/notifications"),
            "queues": lambda: _broker(f"listing the queues of {vhost}", api.queues, vhost),
            "backlogs": lambda: _backlogs(http, urls),
        }
        futures = {name: pool.submit(read) for name, read in get.items()}
        found = {name: future.result() for name, future in futures.items()}
        dead_letter_queues = [q["name"] for q in found["queues"] if q["name"].endswith(".dlq")]
        dead_letters = dict(
            zip(
                dead_letter_queues,
                pool.map(lambda queue: _peek(api, vhost, queue), dead_letter_queues),
                strict=True,
            )
        )
    return State(
        # Keyed by id: a page boundary that shifted under a concurrent insert repeats a row.
        orders={o["order_id"]: o for o in found["orders"]},
        reservations={r["order_id"]: r for r in found["reservations"]},
        products={p["sku"]: p for p in found["products"]},
        accounts={a["customer_id"]: a["balance_cents"] for a in found["accounts"]},
        deposits=list({d["deposit_id"]: d for d in found["deposits"]}.values()),
        payments={p["order_id"]: p for p in found["payments"]},
        notifications=list({n["notification_id"]: n for n in found["notifications"]}.values()),
        queues=found["queues"],
        dead_letters=dead_letters,
        backlogs=found["backlogs"],
    )


def _get(http: httpx.Client, url: str, **params: Any) -> Any:
    try:
        response = http.get(url, params=params)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise Unreachable(f"GET {url}: {exc}") from exc
    return response.json()


def _pages(http: httpx.Client, url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        page = _get(http, url, limit=PAGE, offset=len(rows))
        rows.extend(page)
        if len(page) < PAGE:
            return rows


def _backlogs(http: httpx.Client, urls: Urls) -> dict[str, float | None]:
    """Each service's unpublished outbox rows, from its `/metrics` (None if not reported)."""
    found: dict[str, float | None] = {}
    for service, url in asdict(urls).items():
        try:
            response = http.get(f"{url}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise Unreachable(f"GET {url}/metrics: {exc}") from exc
        found[service] = next(
            (
                sample.value
                for family in text_string_to_metric_families(response.text)
                for sample in family.samples
                if sample.name == "saga_outbox_backlog"
            ),
            None,
        )
    return found


def _peek(api: ManagementApi, vhost: str, queue: str) -> list[dict[str, Any]]:
    """The messages of a queue, put back at once."""
    return _broker(f"reading {queue}", api.peek, vhost, queue, DEAD_LETTERS_SHOWN)  # type: ignore[no-any-return]


def _broker(what: str, call: Any, *args: Any) -> Any:
    """`call(*args)` on the management API; `Unreachable` if it does not answer."""
    try:
        return call(*args)
    except httpx.HTTPError as exc:
        raise Unreachable(f"{what}: {exc}") from exc


def _units(reservations: list[dict[str, Any]], status: str) -> dict[str, int]:
    """Units per sku of the reservations in `status`."""
    units: dict[str, int] = defaultdict(int)
    for reservation in reservations:
        if reservation["status"] == status:
            for item in reservation["items"]:
                units[item["sku"]] += item["quantity"]
    return units


# --- the guarantees --------------------------------------------------------------------------


def _check_orders(state: State, report: Report) -> None:
    """§7.2, and each terminal order agreeing with what payment and inventory did for it."""
    for order_id, order in state.orders.items():
        payment = state.payments.get(order_id)
        reservation = state.reservations.get(order_id)
        if order["status"] == "completed":
            _check_completed(report, order, payment, reservation)
        elif order["status"] == "cancelled":
            if payment is not None and payment["status"] == "succeeded":
                report.add(
                    "money", order_id, f"cancelled but charged {payment['amount_cents']} cents"
                )
            if reservation is not None and reservation["status"] not in ("rejected", "released"):
                report.add("stock", order_id, f"cancelled but stock {reservation['status']}")
        else:
            report.add("terminal", order_id, f"still {order['status']}")


def _check_completed(
    report: Report,
    order: dict[str, Any],
    payment: dict[str, Any] | None,
    reservation: dict[str, Any] | None,
) -> None:
    order_id, total = order["order_id"], order["total_cents"]
    if payment is None or payment["status"] != "succeeded":
        found = "no payment" if payment is None else f"payment {payment['status']}"
        report.add("money", order_id, f"completed with {found}")
    elif payment["amount_cents"] != total:
        report.add(
            "money", order_id, f"charged {payment['amount_cents']} cents for a total of {total}"
        )
    if reservation is None or reservation["status"] != "committed":
        found = "no reservation" if reservation is None else f"stock {reservation['status']}"
        report.add("stock", order_id, f"completed with {found}")
        return
    lines = sorted((i["sku"], i["quantity"], i["unit_price_cents"]) for i in order["items"])
    sold = sorted((i["sku"], i["quantity"], i["unit_price_cents"]) for i in reservation["items"])
    if lines != sold:
        report.add("stock", order_id, f"ordered {lines}, inventory sold {sold}")
    elif total != sum(quantity * price for _, quantity, price in sold):
        report.add("money", order_id, f"total {total} is not the sum of its priced lines")


def _check_money(state: State, report: Report) -> None:
    """§7.3: balance == deposits - charges still held, never below 0; no charge without an order."""
    expected: dict[str, int] = defaultdict(int)
    for deposit in state.deposits:
        expected[deposit["customer_id"]] += deposit["amount_cents"]
    for order_id, payment in state.payments.items():
        if payment["status"] == "succeeded":
            expected[payment["customer_id"]] -= payment["amount_cents"]
            if order_id not in state.orders:
                report.add("money", order_id, "charged for an order order_service does not know")
    charged_ids = Counter(p["payment_id"] for p in state.payments.values() if p["payment_id"])
    for payment_id, count in charged_ids.items():
        if count > 1:
            report.add("money", payment_id, f"one payment id on {count} orders")
    for customer_id in sorted(state.accounts.keys() | expected.keys()):
        balance = state.accounts.get(customer_id)
        if balance is None:
            report.add("money", customer_id, "deposits or charges but no account")
            continue
        if balance < 0:
            report.add("money", customer_id, f"balance {balance} below zero")
        if balance != expected[customer_id]:
            report.add(
                "money",
                customer_id,
                f"balance {balance}, but deposits minus charges make {expected[customer_id]}",
            )


def _check_stock(state: State, report: Report, baseline: dict[str, int] | None) -> None:
    """§7.4: reserved == units held by live reservations; available ≥ 0; stock conserved."""
    reservations = list(state.reservations.values())
    held, sold = _units(reservations, "reserved"), _units(reservations, "committed")
    for sku in sorted(held.keys() - state.products.keys()):
        report.add("stock", sku, f"{held[sku]} units held of a product that does not exist")
    for sku, product in sorted(state.products.items()):
        if product["reserved"] != held.get(sku, 0):
            report.add(
                "stock",
                sku,
                f"reserved {product['reserved']}, but live reservations hold {held.get(sku, 0)}",
            )
        if product["available"] < 0:
            report.add("stock", sku, f"available {product['available']} below zero")
        if baseline is not None and sku in baseline:
            now = product["on_hand"] + sold.get(sku, 0)
            if now != baseline[sku]:
                report.add(
                    "stock",
                    sku,
                    f"on_hand {product['on_hand']} + {sold.get(sku, 0)} sold = {now}, "
                    f"but {baseline[sku]} units were received",
                )
    for order_id, reservation in state.reservations.items():
        if reservation["status"] in ("reserved", "committed") and order_id not in state.orders:
            report.add(
                "stock", order_id, f"stock {reservation['status']} for an order nobody placed"
            )


def _check_notifications(state: State, report: Report) -> None:
    """§7.5: one notification per terminal event, none other."""
    sent: dict[str, Counter[str]] = defaultdict(Counter)
    for notification in state.notifications:
        order = state.orders.get(notification["order_id"])
        if order is None:
            report.add("notifications", notification["order_id"], "notified of an unknown order")
        elif notification["customer_id"] != order["customer_id"]:
            report.add(
                "notifications",
                order["order_id"],
                f"{notification['event']} sent to {notification['customer_id']}, "
                f"not to {order['customer_id']}",
            )
        sent[notification["order_id"]][notification["event"]] += 1
    for order_id, order in state.orders.items():
        if order["status"] not in ("completed", "cancelled"):
            continue  # reported as not terminal
        payment = state.payments.get(order_id)
        refunded = payment is not None and payment["status"] == "refunded"
        expected = {
            # A cancelled order may have completed first: then it was charged, and refunded.
            "OrderCompleted": (1,) if order["status"] == "completed" else (0, int(refunded)),
            "OrderCancelled": (int(order["status"] == "cancelled"),),
            "PaymentRefunded": (int(refunded),),
        }
        counts = sent.get(order_id, Counter())
        for event, allowed in expected.items():
            if counts[event] not in allowed:
                report.add(
                    "notifications",
                    order_id,
                    f"{counts[event]} {event} notifications for a {order['status']} order"
                    + (" with a refunded payment" if refunded else ""),
                )
        for event in sorted(counts.keys() - set(TERMINAL_NOTIFICATIONS)):
            report.add("notifications", order_id, f"notified of {event}, not a terminal event")


def _check_pipes(state: State, report: Report) -> None:
    """§7.6: work queues empty and consumed, outboxes published, dead letters really bad."""
    for queue in state.queues:
        name = queue["name"]
        if name.endswith(".dlq"):
            continue
        waiting = queue.get("messages_ready", 0) + queue.get("messages_unacknowledged", 0)
        if waiting:
            report.add("pipes", name, f"{waiting} messages not yet handled")
        if queue.get("consumers", 0) < 1:
            report.add("pipes", name, "no consumer")
    for service, backlog in state.backlogs.items():
        if backlog is None:
            report.add("pipes", service, "reports no saga_outbox_backlog")
        elif backlog > 0:
            report.add("pipes", service, f"{backlog:.0f} outbox rows not yet published")
    for dead_letter_queue, messages in state.dead_letters.items():
        for message in messages:
            dead = judge(dead_letter_queue, message)
            report.dead_letters.append(dead)
            if dead.problem is None:
                report.add(
                    "pipes",
                    dead.order_id or dead_letter_queue,
                    f"healthy {dead.event} {dead.message_id} dead-lettered in {dead_letter_queue}",
                )


#: A work queue is `<service>.<EventName>` (`Manifest.queue_for`): the event each one carries.
_QUEUE_EVENTS = {event_name(event): event for event in ALL_EVENTS}


def judge(queue: str, message: dict[str, Any]) -> DeadLetter:
    """What is wrong with a dead-lettered message, as the consumer of its queue judged it."""
    properties = message.get("properties") or {}
    payload = message.get("payload", "")
    body = (
        base64.b64decode(payload)
        if message.get("payload_encoding") == "base64"
        else payload.encode()
    )
    event = properties.get("type")
    headers = properties.get("headers") or {}
    # The consumer read the event's name from the type, else from the routing key it was
    # published with, which its death record keeps.
    deaths = headers.get("x-death") or [{}]
    routing_keys = deaths[0].get("routing-keys") or [None]
    work_queue = queue.removesuffix(".dlq")
    problem: str | None = None
    try:
        parse_event(
            body,
            headers=headers,
            name=event or routing_keys[0],
            expected=_QUEUE_EVENTS.get(work_queue.partition(".")[2]),
        )
    except PoisonMessage as exc:
        problem = str(exc)
    return DeadLetter(
        queue, properties.get("message_id"), event, properties.get("correlation_id"), problem
    )


# --- command line ----------------------------------------------------------------------------


def show(report: Report, console: Console) -> None:
    counts = Table(title="Checked")
    counts.add_column("what")
    counts.add_column("count", justify="right")
    for what, count in report.counts.items():
        counts.add_row(what, str(count))
    console.print(counts)
    if report.dead_letters:
        dead = Table(title="Dead-lettered messages")
        for column in ("queue", "message id", "event"):
            dead.add_column(column)
        dead.add_column("order", no_wrap=True)
        dead.add_column("what is wrong with it")
        for d in report.dead_letters:
            problem = d.problem or "[red]nothing: a valid event[/]"
            dead.add_row(d.queue, d.message_id or "-", d.event or "-", d.order_id or "-", problem)
        console.print(dead)
    if report.ok:
        console.print("[green]no violation[/]: docs/spec.md §7 items 2-6 hold")
        return
    violations = Table(title=f"{len(report.violations)} violations")
    violations.add_column("guarantee")
    violations.add_column("concerns", no_wrap=True)
    violations.add_column("what is wrong")
    for v in report.violations:
        violations.add_row(v.guarantee, v.subject, v.detail)
    console.print(violations)


def main() -> None:
    env = os.environ.get
    defaults = Urls()
    parser = argparse.ArgumentParser(
        prog="python -m tools.check",
        description="Check docs/spec.md §7 (items 2-6) on a running system.",
    )
    parser.add_argument("--order-url", default=env("SAGA_ORDER_URL", defaults.order))
    parser.add_argument("--inventory-url", default=env("SAGA_INVENTORY_URL", defaults.inventory))
    parser.add_argument("--payment-url", default=env("SAGA_PAYMENT_URL", defaults.payment))
    parser.add_argument(
        "--notification-url", default=env("SAGA_NOTIFICATION_URL", defaults.notification)
    )
    parser.add_argument("--rabbitmq-api", default=env("SAGA_RABBITMQ_API", DEFAULT_RABBITMQ_API))
    parser.add_argument("--vhost", default=env("SAGA_VHOST", "/"))
    parser.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="re-check until clean"
    )
    parser.add_argument(
        "--snapshot", type=Path, metavar="FILE", help="write the stock baseline to FILE and exit"
    )
    parser.add_argument(
        "--baseline", type=Path, metavar="FILE", help="check stock against a --snapshot FILE"
    )
    args = parser.parse_args()
    urls = Urls(args.order_url, args.inventory_url, args.payment_url, args.notification_url)
    tokens = Tokens.from_env()
    console = Console()
    try:
        if args.snapshot:
            received = snapshot(urls, tokens)
            args.snapshot.write_text(json.dumps(received, indent=2, sort_keys=True))
            console.print(f"stock baseline of {len(received)} skus written to {args.snapshot}")
            return
        baseline = json.loads(args.baseline.read_text()) if args.baseline else None
        with console.status("checking…"):
            report = check(
                urls,
                args.rabbitmq_api,
                args.vhost,
                baseline=baseline,
                wait=args.wait,
                tokens=tokens,
            )
    except Unreachable as exc:
        console.print(f"[red]cannot check[/]: {exc}")
        sys.exit(2)
    show(report, console)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
