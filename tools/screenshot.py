"""`make screenshot`: the pictures of the docs, while orders flow through `make up`'s services.

- `management`: the RabbitMQ management UI's queues page, as docs/management-ui.png: logs in as
  guest, shows the vhost's service queues and their dead-letter queues.
- `prometheus`: Prometheus's own graph page, as docs/prometheus.png: a Prometheus server of its own
  (`harness.prometheus`, as `make prometheus` runs it) scraping the services, graphing the saga's
  outcomes by reason and the handlers' rate by event (two of the dashboard's queries).

Headless Chromium (the system's, `apt-get install chromium`; Playwright drives it and downloads
no browser). Needs the services running (`make up`); orders that complete and orders that are
cancelled (short of stock, short of money) are placed meanwhile, so that the rates move.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import BrowserContext, sync_playwright

from harness.prometheus import running_prometheus, scrape_config
from harness.wait import eventually_sync
from tools.client import Shop, unique
from tools.prometheus import BROKER, running_services
from tools.provision import RABBITMQ_VHOST
from tools.tokens import Tokens

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


#: Two of the dashboard's queries (deploy/grafana/dashboards/order-saga.json), over 1-minute rates.
GRAPHS = (
    "60 * sum by (outcome, reason) (rate(saga_orders_ended_total[1m]))",
    'sum by (job, event) (rate(saga_messages_handled_total{outcome="handled"}[1m]))',
)
GRAPH_RANGE = "5m"


def keep_ordering(stop: threading.Event) -> None:
    """Orders placed in a loop, so that the pages show messages moving: most complete, one in
    five asks for what is out of stock, one in seven comes from a customer short of money."""
    with Shop(tokens=Tokens.from_env()) as shop:
        sku, sold_out = unique("postcard"), unique("poster")
        customer, poor = unique("ursula"), unique("pete")
        shop.stock(sku, on_hand=100_000, price_cents=100, name="A postcard")
        shop.stock(sold_out, on_hand=0, price_cents=900, name="A poster")
        shop.open_account(customer, balance_cents=10_000_000)
        shop.open_account(poor, balance_cents=0)
        placed = 0
        while not stop.is_set():
            placed += 1
            if placed % 7 == 0:
                shop.place(poor, [(sku, 1)])
            else:
                shop.place(customer, [(sold_out if placed % 5 == 0 else sku, 1)])
            time.sleep(0.05)


@contextlib.contextmanager
def browser(chromium: str) -> Iterator[BrowserContext]:
    with tempfile.TemporaryDirectory(prefix="saga-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1100},
        )
        try:
            yield context
        finally:
            context.close()


def management(ui: str, vhost: str, output: Path, chromium: str) -> None:
    with browser(chromium) as context:
        page = context.new_page()
        page.goto(ui)
        page.fill("input[name=username]", "guest")
        page.fill("input[name=password]", "guest")
        page.click("input[type=submit]")
        page.wait_for_selector("#logout")
        page.goto(f"{ui.rstrip('/')}/#/queues")
        page.select_option("#show-vhost", vhost)
        page.fill("#queues-name", "_service.")
        page.press("#queues-name", "Enter")
        page.wait_for_selector("table.list td >> text=order_service.StockReserved")
        # Rates are sampled every 5 s: let a sample or two of the flowing orders land.
        page.wait_for_timeout(11_000)
        output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(output))


def prometheus(output: Path, chromium: str, minutes: float) -> None:
    """Prometheus's graph page with `GRAPHS`, after `minutes` of scraping the flowing orders."""
    targets = running_services()
    if not targets:
        sys.exit("no service of `make up` is running: make up first")
    config = scrape_config(targets, f"{BROKER[0]}:{BROKER[1]}", vhost=RABBITMQ_VHOST, interval_s=2)
    with (
        tempfile.TemporaryDirectory(prefix="saga-prometheus-") as data,
        running_prometheus(config, Path(data)) as server,
    ):
        eventually_sync(lambda: all(server.query(expr) for expr in GRAPHS), timeout=60, interval=1)
        time.sleep(minutes * 60)  # a picture of a few minutes of orders, not of one point
        params: dict[str, str] = {}
        for number, expr in enumerate(GRAPHS):
            params |= {
                f"g{number}.expr": expr,
                f"g{number}.tab": "0",
                f"g{number}.range_input": GRAPH_RANGE,
            }
        with browser(chromium) as context:
            page = context.new_page()
            page.goto(f"{server.url}/graph?{urlencode(params)}")
            page.wait_for_selector(".graph_area svg, .graph svg", timeout=30_000)
            page.wait_for_timeout(2_000)
            output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(output), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.screenshot", description=__doc__)
    parser.add_argument(
        "page", nargs="?", choices=["management", "prometheus", "all"], default="all"
    )
    parser.add_argument("--ui", default="http://127.0.0.1:15672/")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--minutes", type=float, default=3.0, help="of orders in the graph")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium here: apt-get update && apt-get install -y chromium")
    stop = threading.Event()
    orders = threading.Thread(target=keep_ordering, args=(stop,), daemon=True)
    orders.start()
    saved = []
    try:
        if args.page in ("management", "all"):
            management(args.ui, args.vhost, args.docs / "management-ui.png", chromium)
            saved.append(args.docs / "management-ui.png")
        if args.page in ("prometheus", "all"):
            prometheus(args.docs / "prometheus.png", chromium, args.minutes)
            saved.append(args.docs / "prometheus.png")
    finally:
        stop.set()
        orders.join(timeout=10)
    for path in saved:
        print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
