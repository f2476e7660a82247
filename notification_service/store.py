"""How notification_service keeps what it told customers: the notifications one transaction
writes, inserted together in one statement (`outbox.unit`)."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from notification_service.models import Notification
from outbox.unit import Unit

_NOTIFICATIONS = cast(Table, Notification.__table__)
_COLUMNS = tuple(column.name for column in _NOTIFICATIONS.columns)
#: Built once. An event already notified is skipped (`ON CONFLICT DO NOTHING` on its id): a safety
#: net beyond the inbox that costs no aborted transaction. `RETURNING` makes it one statement
#: for the whole batch.
_INSERT = (
    insert(_NOTIFICATIONS)
    .on_conflict_do_nothing(index_elements=[_NOTIFICATIONS.c.source_event_id])
    .returning(_NOTIFICATIONS.c.notification_id)
)


class Outgoing(Unit):
    """The notifications a transaction sends. Nothing to load: each event makes a new one."""

    def __init__(self, session: AsyncSession) -> None:
        super().__init__(session)
        self.notifications: list[Notification] = []

    def add(self, notification: Notification) -> None:
        self.notifications.append(notification)

    async def save(self) -> None:
        if self.notifications:
            rows = [{c: getattr(n, c) for c in _COLUMNS} for n in self.notifications]
            await self.session.execute(_INSERT, rows)
            self.notifications.clear()
