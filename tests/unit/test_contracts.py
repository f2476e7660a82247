"""Events survive the wire unchanged, and anything that is not a valid event is refused."""

import uuid

import msgspec
import pytest

from contracts import (
    ALL_EVENTS,
    DecodeError,
    Item,
    OrderCreated,
    PaymentFailed,
    Shortage,
    StockFailed,
    StockReserved,
    decode,
    encode,
    event_name,
)

ORDER = uuid.uuid4()

EXAMPLES = [
    OrderCreated(order_id=ORDER, customer_id="alice", items=(Item(sku="A", quantity=2),)),
    StockReserved(
        order_id=ORDER,
        customer_id="alice",
        items=(Item(sku="A", quantity=2, unit_price_cents=250),),
        amount_cents=500,
    ),
    StockFailed(
        order_id=ORDER,
        reason="out_of_stock",
        shortages=(Shortage(sku="A", requested=2, available=1),),
    ),
    PaymentFailed(order_id=ORDER, customer_id="alice", reason="no_account"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=event_name)
def test_an_event_round_trips_through_json(event):
    assert decode(encode(event), event_name(event)) == event


def test_the_body_carries_the_event_name_id_and_time():
    body = msgspec.json.decode(encode(EXAMPLES[0]))
    assert body["event"] == "OrderCreated"
    assert body["event_id"] == str(EXAMPLES[0].event_id)
    assert body["occurred_at"].endswith("Z")
    assert body["items"] == [{"sku": "A", "quantity": 2}]


def test_every_event_name_is_distinct_and_in_the_past_tense():
    names = [event_name(cls) for cls in ALL_EVENTS]
    assert len(set(names)) == len(names) == 10
    assert all(name.endswith(("ed", "Failed")) for name in names)


def test_unknown_fields_are_ignored_so_contracts_can_grow():
    body = msgspec.json.decode(encode(EXAMPLES[0]))
    body["coupon"] = "SPRING"
    assert decode(msgspec.json.encode(body), "OrderCreated") == EXAMPLES[0]


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b"{not json", "OrderCreated"),
        (b'{"event": "OrderShipped", "order_id": "' + str(ORDER).encode() + b'"}', None),
        (b'{"event": "OrderCreated", "order_id": "' + str(ORDER).encode() + b'"}', "OrderCreated"),
        (
            b'{"event": "PaymentFailed", "order_id": "x", "customer_id": "a", "reason": "no_account"}',
            "PaymentFailed",
        ),
        (
            b'{"event": "PaymentFailed", "order_id": "'
            + str(ORDER).encode()
            + b'", "customer_id": "a", "reason": "because"}',
            "PaymentFailed",
        ),
        (encode(EXAMPLES[0]), "StockReserved"),
        (encode(EXAMPLES[0]), "OrderShipped"),
    ],
    ids=[
        "malformed-json",
        "unknown-event",
        "missing-fields",
        "bad-uuid",
        "unknown-reason",
        "name-disagrees-with-body",
        "unknown-routing-key",
    ],
)
def test_invalid_messages_are_refused_with_a_reason(body, name):
    with pytest.raises(DecodeError) as refused:
        decode(body, name)
    assert str(refused.value)
