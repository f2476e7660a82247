"""How notification_service keeps what it told customers: the notifications one transaction
writes, inserted together in one statement (`outbox.unit`)."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from notification_service.models import Notification
from outbox.transaction import BulkInsert, Transaction
from outbox.unit import Unit

#: Built once. An event already notified is skipped (`ON CONFLICT DO NOTHING` on its id): a safety
#: net beyond the inbox that costs no aborted transaction.
_INSERT = BulkInsert(
    cast(Table, Notification.__table__), "ON CONFLICT (source_event_id) DO NOTHING"
)


class Outgoing(Unit):
    """The notifications a transaction sends. Nothing to load: each event makes a new one."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx)
        self.notifications: list[Notification] = []

    def add(self, notification: Notification) -> None:
        self.notifications.append(notification)

    async def save(self) -> None:
        if self.notifications:
            rows = [{c: getattr(n, c) for c in _INSERT.columns} for n in self.notifications]
            await self.tx.execute(_INSERT.sql, _INSERT.params(rows))
            self.notifications.clear()

    def unsaved(self) -> bool:
        return bool(self.notifications)
