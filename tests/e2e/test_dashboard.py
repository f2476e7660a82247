"""The dashboard against a real Prometheus (Debian's package, as `make prometheus` runs it):
scraping a running system's four services and RabbitMQ's Prometheus plugin, every query of every
panel of deploy/grafana/dashboards/ returns data once sagas have completed and been cancelled.

The queries are read from the dashboards' JSON, so that a panel added there is checked here."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.prometheus import (
    Prometheus,
    PrometheusUnavailable,
    broker_target,
    running_prometheus,
    scrape_config,
)
from harness.servers import Servers
from harness.system import System
from harness.wait import eventually_sync
from tools.client import Shop, unique
from tools.servers import answers

pytestmark = pytest.mark.e2e

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
#: Grafana's own variables, filled in as Grafana would for a short range scraped every second.
GRAFANA_VARIABLES = {"$__rate_interval": "30s"}
SCRAPE_INTERVAL_S = 1.0


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside collapsed rows too."""
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every target of every panel, Grafana's variables filled in."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                where = f"{path.name}: {panel['title']} ({target['refId']})"
                assert not re.search(r"\$\w", expr), f"{where}: a variable this test cannot fill"
                found.append((where, expr))
    return found


@pytest.fixture(scope="module")
def prometheus(
    system: System, servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    broker = broker_target(servers)
    host, port = broker.rsplit(":", 1)
    if not answers(host, int(port)):
        pytest.fail(f"RabbitMQ's Prometheus plugin does not answer on {broker}: make servers")
    targets: dict[str, list[str]] = {}
    for process in system.services.values():
        targets.setdefault(process.name, []).append(process.url.removeprefix("http://"))
    config = scrape_config(targets, broker, vhost=system.vhost.name, interval_s=SCRAPE_INTERVAL_S)
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                running_prometheus(config, tmp_path_factory.mktemp("prometheus"))
            )
        except PrometheusUnavailable as exc:
            pytest.fail(f"Prometheus cannot run here: {exc}")
        yield server


def run_sagas(shop: Shop) -> None:
    """Two orders completed, one completed then cancelled by its customer, one short of stock,
    one short of money: terminal outcomes with three reasons."""
    sku, rich, poor = unique("lamp"), unique("rita"), unique("paul")
    shop.stock(sku, on_hand=5, price_cents=1000)
    shop.open_account(rich, balance_cents=100_000)
    shop.open_account(poor, balance_cents=500)
    placed = [
        shop.place(rich, [(sku, 1)]),
        shop.place(rich, [(sku, 1)]),
        shop.place(rich, [(sku, 10)]),  # out of stock
        shop.place(poor, [(sku, 1)]),  # insufficient funds
    ]
    returned = shop.place(rich, [(sku, 1)])
    assert shop.wait_until_terminal(returned["order_id"])["status"] == "completed"
    assert shop.cancel(returned["order_id"]).status_code == 202
    ended = [shop.wait_until_terminal(order["order_id"]) for order in placed]
    assert [(o["status"], o["cancel_reason"]) for o in ended] == [
        ("completed", None),
        ("completed", None),
        ("cancelled", "out_of_stock"),
        ("cancelled", "insufficient_funds"),
    ]


def test_every_query_of_the_dashboard_returns_data_for_completed_and_cancelled_sagas(
    prometheus: Prometheus, shop: Shop
) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10  # every panel of the issue, some with two queries

    def all_scraped() -> bool:
        down = [
            (t["scrapeUrl"], t["lastError"]) for t in prometheus.targets() if t["health"] != "up"
        ]
        assert not down, down
        return True

    eventually_sync(all_scraped, timeout=30, interval=0.5)
    run_sagas(shop)

    def ended() -> dict[tuple[str, str], float]:
        return {
            (s["metric"]["outcome"], s["metric"].get("reason", "")): float(s["value"][1])
            for s in prometheus.query("saga_orders_ended_total")
        }

    expected = {
        ("completed", ""): 3,
        ("cancelled", "customer_request"): 1,
        ("cancelled", "out_of_stock"): 1,
        ("cancelled", "insufficient_funds"): 1,
        ("cancelled", "unknown_product"): 0,
        ("cancelled", "no_account"): 0,
        ("cancelled", "timeout"): 0,
    }

    def counted() -> bool:
        assert ended() == expected
        return True

    eventually_sync(counted, timeout=30, interval=0.5)

    def every_query_returns_data() -> bool:
        empty = [where for where, expr in queries if not prometheus.query(expr)]
        assert not empty, f"no data for {empty}"
        return True

    eventually_sync(every_query_returns_data, timeout=30, interval=1)
