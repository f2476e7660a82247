"""What order_service listens to and what it tells the world; queue bindings derive from this."""

from contracts import (
    Event,
    OrderCancelled,
    OrderCompleted,
    OrderCreated,
    PaymentFailed,
    PaymentSucceeded,
    StockCommitted,
    StockFailed,
    StockReserved,
)
from order_service import handlers
from order_service.store import Orders
from outbox import Handler, Manifest

SERVICE = "order_service"
CONSUMES: dict[type[Event], Handler] = {
    StockReserved: handlers.mark_reserved,
    StockFailed: handlers.cancel_for_stock,
    PaymentSucceeded: handlers.mark_paid,
    PaymentFailed: handlers.cancel_for_payment,
    StockCommitted: handlers.mark_stock_committed,
}
EMITS = (OrderCreated, OrderCompleted, OrderCancelled)

MANIFEST = Manifest(SERVICE, CONSUMES, EMITS, unit=Orders)
