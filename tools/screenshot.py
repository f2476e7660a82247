"""`make screenshot`: the RabbitMQ management UI's queues page, as docs/management-ui.png.

Logs in as guest in headless Chromium (the system's, `apt-get install chromium`; Playwright
drives it and downloads no browser), shows the vhost's service queues and their dead-letter queues
while a few orders flow, and saves the picture. Needs the services running (`make up`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from tools.client import Shop, unique

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


def keep_ordering(stop: threading.Event) -> None:
    """Orders placed in a loop, so that the queues page shows messages moving."""
    with Shop() as shop:
        sku, customer = unique("postcard"), unique("ursula")
        shop.stock(sku, on_hand=100_000, price_cents=100, name="A postcard")
        shop.open_account(customer, balance_cents=10_000_000)
        while not stop.is_set():
            shop.place(customer, [(sku, 1)])
            time.sleep(0.05)


def screenshot(ui: str, vhost: str, output: Path, chromium: str) -> None:
    with tempfile.TemporaryDirectory(prefix="saga-chromium-") as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1100},
        )
        page = browser.new_page()
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
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.screenshot", description=__doc__)
    parser.add_argument("--ui", default="http://127.0.0.1:15672/")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "management-ui.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium here: apt-get update && apt-get install -y chromium")
    stop = threading.Event()
    orders = threading.Thread(target=keep_ordering, args=(stop,), daemon=True)
    orders.start()
    try:
        screenshot(args.ui, args.vhost, args.output, chromium)
    finally:
        stop.set()
        orders.join(timeout=10)
    print(
        f"saved {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}"
    )


if __name__ == "__main__":
    main()
