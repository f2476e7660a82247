"""A notification: one message to a customer per terminal event of an order."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, String, Text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Notification(Base):
    """What the customer was told, and which event made us tell it.

    `source_event_id` is unique: beyond the inbox, a second guarantee that one event never makes
    two notifications (the inbox is per queue, and its rows are purged after a while).
    """

    __tablename__ = "notifications"

    notification_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    source_event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    customer_id: Mapped[str] = mapped_column(String(64))
    #: The event's name: OrderCompleted, OrderCancelled or PaymentRefunded.
    event: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_notifications_order_created", "order_id", "created_at"),
        Index("ix_notifications_customer_created", "customer_id", "created_at"),
        Index("ix_notifications_created", "created_at"),
    )
