"""How inventory_service keeps its stock: the reservations and products one transaction works on,
loaded and locked together up front, written back together (`outbox.unit`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Self

from sqlalchemy import ARRAY, String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import UUID

from contracts import Event, OrderCreated
from inventory_service.models import Product, Reservation
from outbox.transaction import Transaction, compiled
from outbox.unit import Rows, Unit, ids

_RESERVATIONS = Reservation.__table__.c
_PRODUCTS = Product.__table__.c
#: Built once. Reservations first (one per order, each order already locked by the inbox claim),
#: then products in sku order: every transaction takes its locks in that order, so two of them
#: that need the same products take turns instead of deadlocking.
_LOCK_RESERVATIONS = compiled(
    select(*_RESERVATIONS)
    .where(_RESERVATIONS.order_id == any_(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))))
    .order_by(_RESERVATIONS.order_id)
    .with_for_update()
)
_LOCK_PRODUCTS = compiled(
    select(*_PRODUCTS)
    .where(_PRODUCTS.sku == any_(bindparam("skus", type_=ARRAY(String))))
    .order_by(_PRODUCTS.sku)
    .with_for_update()
)


class Stock(Unit):
    """The orders' reservations and the products they hold or ask for, each locked."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx)
        self.reservations = Rows(Reservation)
        self.products = Rows(Product)
        self._skus: set[str] = set()

    @classmethod
    async def load(cls, tx: Transaction, events: Sequence[Event]) -> Self:
        """The reservations of the events' orders, then the products those reservations hold
        and the new orders ask for."""
        stock = cls(tx)
        await stock.reservations.load(tx, _LOCK_RESERVATIONS, {"ids": ids(events)})
        wanted = {i.sku for e in events if isinstance(e, OrderCreated) for i in e.items}
        held = {item["sku"] for r in stock.reservations for item in r.items}
        await stock.lock_products(wanted | held)
        return stock

    async def lock_products(self, skus: Iterable[str]) -> None:
        self._skus.update(skus)
        await self.products.load(self.tx, _LOCK_PRODUCTS, {"skus": sorted(set(skus))})

    def reservation(self, order_id: uuid.UUID) -> Reservation | None:
        return self.reservations.get(order_id)

    def products_of(self, skus: Iterable[str]) -> dict[str, Product]:
        """The products of these skus that exist (a sku missing here is unknown)."""
        found = {}
        for sku in skus:
            if sku not in self._skus:
                raise RuntimeError(f"product {sku!r} was not loaded with the batch")
            product = self.products.get(sku)
            if product is not None:
                found[sku] = product
        return found
