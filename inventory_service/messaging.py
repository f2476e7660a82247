"""What inventory_service listens to and tells the world; queue bindings derive from this."""

from contracts import (
    Event,
    OrderCancelled,
    OrderCreated,
    PaymentFailed,
    PaymentSucceeded,
    StockCommitted,
    StockFailed,
    StockReleased,
    StockReserved,
)
from inventory_service import handlers
from inventory_service.store import Stock
from outbox import Handler, Manifest

SERVICE = "inventory_service"
CONSUMES: dict[type[Event], Handler] = {
    OrderCreated: handlers.reserve_stock,
    PaymentSucceeded: handlers.commit_stock,
    PaymentFailed: handlers.release_stock,
    OrderCancelled: handlers.release_stock,
}
EMITS = (StockReserved, StockFailed, StockCommitted, StockReleased)
# Published for whoever wants to know; no service of ours needs it (docs/spec.md §2).
BROADCASTS = (StockReleased,)

MANIFEST = Manifest(SERVICE, CONSUMES, EMITS, BROADCASTS, unit=Stock)
