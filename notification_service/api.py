"""notification_service's HTTP API: what customers were told (docs/spec.md §6)."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from notification_service.models import Notification
from web import Principal
from web.params import DEFAULT_PAGE, Limit, Offset, SomeCustomerId


class NotificationOut(msgspec.Struct):
    notification_id: uuid.UUID
    order_id: uuid.UUID
    customer_id: str
    event: str
    message: str
    created_at: datetime

    @classmethod
    def of(cls, notification: Notification) -> NotificationOut:
        return cls(
            notification_id=notification.notification_id,
            order_id=notification.order_id,
            customer_id=notification.customer_id,
            event=notification.event,
            message=notification.message,
            created_at=notification.created_at,
        )


class NotificationController(Controller):
    path = "/notifications"
    tags = ["notifications"]

    @get("/")
    async def list_notifications(
        self,
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
        order_id: FromQuery[uuid.UUID | None] = None,
        customer_id: SomeCustomerId = None,
        limit: Limit = DEFAULT_PAGE,
        offset: Offset = 0,
    ) -> list[NotificationOut]:
        """The latest `limit` notifications after skipping the `offset` latest, oldest first: of
        one order with `order_id`, of one customer with `customer_id`, of everyone with neither.
        A customer sees only its own; an operator, anyone's."""
        customer_id = principal.listing(customer_id)
        query = (
            select(Notification)
            .order_by(Notification.created_at.desc(), Notification.notification_id.desc())
            .limit(limit)
            .offset(offset)
        )
        if order_id is not None:
            query = query.where(Notification.order_id == order_id)
        if customer_id is not None:
            query = query.where(Notification.customer_id == customer_id)
        latest = (await session.scalars(query)).all()
        return [NotificationOut.of(notification) for notification in reversed(latest)]
