"""What payment_service listens to and what it tells the world; queue bindings derive from this."""

from contracts import (
    Event,
    OrderCancelled,
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
    StockReserved,
)
from outbox import Handler, Manifest
from payment_service import handlers
from payment_service.store import Ledger

SERVICE = "payment_service"
CONSUMES: dict[type[Event], Handler] = {
    StockReserved: handlers.charge_payment,
    OrderCancelled: handlers.refund_payment,
}
EMITS = (PaymentSucceeded, PaymentFailed, PaymentRefunded)

MANIFEST = Manifest(SERVICE, CONSUMES, EMITS, unit=Ledger)
