"""What notification_service listens to (it emits nothing); queue bindings derive from this."""

from contracts import Event, OrderCancelled, OrderCompleted, PaymentRefunded
from notification_service import handlers
from notification_service.store import Outgoing
from outbox import Handler, Manifest

SERVICE = "notification_service"
CONSUMES: dict[type[Event], Handler] = {
    OrderCompleted: handlers.notify_customer,
    OrderCancelled: handlers.notify_customer,
    PaymentRefunded: handlers.notify_customer,
}
EMITS = ()

MANIFEST = Manifest(SERVICE, CONSUMES, EMITS, unit=Outgoing)
