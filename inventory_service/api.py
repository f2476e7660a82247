"""inventory_service's HTTP API: manage products and their stock, look up reservations (docs/spec.md §6)."""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, put
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath, JSONBody, PathParameter, QueryParameter
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from inventory_service.models import Product, Reservation

# Litestar applies `PathParameter` constraints to path parameters; it ignores `msgspec.Meta` there.
Sku = Annotated[str, PathParameter(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


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
        self, sku: Sku, data: JSONBody[ProductIn], session: NamedDependency[AsyncSession]
    ) -> Response[ProductOut]:
        """Create a product (201) or set its name, price and stock (200). Stock can't go below
        what is reserved (409); a new price applies to reservations made from now on."""
        created = await session.scalar(
            insert(Product)
            .values(
                sku=sku,
                name=data.name,
                price_cents=data.price_cents,
                on_hand=data.on_hand,
                reserved=0,
            )
            .on_conflict_do_nothing()
            .returning(Product.sku)
        )
        product = await session.get(Product, sku, with_for_update=True)
        assert product is not None
        if created is None:
            if data.on_hand < product.reserved:
                raise ClientException(
                    status_code=409,
                    detail=f"on_hand {data.on_hand} is below the {product.reserved} units of "
                    f"{sku} reserved for orders",
                )
            product.name = data.name
            product.price_cents = data.price_cents
            product.on_hand = data.on_hand
        return Response(ProductOut.of(product), status_code=200 if created is None else 201)

    @get("/")
    async def list_products(self, session: NamedDependency[AsyncSession]) -> list[ProductOut]:
        """Every product, by sku."""
        products = await session.scalars(select(Product).order_by(Product.sku))
        return [ProductOut.of(product) for product in products]

    @get("/{sku:str}")
    async def get_product(self, sku: Sku, session: NamedDependency[AsyncSession]) -> ProductOut:
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
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0, le=10**9)] = 0,
    ) -> list[ReservationOut]:
        """Every order's reservation, by order id, a page at a time (for audits)."""
        reservations = await session.scalars(
            select(Reservation).order_by(Reservation.order_id).limit(limit).offset(offset)
        )
        return [ReservationOut.of(reservation) for reservation in reservations]

    @get("/{order_id:uuid}")
    async def get_reservation(
        self, order_id: FromPath[uuid.UUID], session: NamedDependency[AsyncSession]
    ) -> ReservationOut:
        """What inventory did for an order: reserved, committed (sold), released or rejected."""
        reservation = await session.get(Reservation, order_id)
        if reservation is None:
            raise NotFoundException(f"no reservation for order {order_id}")
        return ReservationOut.of(reservation)
