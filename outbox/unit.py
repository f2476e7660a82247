"""What one transaction works on: a service's rows, loaded and locked together up front, changed in
memory by its handlers, and written back together at commit; and the events those handlers emit.

A consumer hands a batch of deliveries to one transaction. Loading every row the batch needs with
one statement per table, in one lock order, and writing back with one statement per table, keeps
a transaction at a handful of round trips however many deliveries it carries, and lets two batches
that share rows never deadlock. SQLAlchemy's ORM unit of work would do the same bookkeeping at
several times the CPU per row (docs/performance.md): the models are still the ORM's declarative
classes, used here as plain objects with their state transitions, and every statement is built
once and sent straight to psycopg (`outbox.transaction`).

A consumer's transaction (`begin`) runs on a connection of the service's `Pool`, with no
SQLAlchemy session; an HTTP request's (`session`) on its session's connection, so that the
route's ORM reads and its units share one transaction. Both commit the same way (`commit`).
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import msgspec
import psycopg
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import Event
from outbox import transaction
from outbox.transaction import BulkInsert, Pool, Sent, Transaction
from outbox.writer import add, insert_staged

M = TypeVar("M")


class Unit:
    """Base of each service's unit: its transaction, and `emit` for its events.

    A service's unit names what it holds (`Stock.reservations`, `Stock.products`), loads it in
    `load` for the events of a batch, and writes it back in `save`, which `commit` calls. Handlers
    take the unit and one event, change models, and `emit` what they decided; they never touch the
    database.
    """

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        tx.register(self)

    @classmethod
    async def load(cls, tx: Transaction, events: Sequence[Event]) -> Self:
        """The unit for a batch of `events`, with every row their handlers need, locked. This
        base loads nothing."""
        return cls(tx)

    async def save(self) -> None:
        """Write back what the handlers changed or added: each `Rows` of the unit, in the order
        they were declared. `commit` calls it."""
        for rows in vars(self).values():
            if isinstance(rows, Rows):
                await rows.save(self.tx)

    def unsaved(self) -> bool:
        return any(isinstance(rows, Rows) and rows.changed() for rows in vars(self).values())

    def emit(self, event: Event) -> None:
        """Stage `event` in this transaction's outbox: published once the transaction commits."""
        add(self.tx, event)

    def committed(self) -> None:
        """Called once the transaction has committed, never after a rollback: what its handlers
        did is now true (for a metric to count it). This base does nothing."""


class Rows(Generic[M]):
    """The rows of one table a unit works on, as model objects by primary key: loaded with one
    statement, saved with one (an upsert of the new ones and of those that changed)."""

    _encoder: ClassVar[msgspec.json.Encoder] = msgspec.json.Encoder()

    def __init__(self, model: type[M]) -> None:
        self._model = model
        table = cast(Table, model.__table__)  # type: ignore[attr-defined]
        self._upsert = _upsert(table)
        self._columns = self._upsert.columns
        self._key = tuple(column.name for column in table.primary_key)
        self._objects: dict[Any, M] = {}
        #: What each loaded row held, to tell which ones a handler changed.
        self._loaded: dict[Any, bytes] = {}

    async def load(
        self, tx: Transaction, sql: str, params: Mapping[str, Any] | None = None
    ) -> list[M]:
        """Run `sql` (a select of this table's columns, `transaction.compiled`) and keep its rows
        as models; returns them."""
        return await self.take(await tx.send(sql, params))

    async def take(self, sent: Sent) -> list[M]:
        """Keep the rows of a select sent earlier (`load_together`) as models; returns them."""
        found = []
        for values in await sent.rows():
            key = self._key_of(values)
            if key not in self._objects:
                model = self._model(**values)
                self._objects[key] = model
                self._loaded[key] = self._snapshot(model)
            found.append(self._objects[key])
        return found

    def get(self, key: Any) -> M | None:
        return self._objects.get(key)

    def add(self, model: M) -> M:
        """A new row, inserted by `save`."""
        self._objects[self._key_of({name: getattr(model, name) for name in self._key})] = model
        return model

    def __iter__(self) -> Iterator[M]:
        return iter(self._objects.values())

    def changed(self) -> list[dict[str, Any]]:
        """The rows to write: new ones, and loaded ones whose values changed."""
        return [
            {name: getattr(model, name) for name in self._columns}
            for key, model in self._objects.items()
            if self._loaded.get(key) != self._snapshot(model)
        ]

    async def save(self, tx: Transaction) -> int:
        """Upsert the changed rows in one statement; returns how many."""
        rows = self.changed()
        if rows:
            await tx.execute(self._upsert.sql, self._upsert.params(rows))
            for key, model in self._objects.items():
                self._loaded[key] = self._snapshot(model)
        return len(rows)

    def _key_of(self, values: Mapping[str, Any]) -> Any:
        key = tuple(values[name] for name in self._key)
        return key[0] if len(key) == 1 else key

    def _snapshot(self, model: M) -> bytes:
        # Encoded, so that a value changed in place (a JSON list) still shows as a change.
        return self._encoder.encode(tuple(getattr(model, name) for name in self._columns))


