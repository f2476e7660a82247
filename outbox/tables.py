"""The messaging tables every service keeps in its own database: outbox, inbox, idempotency keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, LargeBinary, String, Text, func, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class MessagingBase(DeclarativeBase):
    """Registry for the runtime's own tables, apart from each service's business models."""


class OutboxMessage(MessagingBase):
    """An event staged in the transaction that caused it, published by the relay after commit.

    Rows are handed to the relay in memory when their transaction commits, or claimed by its
    sweep with `FOR UPDATE SKIP LOCKED` while `published_at` is null; marked published once the
    broker confirmed them, and deleted after the retention window (kept meanwhile for tracing).
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    causation_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    traceparent: Mapped[str] = mapped_column(String(55))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
        Index("ix_outbox_published_at", "published_at"),
    )


class InboxMessage(MessagingBase):
    """A message a consumer has handled; its primary key makes a redelivery a no-op."""

    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    emitted_by: Mapped[str | None] = mapped_column(String(64))
    handled_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp(), index=True
    )


class IdempotencyKey(MessagingBase):
    """The first response to a request made with an `Idempotency-Key`, replayed on a retry."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    response_body: Mapped[bytes] = mapped_column(LargeBinary)
    location: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
