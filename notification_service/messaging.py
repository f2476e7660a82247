"""What notification_service listens to (it emits nothing); queue bindings derive from this."""

from contracts import OrderCancelled, OrderCompleted, PaymentRefunded
from notification_service import handlers
from outbox import Manifest

SERVICE = "notification_service"
CONSUMES = {
    OrderCompleted: handlers.notify_customer,
    OrderCancelled: handlers.notify_customer,
    PaymentRefunded: handlers.notify_customer,
}
EMITS = ()

MANIFEST = Manifest(SERVICE, CONSUMES, EMITS)
