"""What one transaction works on: a service's rows, loaded and locked together up front, changed in
memory by its handlers, and written back together; and the events those handlers emit.

A consumer hands a batch of deliveries to one transaction. Loading every row the batch needs with
one statement per table, in one lock order, and writing back with one statement per table, keeps
a transaction at a handful of round trips however many deliveries it carries, and lets two batches
that share rows never deadlock. SQLAlchemy's ORM unit of work would do the same bookkeeping at
several times the CPU per row (docs/performance.md): the models are still the ORM's declarative
classes, used here as plain objects with their state transitions, and every statement is Core.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import msgspec
from sqlalchemy import Executable, Table
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import Event
from outbox.writer import add

M = TypeVar("M")


class Unit:
    """Base of each service's unit: the session of the transaction, and `emit` for its events.

    A service's unit names what it holds (`Stock.reservations`, `Stock.products`), loads it in
    `load` for the events of a batch, and writes it back in `save`. Handlers take the unit and one
    event, change models, and `emit` what they decided; they never touch the database.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @classmethod
    async def load(cls, session: AsyncSession, events: Sequence[Event]) -> Self:
        """The unit for a batch of `events`, with every row their handlers need, locked. This
        base loads nothing."""
        return cls(session)

    async def save(self) -> None:
        """Write back what the handlers changed or added. This base has nothing to write."""

    def emit(self, event: Event) -> None:
        """Stage `event` in this transaction's outbox: published once the transaction commits."""
        add(self.session, event)


class Rows(Generic[M]):
    """The rows of one table a unit works on, as model objects by primary key: loaded with one
    statement, saved with one (an upsert of the new ones and of those that changed)."""

    _encoder: ClassVar[msgspec.json.Encoder] = msgspec.json.Encoder()

    def __init__(self, model: type[M]) -> None:
        self._model = model
        self._table = cast(Table, model.__table__)  # type: ignore[attr-defined]
        self._columns = tuple(column.name for column in self._table.columns)
        self._key = tuple(column.name for column in self._table.primary_key)
        self._objects: dict[Any, M] = {}
        #: What each loaded row held, to tell which ones a handler changed.
        self._loaded: dict[Any, bytes] = {}

    async def load(
        self, session: AsyncSession, statement: Executable, params: dict[str, Any] | None = None
    ) -> list[M]:
        """Run `statement` (a Core select of this table's columns) and keep its rows as models."""
        found = []
        for row in await session.execute(statement, params or {}):
            values = row._asdict()
            key = self._key_of(values)
            if key in self._objects:
                found.append(self._objects[key])
                continue
            model = self._model(**values)
            self._objects[key] = model
            self._loaded[key] = self._snapshot(model)
            found.append(model)
        return found

    def get(self, *key: Any) -> M | None:
        return self._objects.get(key[0] if len(key) == 1 else key)

    def add(self, model: M) -> M:
        """A new row, inserted by `save`."""
        self._objects[self._key_of({name: getattr(model, name) for name in self._key})] = model
        return model

    def __iter__(self) -> Iterator[M]:
        return iter(self._objects.values())

    def changed(self) -> list[dict[str, Any]]:
        """The rows to write: new ones, and loaded ones whose values changed."""
        rows = []
        for key, model in self._objects.items():
            if self._loaded.get(key) != self._snapshot(model):
                rows.append({name: getattr(model, name) for name in self._columns})
        return rows

    async def save(self, session: AsyncSession) -> int:
        """Upsert the changed rows in one statement; returns how many."""
        rows = self.changed()
        if rows:
            await session.execute(_upsert(self._table), rows)
            for key, model in self._objects.items():
                self._loaded[key] = self._snapshot(model)
        return len(rows)

    def _key_of(self, values: dict[str, Any]) -> Any:
        key = tuple(values[name] for name in self._key)
        return key[0] if len(key) == 1 else key

    def _snapshot(self, model: M) -> bytes:
        # Encoded, so that a value changed in place (a JSON list) still shows as a change.
        return self._encoder.encode(tuple(getattr(model, name) for name in self._columns))


@functools.cache
def _upsert(table: Table) -> Executable:
    """`INSERT … ON CONFLICT (key) DO UPDATE` of every column, built once per table. `RETURNING`
    makes SQLAlchemy send all rows in one multi-row statement rather than one per row."""
    statement = insert(table)
    key = [column.name for column in table.primary_key]
    return statement.on_conflict_do_update(
        index_elements=key,
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in key},
    ).returning(*table.primary_key.columns)


def ids(events: Sequence[Event]) -> list[uuid.UUID]:
    """The orders of a batch's events, sorted (the order their rows are locked in)."""
    return sorted({event.order_id for event in events})
