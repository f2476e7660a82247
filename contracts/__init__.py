"""Event contracts of the checkout saga: what services tell each other, and how it travels as JSON."""

from contracts.codec import SCHEMA_VERSION, DecodeError, decode, encode
from contracts.events import (
    ALL_EVENTS,
    Event,
    Item,
    OrderCancelled,
    OrderCompleted,
    OrderCreated,
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
    Shortage,
    StockCommitted,
    StockFailed,
    StockReleased,
    StockReserved,
    event_name,
)

__all__ = [
    "ALL_EVENTS",
    "SCHEMA_VERSION",
    "DecodeError",
    "Event",
    "Item",
    "OrderCancelled",
    "OrderCompleted",
    "OrderCreated",
    "PaymentFailed",
    "PaymentRefunded",
    "PaymentSucceeded",
    "Shortage",
    "StockCommitted",
    "StockFailed",
    "StockReleased",
    "StockReserved",
    "decode",
    "encode",
    "event_name",
]
