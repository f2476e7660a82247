"""order_service's HTTP API: place, follow and cancel orders (docs/spec.md §6)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from order_service import handlers
from order_service.models import Order
from order_service.store import Orders
from outbox import transaction
from web import IdempotencyKeyHeader, Principal, remember, replay, request_hash
from web.params import DEFAULT_PAGE, Limit, Name, Offset, SomeCustomerId


class OrderLineIn(msgspec.Struct, forbid_unknown_fields=True):
    sku: Name
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1000)]


class PlaceOrder(msgspec.Struct, forbid_unknown_fields=True):
    items: Annotated[list[OrderLineIn], msgspec.Meta(min_length=1, max_length=50)]
    #: The caller's own id if left out; another customer's only with an operator's token.
    customer_id: Name | None = None


class OrderLine(msgspec.Struct):
    sku: str
    quantity: int
    unit_price_cents: int | None


class OrderOut(msgspec.Struct):
    order_id: uuid.UUID
    customer_id: str
    status: str
    items: list[OrderLine]
    total_cents: int | None
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, order: Order) -> OrderOut:
        return cls(
            order_id=order.order_id,
            customer_id=order.customer_id,
            status=order.status,
            items=[msgspec.convert(item, OrderLine) for item in order.items],
            total_cents=order.total_cents,
            cancel_reason=order.cancel_reason,
            created_at=order.created_at,
            updated_at=order.updated_at,
        )


class OrderController(Controller):
    path = "/orders"
    tags = ["orders"]

    @post("/", status_code=201)
    async def place_order(
        self,
        data: JSONBody[PlaceOrder],
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
        state: State,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[OrderOut] | Response[bytes]:
        """Place an order: it starts `pending`, and the saga takes it from there."""
        customer_id = principal.act_for(data.customer_id)
        body_hash = request_hash(data)
        # Keys are the customer's own: another's same key and body never replay its order.
        scope = f"orders:{customer_id}"
        if idempotency_key is not None:
            previous = await replay(session, scope, idempotency_key, body_hash)
            if previous is not None:
                return previous
        orders = Orders(transaction.of(session))
        order, _ = handlers.place_order(
            orders,
            customer_id,
            [(line.sku, line.quantity) for line in data.items],
            state.settings.order_timeout_s,
        )
        body = OrderOut.of(order)
        location = f"/orders/{order.order_id}"
        if idempotency_key is not None:
            remember(session, scope, idempotency_key, body_hash, 201, body, location)
        return Response(body, status_code=201, headers={"Location": location})

    @get("/{order_id:uuid}")
    async def get_order(
        self,
        order_id: FromPath[uuid.UUID],
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
    ) -> OrderOut:
        order = await session.get(Order, order_id)
        if order is None or not principal.owns(order.customer_id):
            raise NotFoundException(f"no order {order_id}")
        return OrderOut.of(order)

    @get("/")
    async def list_orders(
        self,
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
        customer_id: SomeCustomerId = None,
        limit: Limit = DEFAULT_PAGE,
        offset: Offset = 0,
    ) -> list[OrderOut]:
        """Orders, newest first: the caller's own; an operator's, everyone's or one customer's."""
        customer_id = principal.listing(customer_id)
        query = (
            select(Order)
            .order_by(Order.created_at.desc(), Order.order_id)
            .limit(limit)
            .offset(offset)
        )
        if customer_id is not None:
            query = query.where(Order.customer_id == customer_id)
        return [OrderOut.of(order) for order in await session.scalars(query)]

    @post("/{order_id:uuid}/cancel", status_code=202)
    async def cancel_order(
        self,
        order_id: FromPath[uuid.UUID],
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
    ) -> Response[OrderOut]:
        """Cancel in any status but cancelled (202); cancelling a cancelled order answers 200."""
        order, changed = await handlers.cancel_order(
            transaction.of(session), order_id, principal.restricted_to
        )
        if order is None:
            raise NotFoundException(f"no order {order_id}")
        return Response(OrderOut.of(order), status_code=202 if changed else 200)
