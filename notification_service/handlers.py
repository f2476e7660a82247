"""What notification_service does when an order ends or is refunded: tell the customer, once.

Handlers add the notification to what their transaction sends (`Outgoing`); the consumer owns
the transaction.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from contracts import OrderCancelled, OrderCompleted, PaymentRefunded, event_name
from notification_service.models import Notification
from notification_service.store import Outgoing

REASONS = {
    "out_of_stock": "out of stock",
    "unknown_product": "a product we do not sell",
    "insufficient_funds": "insufficient funds",
    "no_account": "no payment account",
    "customer_request": "at your request",
    "timeout": "not completed in time",
}


def notify_customer(
    outgoing: Outgoing, event: OrderCompleted | OrderCancelled | PaymentRefunded
) -> None:
    outgoing.add(
        Notification(
            notification_id=uuid.uuid4(),
            source_event_id=event.event_id,
            order_id=event.order_id,
            customer_id=event.customer_id,
            event=event_name(event),
            message=message_for(event),
            created_at=datetime.now(UTC),
        )
    )


def message_for(event: OrderCompleted | OrderCancelled | PaymentRefunded) -> str:
    """The sentence the customer reads."""
    order = f"order {str(event.order_id)[:8]}…"
    match event:
        case OrderCompleted():
            return f"Your {order} is complete: {_money(event.amount_cents)} charged."
        case OrderCancelled():
            reason = REASONS.get(event.reason, event.reason.replace("_", " "))
            return f"Your {order} was cancelled: {reason}."
        case PaymentRefunded():
            return f"Your payment for {order} was refunded: {_money(event.amount_cents)}."


def _money(cents: int) -> str:
    units, cents = divmod(cents, 100)
    return f"{units}.{cents:02d}"
