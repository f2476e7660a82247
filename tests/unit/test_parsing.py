"""What makes a message poison, judged on plain values: the consumers' and the checker's one rule."""

import uuid

import pytest

from contracts import SCHEMA_VERSION, Item, OrderCreated, StockReserved, encode
from outbox import PoisonMessage
from outbox.parsing import MAX_BODY_BYTES, parse_event

EVENT = OrderCreated(order_id=uuid.uuid4(), customer_id="alice", items=(Item(sku="A", quantity=1),))
BODY = encode(EVENT)
HEADERS = {"schema_version": SCHEMA_VERSION}


def test_a_valid_message_gives_back_its_event():
    assert parse_event(BODY, headers=HEADERS, name="OrderCreated", expected=OrderCreated) == EVENT
    assert parse_event(BODY, headers=None, name="OrderCreated") == EVENT


@pytest.mark.parametrize(
    ("body", "headers", "name", "expected", "why"),
    [
        (BODY + b" " * MAX_BODY_BYTES, HEADERS, "OrderCreated", None, "exceeds"),
        (BODY, {"schema_version": SCHEMA_VERSION + 1}, "OrderCreated", None, "schema_version"),
        (BODY, {"schema_version": True}, "OrderCreated", None, "schema_version"),
        (BODY, {"schema_version": "1"}, "OrderCreated", None, "schema_version"),
        (BODY, HEADERS, "OrderCreated", StockReserved, "in the StockReserved queue"),
        (BODY, HEADERS, "StockReserved", None, "message says StockReserved"),
        (BODY, HEADERS, None, None, "unknown event ''"),
        (b"{not json", HEADERS, "OrderCreated", None, "JSON"),
    ],
    ids=[
        "too big",
        "future version",
        "boolean version",
        "text version",
        "wrong queue",
        "type disagrees with body",
        "no type",
        "not json",
    ],
)
def test_a_message_that_is_no_valid_event_is_poison_saying_why(body, headers, name, expected, why):
    with pytest.raises(PoisonMessage, match=why):
        parse_event(body, headers=headers, name=name, expected=expected)
