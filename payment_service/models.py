"""Accounts, their deposits, and one payment per order; each transition is a method that ignores
moves it must not make.

Money is audited from these tables alone: an account's balance equals its deposits, minus the
amounts of its payments that were charged (now succeeded or refunded), plus those refunded.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, String
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from contracts import PaymentFailReason


class Base(DeclarativeBase):
    pass


class Status(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUNDED = "refunded"


#: Reason of a payment refused because its order was cancelled before it was charged.
ORDER_CANCELLED: Final[PaymentFailReason] = "order_cancelled"


def _now() -> datetime:
    return datetime.now(UTC)


class AccountExists(Exception):
    """A customer has one account."""

    def __init__(self, customer_id: str) -> None:
        super().__init__(f"account {customer_id} exists")


class Account(Base):
    """A customer's money. The balance never goes below zero: the database refuses it too."""

    __tablename__ = "accounts"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    balance_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("balance_cents >= 0", name="ck_accounts_balance_not_negative"),
    )

    @classmethod
    def open(cls, customer_id: str) -> Account:
        """An empty account; money comes in through deposits, the first one included."""
        return cls(customer_id=customer_id, balance_cents=0, created_at=_now())

    def deposit(self, amount_cents: int) -> Deposit:
        """Add money, and the deposit that accounts for it."""
        self.balance_cents += amount_cents
        return Deposit(
            deposit_id=uuid.uuid4(),
            customer_id=self.customer_id,
            amount_cents=amount_cents,
            created_at=_now(),
        )

    def debit(self, amount_cents: int) -> bool:
        """Take money for a charge; refused (False) when the balance is short."""
        if self.balance_cents < amount_cents:
            return False
        self.balance_cents -= amount_cents
        return True

    def credit(self, amount_cents: int) -> None:
        """Give back the money of a refunded charge."""
        self.balance_cents += amount_cents


class Deposit(Base):
    """Money paid into an account, the opening balance included."""

    __tablename__ = "deposits"

    deposit_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("accounts.customer_id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_deposits_customer_created", "customer_id", "created_at"),)


class Payment(Base):
    """What payment_service did about one order. Events may reach it late, twice or out of order,
    so every transition checks where the payment stands and returns whether it changed anything.

    An OrderCancelled that comes before the order's StockReserved leaves a tombstone (failed,
    `order_cancelled`, not yet `answered`), so that the order is never charged afterwards.
    """

    __tablename__ = "payments"

    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), index=True)
    #: Set when the customer was charged; null for a payment that took nothing.
    payment_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    #: What StockReserved asked for; taken from the account only if the payment succeeded.
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(32))
    #: The order's StockReserved got its answer (PaymentSucceeded or PaymentFailed). False only on a
    #: tombstone whose StockReserved has not arrived yet.
    answered: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    @classmethod
    def succeeded(cls, order_id: uuid.UUID, customer_id: str, amount_cents: int) -> Payment:
        return cls._new(order_id, customer_id, Status.SUCCEEDED, amount_cents, None, answered=True)

    @classmethod
    def failed(
        cls, order_id: uuid.UUID, customer_id: str, amount_cents: int, reason: PaymentFailReason
    ) -> Payment:
        return cls._new(order_id, customer_id, Status.FAILED, amount_cents, reason, answered=True)

    @classmethod
    def cancelled_before_charge(cls, order_id: uuid.UUID, customer_id: str) -> Payment:
        """The tombstone of an order cancelled before payment_service heard of its StockReserved."""
        return cls._new(order_id, customer_id, Status.FAILED, 0, ORDER_CANCELLED, answered=False)

    def answer_cancelled(self, amount_cents: int) -> bool:
        """The StockReserved of a cancelled order arrived: True the first time only, when it is
        to be answered with PaymentFailed (`order_cancelled`)."""
        if self.answered or self.reason != ORDER_CANCELLED:
            return False
        self.answered = True
        self.amount_cents = amount_cents
        self._touch()
        return True

    def refund(self) -> bool:
        """The order was cancelled after the charge: True if the money is now to be given back."""
        if self.status != Status.SUCCEEDED:
            return False
        self.status = Status.REFUNDED
        self._touch()
        return True

    @classmethod
    def _new(
        cls,
        order_id: uuid.UUID,
        customer_id: str,
        status: Status,
        amount_cents: int,
        reason: str | None,
        *,
        answered: bool,
    ) -> Payment:
        now = _now()
        return cls(
            order_id=order_id,
            customer_id=customer_id,
            payment_id=uuid.uuid4() if status == Status.SUCCEEDED else None,
            status=status,
            amount_cents=amount_cents,
            reason=reason,
            answered=answered,
            created_at=now,
            updated_at=now,
        )

    def _touch(self) -> None:
        self.updated_at = _now()
