"""probe_service: a stand-in service for outbox tests, whose handlers leave a trace of every run.

Its `effects` table has no unique key, so a handler that ran twice for one message shows two rows:
only the inbox stands between a redelivery and a second effect. Tests build its manifest with
the handlers they need (`manifest({OrderCreated: record_effect})`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String, func, select
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from contracts import Event, event_name
from outbox import Handler, Manifest, MessagingSettings, local_database_url
from outbox.transaction import BulkInsert, Transaction
from outbox.unit import Unit

SERVICE = "probe_service"
MIGRATIONS = __name__  # for web.migrations.upgrade


class Settings(MessagingSettings, kw_only=True, frozen=True):
    service: str = SERVICE
    database_url: str = local_database_url(SERVICE)


class Base(DeclarativeBase):
    pass


class Effect(Base):
    """One run of a handler that committed."""

    __tablename__ = "effects"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    event_type: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )


_RECORD = BulkInsert(Effect.__table__, exclude=("id", "recorded_at"))


class Gate:
    """Stops the batch that carries an order's event in the middle of its transaction (after the
    claims, before the handlers) until the test opens it: a transaction held open, a batch seen
    whole (`batch`: the events it carries)."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._open = asyncio.Event()
        self.batch: list[Event] = []

    def open(self) -> None:
        self._open.set()

    async def wait(self, events: Sequence[Event]) -> None:
        self.batch = list(events)
        self.reached.set()
        await self._open.wait()


#: The gates armed, by order id; tests clear it.
GATES: dict[uuid.UUID, Gate] = {}


class Effects(Unit):
    """What a probe transaction writes: one effect per handler run, inserted before it commits."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx)
        self.recorded: list[dict[str, object]] = []

    @classmethod
    async def load(cls, tx: Transaction, events: Sequence[Event]) -> Effects:
        for event in events:
            if event.order_id in GATES:
                await GATES[event.order_id].wait(events)
        return cls(tx)

    async def save(self) -> None:
        if self.recorded:
            await self.tx.execute(_RECORD.sql, _RECORD.params(self.recorded))
            self.recorded.clear()

    def unsaved(self) -> bool:
        return bool(self.recorded)


def record_effect(effects: Effects, event: Event) -> None:
    effects.recorded.append(
        {"message_id": event.event_id, "event_type": event_name(event), "order_id": event.order_id}
    )


def manifest(
    consumes: Mapping[type[Event], Handler],
    emits: tuple[type[Event], ...] = (),
    broadcasts: tuple[type[Event], ...] = (),
) -> Manifest:
    return Manifest(SERVICE, consumes, emits, broadcasts, unit=Effects)


async def effects(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Effect]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(Effect).order_by(Effect.id)))
