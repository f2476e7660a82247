"""`make check` judges a dead letter as the consumer of its queue did (`outbox.parsing`): a valid
event has no business in a dead-letter queue, anything else is named for what is wrong with it."""

import base64
import uuid

import pytest

from contracts import SCHEMA_VERSION, OrderCompleted, encode
from tools.check import judge

QUEUE = "notification_service.OrderCompleted.dlq"
EVENT = OrderCompleted(order_id=uuid.uuid4(), customer_id="ann", amount_cents=100)


def dead_letter(body: bytes = encode(EVENT), **properties):
    """A dead-lettered message as the management API shows it (`Vhost.get_messages`)."""
    return {
        "payload": base64.b64encode(body).decode(),
        "payload_encoding": "base64",
        "properties": {
            "message_id": str(EVENT.event_id),
            "correlation_id": str(EVENT.order_id),
            "type": "OrderCompleted",
            "headers": {"schema_version": SCHEMA_VERSION},
            **properties,
        },
    }


def test_a_valid_event_in_its_own_queue_has_nothing_wrong_with_it():
    judged = judge(QUEUE, dead_letter())
    assert (judged.problem, judged.event, judged.order_id) == (
        None,
        "OrderCompleted",
        str(EVENT.order_id),
    )


def test_without_a_type_the_event_is_named_by_the_routing_key_it_was_published_with():
    death = {"queue": QUEUE.removesuffix(".dlq"), "routing-keys": ["OrderCompleted"]}
    message = dead_letter(type=None, headers={"x-death": [death]})
    assert judge(QUEUE, message).problem is None


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (dead_letter(b"{not json"), "JSON"),
        (dead_letter(headers={"schema_version": True}), "schema_version"),
        (dead_letter(type="StockReserved"), "in the OrderCompleted queue"),
        (dead_letter(encode(EVENT) + b" " * 300_000), "exceeds"),
    ],
    ids=["not json", "boolean version", "another queue's event", "too big"],
)
def test_a_message_the_consumer_refused_is_listed_with_its_reason(message, why):
    problem = judge(QUEUE, message).problem
    assert problem is not None
    assert why in problem
