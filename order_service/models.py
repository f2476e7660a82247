"""The order and its state machine: each transition is a method that ignores moves it must not make."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, String, false, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from contracts import CancelReason


class Base(DeclarativeBase):
    pass


class Status(StrEnum):
    PENDING = "pending"
    RESERVED = "reserved"
    PAID = "paid"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


TERMINAL = (Status.COMPLETED, Status.CANCELLED)


def _now() -> datetime:
    return datetime.now(UTC)


class Order(Base):
    """One checkout. Events may reach it late, twice or out of order, so every transition checks
    where the order stands and returns whether it changed anything."""

    __tablename__ = "orders"

    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    #: [{"sku", "quantity", "unit_price_cents"}]; prices are filled in by StockReserved.
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    total_cents: Mapped[int | None] = mapped_column(BigInteger)  # money: bigint, as migrated
    cancel_reason: Mapped[str | None] = mapped_column(String(32))
    #: StockCommitted arrived (it may come before PaymentSucceeded; it implies the charge).
    stock_committed: Mapped[bool] = mapped_column(default=False, server_default=false())
    deadline_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_orders_customer_created", "customer_id", "created_at"),
        Index(
            "ix_orders_open_deadline",
            "deadline_at",
            postgresql_where=text("status IN ('pending', 'reserved')"),
        ),
    )

    @classmethod
    def place(cls, customer_id: str, items: list[dict[str, Any]], timeout_s: float) -> Order:
        now = _now()
        return cls(
            order_id=uuid.uuid4(),
            customer_id=customer_id,
            status=Status.PENDING,
            items=[{**item, "unit_price_cents": None} for item in items],
            total_cents=None,
            cancel_reason=None,
            stock_committed=False,
            deadline_at=now + timedelta(seconds=timeout_s),
            created_at=now,
            updated_at=now,
        )

    def mark_reserved(self, priced_items: list[dict[str, Any]], total_cents: int) -> bool:
        """Stock is held and the price known. Prices are recorded in any status but cancelled."""
        if self.status == Status.CANCELLED:
            return False
        self.items = priced_items
        self.total_cents = total_cents
        if self.status == Status.PENDING:
            self.status = Status.RESERVED
        self._touch()
        return True

    def mark_paid(self, amount_cents: int) -> bool:
        """The customer was charged. Ignored once the order is terminal (a charge after a
        cancellation is refunded by payment_service on its own)."""
        if self.status not in (Status.PENDING, Status.RESERVED):
            return False
        self.status = Status.PAID
        if self.total_cents is None:
            self.total_cents = amount_cents
        self._touch()
        return True

    def mark_stock_committed(self) -> bool:
        """Inventory sold the reserved stock, which it does only after the charge succeeded."""
        if self.status in TERMINAL or self.stock_committed:
            return False
        self.stock_committed = True
        self._touch()
        return True

    def complete(self) -> bool:
        """Completed once stock is sold and the total known; StockCommitted implies the payment."""
        if self.status in TERMINAL or not self.stock_committed or self.total_cents is None:
            return False
        self.status = Status.COMPLETED
        self._touch()
        return True

    def cancel(self, reason: CancelReason) -> bool:
        """Cancelled from any status but cancelled; the other services compensate on OrderCancelled."""
        if self.status == Status.CANCELLED:
            return False
        self.status = Status.CANCELLED
        self.cancel_reason = reason
        self._touch()
        return True

    def _touch(self) -> None:
        self.updated_at = _now()
