"""Poison messages on the bus: malformed JSON, an unknown event, missing and mistyped fields, an
unknown schema version, a huge body. Each lands in the dead-letter queue of every service that
received it, at once (no retry loop), with the reason in that service's log; no service crashes,
and orders placed before, between and after them complete as usual."""

from __future__ import annotations

import json
import uuid

import pytest

from contracts import SCHEMA_VERSION, Item, OrderCancelled, OrderCreated, StockReserved, encode
from harness.system import System
from harness.wait import eventually_sync
from inventory_service.messaging import MANIFEST as INVENTORY
from notification_service.messaging import MANIFEST as NOTIFICATION
from order_service.messaging import MANIFEST as ORDER
from outbox.manifest import dead_letter_queue
from payment_service.messaging import MANIFEST as PAYMENT
from tools.client import unique

pytestmark = pytest.mark.e2e

SETTLE_S = 60.0
#: A deadline far away: orders must complete however slow a busy machine is.
ORDER_TIMEOUT_S = 300.0
HUGE_BYTES = 1024 * 1024  # four times what a consumer accepts
MANIFESTS = {m.service: m for m in (ORDER, INVENTORY, PAYMENT, NOTIFICATION)}


# Orders nobody placed, which the poison is about: had a service handled one of these messages,
# it would have reserved, charged, remembered a cancellation or notified someone for them.
CREATED = OrderCreated(
    order_id=uuid.uuid4(), customer_id="ghost", items=(Item(sku="ghost-sku", quantity=1),)
)
CANCELLED = OrderCancelled(order_id=uuid.uuid4(), customer_id="ghost", reason="customer_request")
RESERVED = StockReserved(order_id=uuid.uuid4(), customer_id="ghost", items=(), amount_cents=100)


def fields(event) -> dict:
    return json.loads(encode(event))


def without(event, name: str) -> bytes:
    return json.dumps({k: v for k, v in fields(event).items() if k != name}).encode()


def with_(original, **changes) -> bytes:
    return json.dumps({**fields(original), **changes}).encode()


def poisons() -> dict[str, tuple[str, bytes, dict, list[str], str]]:
    """name -> (routing key, body, properties, services whose dead-letter queue must get it, what
    the reason they log says)."""
    created, cancelled, reserved = CREATED, CANCELLED, RESERVED
    return {
        "malformed JSON": (
            "OrderCreated",
            encode(created)[:40],
            {"type": "OrderCreated"},
            ["inventory_service"],
            "truncated",
        ),
        "an unknown event name": (
            "OrderCreated",
            encode(created),
            {"type": "OrderTeleported"},
            ["inventory_service"],
            "'OrderTeleported' message in the OrderCreated queue",
        ),
        "a body naming an unknown event": (
            "OrderCancelled",
            with_(cancelled, event="OrderTeleported"),
            {"type": "OrderCancelled"},
            ["inventory_service", "payment_service", "notification_service"],
            "OrderTeleported",
        ),
        "a missing field": (
            "OrderCreated",
            without(created, "customer_id"),
            {"type": "OrderCreated"},
            ["inventory_service"],
            "customer_id",
        ),
        "a mistyped order id": (
            "OrderCancelled",
            with_(cancelled, order_id="not-a-uuid"),
            {"type": "OrderCancelled"},
            ["inventory_service", "payment_service", "notification_service"],
            "UUID",
        ),
        "a mistyped amount": (
            "StockReserved",
            with_(reserved, amount_cents="a hundred"),
            {"type": "StockReserved"},
            ["order_service", "payment_service"],
            "Expected `int`, got `str`",
        ),
        "an unknown schema version": (
            "OrderCreated",
            encode(created),
            {"type": "OrderCreated", "headers": {"schema_version": SCHEMA_VERSION + 1}},
            ["inventory_service"],
            "unknown schema_version",
        ),
        "a huge body": (
            "StockReserved",
            with_(reserved, padding="x" * HUGE_BYTES),
            {"type": "StockReserved"},
            ["order_service", "payment_service"],
            "exceeds",
        ),
    }


