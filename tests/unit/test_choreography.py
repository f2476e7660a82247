"""The four manifests, read together, make one consistent choreography (and match the README)."""

from pathlib import Path

import pytest

from contracts import (
    ALL_EVENTS,
    OrderCancelled,
    OrderCompleted,
    PaymentFailed,
    PaymentRefunded,
    StockFailed,
    StockReleased,
    event_name,
)
from inventory_service.messaging import MANIFEST as INVENTORY
from notification_service.messaging import MANIFEST as NOTIFICATION
from order_service.messaging import MANIFEST as ORDER
from payment_service.messaging import MANIFEST as PAYMENT

MANIFESTS = (ORDER, INVENTORY, PAYMENT, NOTIFICATION)


def emitters(event):
    return [m.service for m in MANIFESTS if event in m.emits]


def consumers(event):
    return [m.service for m in MANIFESTS if event in m.consumes]


def test_every_consumed_event_has_exactly_one_emitter():
    for manifest in MANIFESTS:
        for event in manifest.consumes:
            assert len(emitters(event)) == 1, (manifest.service, event_name(event))


def test_every_emitted_event_is_consumed_by_someone_or_declared_a_broadcast():
    broadcasts = {event for m in MANIFESTS for event in m.broadcasts}
    for event in ALL_EVENTS:
        if emitters(event) and event not in broadcasts:
            assert consumers(event), f"nobody listens to {event_name(event)}"
    assert {e for e in broadcasts if consumers(e)} == set(), "a broadcast nobody may miss"
    for manifest in MANIFESTS:
        assert set(manifest.broadcasts) <= set(manifest.emits), manifest.service


def test_no_service_consumes_its_own_events():
    for manifest in MANIFESTS:
        assert not set(manifest.consumes) & set(manifest.emits), manifest.service


def test_the_table_of_spec_section_2_holds():
    assert {event_name(e) for e in ORDER.consumes} == {
        "StockReserved",
        "StockFailed",
        "PaymentSucceeded",
        "PaymentFailed",
        "StockCommitted",
    }
    assert {event_name(e) for e in INVENTORY.consumes} == {
        "OrderCreated",
        "PaymentSucceeded",
        "PaymentFailed",
        "OrderCancelled",
    }
    assert {event_name(e) for e in PAYMENT.consumes} == {"StockReserved", "OrderCancelled"}
    assert set(NOTIFICATION.consumes) == {OrderCompleted, OrderCancelled, PaymentRefunded}
    assert NOTIFICATION.emits == ()


@pytest.mark.parametrize(
    ("failure", "compensations"),
    [
        # stock short: the order is cancelled (nothing was reserved or charged)
        (StockFailed, {OrderCancelled}),
        # payment refused: the reservation is released and the order cancelled
        (PaymentFailed, {StockReleased, OrderCancelled}),
        # the order is cancelled: stock comes back and a charge is refunded
        (OrderCancelled, {StockReleased, PaymentRefunded}),
    ],
)
def test_every_failure_has_its_compensation(failure, compensations):
    reacting = [m for m in MANIFESTS if failure in m.consumes]
    emitted_in_reaction = {e for m in reacting for e in m.emits}
    assert compensations <= emitted_in_reaction


def test_the_customer_hears_of_every_terminal_event_and_refund():
    assert {OrderCompleted, OrderCancelled, PaymentRefunded} <= set(NOTIFICATION.consumes)


def test_the_readme_diagram_lists_every_hop():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for manifest in MANIFESTS:
        for event in manifest.consumes:
            hop = f"{emitters(event)[0]} -- {event_name(event)} --> {manifest.service}"
            assert hop in readme, f"README diagram misses: {hop}"
