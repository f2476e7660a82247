"""What payment_service listens to and what it tells the world; queue bindings derive from this."""

from contracts import (
    OrderCancelled,
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
    StockReserved,
)
from outbox import Manifest
from payment_service import handlers

SERVICE = "payment_service"
CONSUMES = {
    StockReserved: handlers.charge_payment,
    OrderCancelled: handlers.refund_payment,
}
EMITS = (PaymentSucceeded, PaymentFailed, PaymentRefunded)

MANIFEST = Manifest(SERVICE, CONSUMES, EMITS)