def publish(system: System, routing_key: str, body: bytes, properties: dict) -> str:
    """Publish to the `events` exchange through the management API; returns the message id."""
    message_id = str(uuid.uuid4())
    vhost = system.vhost
    properties = {
        "message_id": message_id,
        "content_type": "application/json",
        "delivery_mode": 2,
        "app_id": "a-stranger",
        "headers": {"schema_version": SCHEMA_VERSION},
        **properties,
    }
    routed = vhost.management.publish(vhost.name, routing_key, body, properties, "events")
    assert routed, routing_key
    return message_id


def counted(system: System, service: str, outcome: str) -> float:
    """All of the service's `saga_messages_handled_total` samples with this outcome."""
    return system[service].metric("saga_messages_handled_total", outcome=outcome)


def dead_letters(system: System, service: str) -> dict[str, dict]:
    """message id -> message, over every dead-letter queue of the service (a live look)."""
    found = {}
    for event in MANIFESTS[service].consumes:
        for message in system.vhost.get_messages(
            dead_letter_queue(MANIFESTS[service].queue_for(event))
        ):
            found[message["properties"]["message_id"]] = message
    return found


def logged_reason(system: System, service: str, message_id: str) -> str | None:
    """The reason the service logged for dead-lettering this message, if it did."""
    for line in system[service].log_path.read_text(errors="replace").splitlines():
        if message_id in line and '"level": "error"' in line:
            entry = json.loads(line)
            return entry["msg"].split(": ", 1)[1]
    return None


def test_poison_is_dead_lettered_at_once_with_its_reason_while_orders_keep_flowing(system, shop):
    sku, customer = unique("steady"), unique("jack")
    shop.stock(sku, on_hand=100, price_cents=300)
    shop.open_account(customer, balance_cents=100_000)
    pids = {name: process.pid for name, process in system.services.items()}
    retried_before = {name: counted(system, name, "retried") for name in system.services}
    poison_before = {name: counted(system, name, "poison") for name in system.services}
    orders = [shop.place(customer, [(sku, 1)])["order_id"] for _ in range(3)]

    sent: dict[str, tuple[str, list[str], str]] = {}
    for name, (routing_key, body, properties, receivers, because) in poisons().items():
        sent[name] = (publish(system, routing_key, body, properties), receivers, because)
        orders.append(shop.place(customer, [(sku, 1)])["order_id"])
    orders += [shop.place(customer, [(sku, 1)])["order_id"] for _ in range(3)]

    for order_id in orders:
        assert shop.wait_until_terminal(order_id, timeout=SETTLE_S)["status"] == "completed"
    assert shop.balance(customer) == 100_000 - 300 * len(orders)
    expected = {name: {m for m, r, _ in sent.values() if name in r} for name in system.services}
    found = eventually_sync(
        lambda: _all_there({n: dead_letters(system, n) for n in system.services}, expected),
        SETTLE_S,
        interval=0.5,
    )
    for service, letters in found.items():
        assert set(letters) == expected[service], service
        for message in letters.values():
            [death] = message["properties"]["headers"]["x-death"]
            assert (death["reason"], death["count"]) == ("rejected", 1)
    for name, (message_id, receivers, because) in sent.items():
        for service in receivers:
            reason = logged_reason(system, service, message_id)
            assert reason is not None, f"{service} logged no reason for {name}"
            assert because in reason, f"{service} dead-lettered {name}: {reason}"
    for name, process in system.services.items():
        assert process.pid == pids[name], f"{name} restarted"
        assert counted(system, name, "retried") == retried_before[name], f"{name} retried poison"
        assert counted(system, name, "poison") == poison_before[name] + len(expected[name])
    for ghost in (CREATED, CANCELLED, RESERVED):
        assert shop.reservation(str(ghost.order_id)) is None
        assert shop.payment(str(ghost.order_id)) is None
        assert shop.notifications(order_id=str(ghost.order_id)) == []


def _all_there(found: dict[str, dict], expected: dict[str, set[str]]) -> dict | None:
    return found if all(set(found[s]) >= expected[s] for s in expected) else None
