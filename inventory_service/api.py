"""inventory_service's HTTP API: manage products and their stock, look up reservations (docs/spec.md §6)."""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, put
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath, JSONBody
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from inventory_service import handlers
from inventory_service.models import Product, Reservation, StockBelowReserved
from web import Principal
from web.params import DEFAULT_PAGE, Limit, NameInPath, Offset


class ProductIn(msgspec.Struct, forbid_unknown_fields=True):
    # No control characters: PostgreSQL refuses NUL in text, and nobody means them in a name.
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
    price_cents: Annotated[int, msgspec.Meta(ge=0, le=10**12)]
    on_hand: Annotated[int, msgspec.Meta(ge=0, le=10**9)]


class ProductOut(msgspec.Struct):
    sku: str
    name: str
    price_cents: int
    on_hand: int
    reserved: int
    available: int

    @classmethod
    def of(cls, product: Product) -> ProductOut:
        return cls(
            sku=product.sku,
            name=product.name,
            price_cents=product.price_cents,
            on_hand=product.on_hand,
            reserved=product.reserved,
            available=product.available,
        )


class ReservationLine(msgspec.Struct):
    sku: str
    quantity: int
    unit_price_cents: int | None = None


class ReservationOut(msgspec.Struct):
    order_id: uuid.UUID
    status: str
    items: list[ReservationLine]

    @classmethod
    def of(cls, reservation: Reservation) -> ReservationOut:
        return cls(
            order_id=reservation.order_id,
            status=reservation.status,
            items=[msgspec.convert(item, ReservationLine) for item in reservation.items],
        )


class ProductController(Controller):
    path = "/products"
    tags = ["products"]

    @put("/{sku:str}", status_code=200)
    async def put_product(
        self,
        sku: NameInPath,
        data: JSONBody[ProductIn],
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
    ) -> Response[ProductOut]:
        """Create a product (201) or set its name, price and stock (200), as an operator. Stock
        can't go below what is reserved (409); a new price applies to reservations made from now
        on."""
        principal.require_admin()
        try:
            product, created = await handlers.put_product(
                session, sku, data.name, data.price_cents, data.on_hand
            )
        except StockBelowReserved as exc:
            raise ClientException(status_code=409, detail=str(exc)) from exc
        return Response(ProductOut.of(product), status_code=201 if created else 200)

    @get("/")
    async def list_products(self, session: NamedDependency[AsyncSession]) -> list[ProductOut]:
        """Every product, by sku."""
        products = await session.scalars(select(Product).order_by(Product.sku))
        return [ProductOut.of(product) for product in products]

    @get("/{sku:str}")
    async def get_product(
        self, sku: NameInPath, session: NamedDependency[AsyncSession]
    ) -> ProductOut:
        product = await session.get(Product, sku)
        if product is None:
            raise NotFoundException(f"no product {sku}")
        return ProductOut.of(product)


class ReservationController(Controller):
    path = "/reservations"
    tags = ["reservations"]

    @get("/")
    async def list_reservations(
        self,
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
        limit: Limit = DEFAULT_PAGE,
        offset: Offset = 0,
    ) -> list[ReservationOut]:
        """Every order's reservation, by order id, a page at a time (for audits, by operators)."""
        principal.require_admin()
        reservations = await session.scalars(
            select(Reservation).order_by(Reservation.order_id).limit(limit).offset(offset)
        )
        return [ReservationOut.of(reservation) for reservation in reservations]

    @get("/{order_id:uuid}")
    async def get_reservation(
        self,
        order_id: FromPath[uuid.UUID],
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
    ) -> ReservationOut:
        """What inventory did for an order: reserved, committed (sold), released or rejected."""
        reservation = await session.get(Reservation, order_id)
        if reservation is None or not principal.owns(reservation.customer_id):
            raise NotFoundException(f"no reservation for order {order_id}")
        return ReservationOut.of(reservation)
