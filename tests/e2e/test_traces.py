"""Traces of the real processes: the four services started as `make up TRACES=1` starts them
(`TRACES_DIR`), each writing OTLP JSON lines with the SDK's file exporter; one order's spans, read
back by `make trace FORMAT=spans`'s reader, are one trace across the four services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.servers import Servers
from harness.system import System, running_system
from harness.wait import eventually_sync
from tools.client import unique
from tools.trace import read_spans, saga_spans

pytestmark = pytest.mark.e2e

SERVICES = {"order_service", "inventory_service", "payment_service", "notification_service"}


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="module")
def system(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory, traces: Path
) -> Iterator[System]:
    """The module's system, tracing to files; spans exported every 100 ms, not every 5 s."""
    env = {"TRACES_DIR": str(traces), "OTEL_BSP_SCHEDULE_DELAY": "100", "DB_POOL_SIZE": "5"}
    with running_system(servers, tmp_path_factory.mktemp("logs"), extra_env=env) as running:
        yield running


def test_an_orders_spans_in_the_services_files_are_one_trace_across_the_four(shop, traces):
    sku, customer = unique("kettle"), unique("ines")
    shop.stock(sku, on_hand=3, price_cents=900)
    shop.open_account(customer, balance_cents=5_000)
    order_id = shop.place(customer, [(sku, 1)])["order_id"]
    assert shop.wait_until_terminal(order_id)["status"] == "completed"

    def whole_saga() -> list | None:
        spans = saga_spans(order_id, read_spans(sorted(traces.glob("*.jsonl"))))
        consumers = {s.service for s in spans if s.kind == "consumer"}
        # A span is written when it ends: a parent may come after its children.
        ended = {s.span_id for s in spans} >= {s.parent_id for s in spans if s.parent_id}
        return spans if consumers == SERVICES and ended else None

    spans = eventually_sync(whole_saga, timeout=20)

    assert len({s.trace_id for s in spans}) == 1
    [root] = [s for s in spans if not s.parent_id]
    assert (root.name, root.kind, root.service) == ("POST /orders", "server", "order_service")
    assert {s.service for s in spans} == SERVICES
    assert {path.name.split(".")[0] for path in traces.glob("*.jsonl")} == SERVICES
    ids = {s.span_id for s in spans}
    assert all(s.parent_id in ids for s in spans if s is not root)
