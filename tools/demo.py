"""`make demo`: place orders that complete, run out of stock and run short of money; show how each ended."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from tools.client import Shop, unique

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.demo")
    parser.add_argument("--scenario", default=None, help="run one scenario only")
    args = parser.parse_args()

    shop = Shop()
    book, lamp = unique("book"), unique("lamp")
    shop.stock(book, on_hand=10, price_cents=1500, name="A book")
    shop.stock(lamp, on_hand=1, price_cents=4000, name="A lamp")
    rich_customer, poor_customer = unique("alice"), unique("bob")
    shop.open_account(rich_customer, balance_cents=10_000)
    shop.open_account(poor_customer, balance_cents=1_000)

    scenarios = {
        "happy": ("alice buys 2 books", rich_customer, [(book, 2)], ("completed", None)),
        "out-of-stock": (
            "alice wants 3 lamps, 1 in stock",
            rich_customer,
            [(lamp, 3)],
            ("cancelled", "out_of_stock"),
        ),
        "insufficient-funds": (
            "bob buys 1 lamp with 10.00",
            poor_customer,
            [(lamp, 1)],
            ("cancelled", "insufficient_funds"),
        ),
    }
    if args.scenario:
        scenarios = {args.scenario: scenarios[args.scenario]}

    table = Table(title="How each order ended")
    for column in ("scenario", "order", "status", "reason", "total", "expected"):
        table.add_column(column)
    failures = 0
    for name, (title, customer, items, expected) in scenarios.items():
        order = shop.wait_until_terminal(shop.place(customer, items)["order_id"])
        outcome = (order["status"], order["cancel_reason"])
        ok = outcome == expected
        failures += not ok
        total = f"{order['total_cents'] / 100:.2f}" if order["total_cents"] is not None else "-"
        table.add_row(
            f"{name}: {title}",
            order["order_id"][:8],
            order["status"],
            order["cancel_reason"] or "-",
            total,
            "[green]yes[/]" if ok else f"[red]no, expected {expected}[/]",
        )
    console.print(table)

    balances = Table(title="Balances and stock afterwards")
    balances.add_column("what")
    balances.add_column("now")
    balances.add_row(f"{rich_customer} balance", f"{shop.balance(rich_customer) / 100:.2f}")
    balances.add_row(f"{poor_customer} balance", f"{shop.balance(poor_customer) / 100:.2f}")
    for sku in (book, lamp):
        product = shop.product(sku)
        balances.add_row(
            f"{sku} on hand / reserved", f"{product['on_hand']} / {product['reserved']}"
        )
    console.print(balances)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
