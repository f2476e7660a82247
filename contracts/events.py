"""The saga's events (docs/spec.md §4) as msgspec Structs in one tagged union.

Each event's tag is its class name, which is also its routing key on the `events` exchange.
Events are facts in the past tense. Contracts only grow: a new field gets a default, and a
breaking change is a new event name, never a rename or a retype.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

import msgspec


def _now() -> datetime:
    return datetime.now(UTC)


class Item(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One order line; `unit_price_cents` is set by whoever knows the price (inventory)."""

    sku: str
    quantity: int
    unit_price_cents: int | None = None


class Shortage(msgspec.Struct, frozen=True, kw_only=True):
    """Why one line of an order could not be reserved."""

    sku: str
    requested: int
    available: int


#: Why inventory refused an order.
StockFailReason = Literal["out_of_stock", "unknown_product", "order_cancelled"]
#: Why payment refused a charge.
PaymentFailReason = Literal["insufficient_funds", "no_account", "order_cancelled"]
#: Why an order was cancelled: a failed step (inventory's or payment's reason), the customer, or
#: its deadline.
CancelReason = Literal[
    "out_of_stock",
    "unknown_product",
    "insufficient_funds",
    "no_account",
    "customer_request",
    "timeout",
]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="event", tag=True):
    """Base of every event: a stable id (the AMQP message id) and when it happened.

    Every event of the saga concerns one order, whose id is the message's correlation id.
    """

    order_id: uuid.UUID
    event_id: uuid.UUID = msgspec.field(default_factory=uuid.uuid4)
    occurred_at: datetime = msgspec.field(default_factory=_now)


class OrderCreated(Event, frozen=True, kw_only=True):
    """order_service: a customer placed an order."""

    customer_id: str
    items: tuple[Item, ...]


class StockReserved(Event, frozen=True, kw_only=True):
    """inventory_service: every line is reserved; the price is fixed here."""

    customer_id: str
    items: tuple[Item, ...]
    amount_cents: int


class StockFailed(Event, frozen=True, kw_only=True):
    """inventory_service: a line could not be reserved, so nothing was."""

    reason: StockFailReason
    shortages: tuple[Shortage, ...] = ()


class PaymentSucceeded(Event, frozen=True, kw_only=True):
    """payment_service: the customer was charged."""

    customer_id: str
    payment_id: uuid.UUID
    amount_cents: int


class PaymentFailed(Event, frozen=True, kw_only=True):
    """payment_service: the charge was refused; nothing was taken."""

    customer_id: str
    reason: PaymentFailReason


class StockCommitted(Event, frozen=True, kw_only=True):
    """inventory_service: after payment, the reservation became a sale."""


class OrderCompleted(Event, frozen=True, kw_only=True):
    """order_service, terminal: stock sold and paid for."""

    customer_id: str
    amount_cents: int


class OrderCancelled(Event, frozen=True, kw_only=True):
    """order_service, terminal: a step failed, the customer asked, or the deadline passed."""

    customer_id: str
    reason: CancelReason


class StockReleased(Event, frozen=True, kw_only=True):
    """inventory_service, compensation: reserved or sold stock was given back."""

    items: tuple[Item, ...]


class PaymentRefunded(Event, frozen=True, kw_only=True):
    """payment_service, compensation: a charge was returned to the customer."""

    customer_id: str
    payment_id: uuid.UUID
    amount_cents: int


ALL_EVENTS: tuple[type[Event], ...] = (
    OrderCreated,
    StockReserved,
    StockFailed,
    PaymentSucceeded,
    PaymentFailed,
    StockCommitted,
    OrderCompleted,
    OrderCancelled,
    StockReleased,
    PaymentRefunded,
)


def event_name(event: Event | type[Event]) -> str:
    """The event's name: its JSON tag and its routing key."""
    cls = event if isinstance(event, type) else type(event)
    return cls.__name__
