"""Products with their stock, and each order's reservation with its state machine.

A product's stock is `on_hand` units, of which `reserved` are held for orders not yet paid;
`available = on_hand - reserved`. Reservation transitions ignore moves they must not make, since
events may reach them late, twice or out of order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, DateTime, String
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Status(StrEnum):
    RESERVED = "reserved"
    COMMITTED = "committed"
    RELEASED = "released"
    REJECTED = "rejected"


def _now() -> datetime:
    return datetime.now(UTC)


def quantities(items: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Units per sku, in sku order (the order rows are locked in); an order may list a sku twice."""
    totals: dict[str, int] = {}
    for item in items:
        totals[item["sku"]] = totals.get(item["sku"], 0) + item["quantity"]
    return dict(sorted(totals.items()))


class StockBelowReserved(Exception):
    """A product's stock may not be set below the units held for orders."""

    def __init__(self, sku: str, on_hand: int, reserved: int) -> None:
        super().__init__(
            f"on_hand {on_hand} is below the {reserved} units of {sku} reserved for orders"
        )


class Product(Base):
    """A product, its price and its stock; the database refuses stock that does not add up."""

    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    price_cents: Mapped[int] = mapped_column(BigInteger)
    # Bigint: returns of sold stock may push on_hand past what one PUT may set.
    on_hand: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (
        CheckConstraint("on_hand >= 0", name="ck_products_on_hand"),
        CheckConstraint("reserved >= 0", name="ck_products_reserved"),
        CheckConstraint("reserved <= on_hand", name="ck_products_reserved_on_hand"),
    )

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def update(self, name: str, price_cents: int, on_hand: int) -> None:
        """Set the name, the price (for reservations made from now on) and the stock, which may
        not go below what is reserved (`StockBelowReserved`)."""
        if on_hand < self.reserved:
            raise StockBelowReserved(self.sku, on_hand, self.reserved)
        self.name = name
        self.price_cents = price_cents
        self.on_hand = on_hand

    def reserve(self, quantity: int) -> None:
        self.reserved += quantity

    def unreserve(self, quantity: int) -> None:
        self.reserved -= quantity

    def sell(self, quantity: int) -> None:
        """Reserved units leave the shelf."""
        self.on_hand -= quantity
        self.reserved -= quantity

    def take_back(self, quantity: int) -> None:
        """Sold units return to the shelf."""
        self.on_hand += quantity


class Reservation(Base):
    """What inventory did for one order: stock held, sold, given back, or refused.

    A `released` reservation with no items is a tombstone: the order was cancelled before its
    OrderCreated arrived, and must never be reserved.
    """

    __tablename__ = "reservations"

    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    #: [{"sku", "quantity", "unit_price_cents"}], as the order listed them; prices are null when
    #: nothing was reserved.
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    @classmethod
    def hold(
        cls, order_id: uuid.UUID, customer_id: str, priced_items: list[dict[str, Any]]
    ) -> Reservation:
        """Stock held for the order, at the prices of the moment."""
        amount = sum(item["unit_price_cents"] * item["quantity"] for item in priced_items)
        return cls._new(order_id, customer_id, Status.RESERVED, priced_items, amount)

    @classmethod
    def refuse(
        cls, order_id: uuid.UUID, customer_id: str, items: list[dict[str, Any]]
    ) -> Reservation:
        """Nothing held: a line was short or unknown."""
        unpriced = [{**item, "unit_price_cents": None} for item in items]
        return cls._new(order_id, customer_id, Status.REJECTED, unpriced, 0)

    @classmethod
    def tombstone(cls, order_id: uuid.UUID, customer_id: str) -> Reservation:
        """The order was cancelled before we heard of it: remember that, to refuse it later."""
        return cls._new(order_id, customer_id, Status.RELEASED, [], 0)

    @classmethod
    def _new(
        cls,
        order_id: uuid.UUID,
        customer_id: str,
        status: Status,
        items: list[dict[str, Any]],
        amount_cents: int,
    ) -> Reservation:
        now = _now()
        return cls(
            order_id=order_id,
            customer_id=customer_id,
            status=status,
            items=items,
            amount_cents=amount_cents,
            created_at=now,
            updated_at=now,
        )

    @property
    def is_tombstone(self) -> bool:
        return self.status == Status.RELEASED and not self.items

    def quantities(self) -> dict[str, int]:
        return quantities(self.items)

    def refuse_cancelled(self, items: list[dict[str, Any]]) -> bool:
        """OrderCreated reached a tombstone: the order is refused, once."""
        if not self.is_tombstone:
            return False
        self.status = Status.REJECTED
        self.items = [{**item, "unit_price_cents": None} for item in items]
        self._touch()
        return True

    def commit(self) -> bool:
        """The order was paid: held stock becomes a sale. Only a live reservation is sold."""
        if self.status != Status.RESERVED:
            return False
        self.status = Status.COMMITTED
        self._touch()
        return True

    def release(self, *, return_sold: bool) -> bool:
        """Held stock is freed; sold stock comes back only if `return_sold` (the order was
        cancelled after the sale: a failed payment never undoes one)."""
        if not (
            self.status == Status.RESERVED or (self.status == Status.COMMITTED and return_sold)
        ):
            return False
        self.status = Status.RELEASED
        self._touch()
        return True

    def _touch(self) -> None:
        self.updated_at = _now()