async def load_together(tx: Transaction, *loads: tuple[Rows[Any], str, Mapping[str, Any]]) -> None:
    """Several `Rows.load`s whose statements are all sent before any is read: in a pipeline, they
    travel in one round trip."""
    sent = [(rows, await tx.send(sql, params)) for rows, sql, params in loads]
    for rows, statement in sent:
        await rows.take(statement)


@functools.cache
def _upsert(table: Table) -> BulkInsert:
    return BulkInsert.upsert(table)


@contextlib.asynccontextmanager
async def begin(pool: Pool) -> AsyncIterator[Transaction]:
    """A transaction of the saga's hot path, on a connection of `pool`, sent as one pipeline with
    no `BEGIN` and no `COMMIT`: PostgreSQL runs what a pipeline sends up to its Sync as one
    transaction, and commits it at that Sync, which psycopg sends as the pipeline ends (the
    protocol's "Pipelining"). Its statements travel in as few round trips as its reads allow:
    those sent before the first rows are read together (the inbox claims and the unit's first
    loads), then the units' writes and the outbox rows with the Sync (`write_back`).

    If the body raises, a `ROLLBACK` goes ahead of the Sync (`_abandon`): a Sync after a failure
    would commit the claims without their handlers' effects. Once it committed, the relay gets its
    events and its units are told (`committed`), before the connection goes back: a cancel while
    it goes back cannot skip the hand-over."""
    async with pool.connection() as connection:
        tx = Transaction(connection, pool.emits, pipelined=True)
        async with connection.pipeline():
            try:
                yield tx
                await write_back(tx)
            except BaseException as failed:
                await _abandon(connection, failed)
                raise
        tx.committed(pool.hand_over)


async def _abandon(connection: psycopg.AsyncConnection[Any], failed: BaseException) -> None:
    """Make sure that the Sync ending a failed pipeline commits nothing: a `ROLLBACK` queued ahead
    of it ends the transaction there (and the server skips it if a statement failed already: the
    Sync then ends an aborted transaction). After a cancel or a crash, or if the `ROLLBACK`
    cannot be sent, the connection is closed instead: a server whose session ends rolls back."""
    if isinstance(failed, Exception) and not connection.closed:
        try:
            await connection.execute("ROLLBACK")
            return
        except Exception:
            pass  # closed below; the caller raises the failure itself, not this one
        except BaseException:
            await connection.close()
            raise  # a cancel that came meanwhile is not lost
    await connection.close()


@contextlib.asynccontextmanager
async def session(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """An HTTP request's transaction: a session whose `Transaction` (`outbox.transaction.of`) is
    on the session's own connection, so that the units of a route and its ORM reads and writes
    commit together, the same way as `begin`'s."""
    async with sessionmaker() as opened, opened.begin():
        raw = await (await opened.connection()).get_raw_connection()
        assert raw.driver_connection is not None
        tx = Transaction(raw.driver_connection, transaction.emits_of(opened))
        transaction.attach(opened, tx)
        yield opened
        await opened.flush()  # ORM changes (the route's), if any, go first
        await commit(tx)
        # The session's own commit, right after, hands the events over (`outbox.writer`).


async def commit(tx: Transaction) -> None:
    """An HTTP request's transaction: its writes (`write_back`) and its `COMMIT`, in one round
    trip."""
    async with tx.pipeline():
        await write_back(tx)
        await tx.connection.commit()


async def write_back(tx: Transaction) -> None:
    """Write back the transaction's units and insert its staged events as outbox rows (sent, in a
    pipeline, with what follows)."""
    for unit in tx.units:
        await unit.save()
    await insert_staged(tx)


def ids(events: Sequence[Event]) -> list[uuid.UUID]:
    """The orders of a batch's events, sorted (the order their rows are locked in)."""
    return sorted({event.order_id for event in events})
