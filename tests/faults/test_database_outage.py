"""A database that is down for a while is an outage, not a poison: a consumer keeps retrying the
message with backoff and handles it once the database is back, nothing is dead-lettered; and a
service (re)started meanwhile waits for its database instead of exiting."""

from __future__ import annotations

import asyncio

import pytest

from contracts import StockReserved
from harness.system import service_process
from harness.wait import eventually, eventually_sync
from outbox.manifest import dead_letter_queue
from tests.support.faults import databases_down
from tests.support.orders import get_order, place_order, stock_reserved
from tests.support.services import handled

pytestmark = pytest.mark.faults

#: Longer than a PostgreSQL restart usually takes, and than the retries used to last (16 s).
OUTAGE_S = 20.0


async def test_a_message_that_arrives_while_the_database_is_down_is_handled_once_it_is_back(
    order_service, order_database, servers, broker, vhost
):
    order, _ = await place_order(order_service)
    retried_before = handled("StockReserved", "retried")
    dead_before = handled("StockReserved", "dead_lettered")

    with databases_down(servers.postgres_admin_url, [order_database]):
        await broker.publish_event(stock_reserved(order), app_id="inventory_service")
        await eventually(lambda: handled("StockReserved", "retried") >= retried_before + 3)
        await asyncio.sleep(OUTAGE_S)

    reserved = await eventually(lambda: _reserved(order_service, order.order_id), timeout=60)
    assert reserved.total_cents == 2500
    assert handled("StockReserved", "dead_lettered") == dead_before
    queue = dead_letter_queue(order_service.manifest.queue_for(StockReserved))
    assert vhost.get_messages(queue) == []


async def _reserved(messaging, order_id):
    order = await get_order(messaging, order_id)
    return order if order.status == "reserved" else None


def test_a_service_started_while_its_database_is_down_comes_up_with_it(
    servers, vhost, database_factory, tmp_path
):
    url = database_factory("inventory_service")
    inventory = service_process("inventory_service", url, vhost.amqp_url, tmp_path)
    try:
        with databases_down(servers.postgres_admin_url, [url]):
            inventory.start()
            eventually_sync(lambda: "retrying in" in inventory.log_tail(), timeout=60)
            assert inventory.running, inventory.log_tail()

        inventory.wait_ready(timeout=60)
    finally:
        inventory.stop()
