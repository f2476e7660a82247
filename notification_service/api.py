"""notification_service's HTTP API: what customers were told (docs/spec.md §6)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from notification_service.models import Notification

# A `QueryParameter`, not `msgspec.Meta`: Litestar ignores the latter on query parameters, and
# PostgreSQL refuses the NUL byte an unchecked one lets through (a 500, not a 400).
SomeCustomerId = Annotated[
    str | None, QueryParameter(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
]


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
        order_id: FromQuery[uuid.UUID | None] = None,
        customer_id: SomeCustomerId = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0, le=10**9)] = 0,
    ) -> list[NotificationOut]:
        """The latest `limit` notifications after skipping the `offset` latest, oldest first: of
        one order with `order_id`, of one customer with `customer_id`, of everyone with neither."""
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
