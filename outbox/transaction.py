"""A service's transactions on a plain psycopg connection: `Transaction` holds the connection, the
units it writes back at commit and the events it staged; `Pool` hands out the connections of the
saga's hot path (the consumer's transactions), with no SQLAlchemy session above them.

The statements of the hot path (inbox claims, the units' loads and writes, the outbox rows) are
built once with SQLAlchemy Core or from the tables' metadata, compiled once, and sent straight to
psycopg: SQLAlchemy's execution machinery costs more CPU per statement than the statement itself,
and an AsyncSession (its greenlet hops, its pool's checkout and reset, its events) as much again
as the statements (docs/performance.md). A consumer's transaction is one psycopg pipeline on an
autocommit connection, with no `BEGIN` and no `COMMIT`: PostgreSQL commits what a pipeline sent at
its Sync (`outbox.unit.begin`). An HTTP request's
transaction is a session's (`outbox.unit.session`): its ORM reads and writes and its units share
the session's connection, through the same `Transaction`.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import LargeBinary, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

if TYPE_CHECKING:
    from contracts import Event
    from outbox.writer import HandOver, Staged

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
#: In a session's `info`: its `Transaction`; from its sessionmaker's, where committed events go
#: and which events the service may emit (`session_info`).
_TRANSACTION = "outbox.transaction"
_HAND_OVER = "outbox.hand_over"
_EMITS = "outbox.emits"
#: Rows as JSON: uuids, datetimes (ISO 8601), enums (their values) and nested JSON as PostgreSQL reads them.
_ROWS = msgspec.json.Encoder()


class Saves(Protocol):
    """What a transaction writes back at commit (a service's unit of rows), and is told once the
    commit is done."""

    async def save(self) -> None: ...

    def unsaved(self) -> bool: ...

    def committed(self) -> None: ...


def compiled(statement: ClauseElement) -> str:
    """A Core statement as SQL for psycopg, with `%(name)s` parameters: compile it once, at import."""
    return str(statement.compile(dialect=_DIALECT))


class Sent:
    """A statement sent, its rows not read yet. In a pipeline (`Transaction.pipeline`), statements
    sent one after the other travel together: reading the rows of any of them waits for all."""

    def __init__(self, cursor: psycopg.AsyncCursor[dict[str, Any]]) -> None:
        self._cursor = cursor

    async def rows(self) -> list[dict[str, Any]]:
        """Its rows, as dicts by column name."""
        try:
            return await self._cursor.fetchall()
        finally:
            await self._cursor.close()


class Transaction:
    """One transaction: its psycopg connection, the units written back at its commit
    (`outbox.unit.commit`), and the events it staged (`outbox.add`), handed to the relay once it
    committed.

    A session's transaction (`of`) gets its connection from `outbox.unit.session`; one that only
    stages events (a plain session's, in a test or a tool) has none, and SQLAlchemy inserts its
    events as the session commits (`outbox.writer`).
    """

    def __init__(
        self,
        connection: psycopg.AsyncConnection[Any] | None,
        emits: frozenset[type[Event]] | None = None,
        *,
        pipelined: bool = False,
    ) -> None:
        self._connection = connection
        #: The whole transaction is one pipeline (`outbox.unit.begin`), which its end commits.
        self.pipelined = pipelined
        #: The events this service may emit (its manifest's), if it says.
        self.emits = emits
        self.units: list[Saves] = []
        #: Staged events whose outbox rows are not sent yet.
        self.staged: list[Staged] = []
        #: Staged events whose rows are sent: the relay gets them once the transaction commits.
        self.inserted: list[Staged] = []

    @property
    def connection(self) -> psycopg.AsyncConnection[Any]:
        if self._connection is None:
            raise RuntimeError("this transaction has no connection: begin it with outbox.unit")
        return self._connection

    def register(self, unit: Saves) -> None:
        """`unit` is written back when the transaction commits (`outbox.unit.commit`)."""
        self.units.append(unit)

    async def send(self, sql: str, params: Mapping[str, Any] | None = None) -> Sent:
        cursor = self.connection.cursor(row_factory=dict_row)
        await cursor.execute(sql, params)
        return Sent(cursor)

    async def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The rows a statement returns, as dicts by column name."""
        return await (await self.send(sql, params)).rows()

    async def execute(self, sql: str, params: Mapping[str, Any]) -> None:
        """Send a statement whose result nobody reads: inside `commit`, it waits for the commit."""
        await self.connection.execute(sql, params)

    def pipeline(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Statements sent in the block wait for their answers together: one round trip for all
        the statements sent before the first rows are read, another for the rest. A transaction
        that is a pipeline already (`pipelined`) stays one: a pipeline's end would commit it."""
        if self.pipelined:
            return contextlib.nullcontext()
        return self.connection.pipeline()

    def committed(self, hand_over: HandOver | None) -> None:
        """The commit is done: the relay may publish the staged events, the units may count."""
        if self.inserted and hand_over is not None:
            hand_over(self.inserted)
        self.inserted = []
        for unit in self.units:
            unit.committed()


def of(session: AsyncSession) -> Transaction:
    """The `Transaction` of a session: the one `outbox.unit.session` began with its connection,
    or else one that stages events only."""
    found: Transaction | None = session.info.get(_TRANSACTION)
    if found is None:
        found = session.info[_TRANSACTION] = Transaction(None, emits_of(session))
    return found


def session_info(hand_over: HandOver, emits: Iterable[type[Event]]) -> dict[str, object]:
    """The `info` a service's sessionmaker carries: where committed events go (the relay's
    `hand_over`), which events it may emit."""
    return {_HAND_OVER: hand_over, _EMITS: frozenset(emits)}


def hand_over_of(session: AsyncSession | Session) -> HandOver | None:
    found: HandOver | None = session.info.get(_HAND_OVER)
    return found


def emits_of(session: AsyncSession | Session) -> frozenset[type[Event]] | None:
    found: frozenset[type[Event]] | None = session.info.get(_EMITS)
    return found


def current(session: AsyncSession | Session) -> Transaction | None:
    """The session's `Transaction`, if it has one yet."""
    found: Transaction | None = session.info.get(_TRANSACTION)
    return found


def attach(session: AsyncSession, transaction: Transaction) -> None:
    session.info[_TRANSACTION] = transaction


def detach(session: AsyncSession | Session) -> None:
    """The session's transaction ended: forget it."""
    session.info.pop(_TRANSACTION, None)


class Pool:
    """The psycopg connections of the saga's hot path: `size` of them, opened once and kept (no
    overflow, none recycled), each refused at checkout if the server has closed it
    (`refuse_if_closed_by_server`); where committed events go (`hand_over`), which ones the
    service may emit (`emits`). Its connections are in autocommit: each transaction on them is one
    pipeline, committed at its end (`outbox.unit.begin`).

    Its users never hold more transactions at once than it has connections (the consumer's
    concurrency is its size), so a checkout waits only while connections are being reopened: one
    that waits `wait_s` finds the database out of reach and fails (`psycopg_pool.PoolTimeout`),
    to be retried with backoff like a failed statement, as a new connection refused would.
    """

    def __init__(
        self,
        database_url: str,
        size: int,
        hand_over: HandOver | None,
        emits: Iterable[type[Event]] | None = None,
        name: str = "outbox",
        connect_args: Mapping[str, Any] | None = None,
        wait_s: float = 1.0,
    ) -> None:
        conninfo = make_url(database_url).set(drivername="postgresql")
        self.size = size
        self.hand_over = hand_over
        self.emits = frozenset(emits) if emits is not None else None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo.render_as_string(hide_password=False),
            # Autocommit: a transaction is a pipeline, committed at its Sync (`outbox.unit.begin`).
            kwargs={**(connect_args or {}), "autocommit": True},
            min_size=size,
            max_size=size,
            open=False,
            check=_check,
            max_lifetime=float("inf"),
            timeout=wait_s,
            name=name,
        )
        self._opened = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for one transaction (the pool opened, the first time), rolled back if the
        block raises, then returned: a broken one (its server gone, a transaction left open) is
        closed and replaced by the pool, never handed out again.

        A cancel is never lost on the way: psycopg_pool's checkout waits with `asyncio.wait_for`,
        which on Python 3.11 drops a cancel that comes in the same turn as the connection (cpython
        gh-86296, psycopg/psycopg#1345); the task would go on as if never cancelled, and
        `Messaging.stop`, which cancels the consumer's workers, would wait for it forever. So a
        checkout whose task was cancelled meanwhile gives the connection back and raises
        `CancelledError` itself. The connection goes back whatever interrupts its return.
        """
        if not self._opened:
            await self.open()
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        connection = await self._pool.getconn()
        if task is not None and task.cancelling() > cancels:
            await self._give_back(connection)
            raise asyncio.CancelledError
        try:
            yield connection
        except BaseException:
            if not connection.closed:
                with contextlib.suppress(psycopg.Error):
                    await connection.rollback()
            raise
        finally:
            await self._give_back(connection)

    async def _give_back(self, connection: psycopg.AsyncConnection[Any]) -> None:
        # Shielded: a cancel in the middle of the return (the pool's lock, its rollback) would
        # leave the connection neither in the pool nor closed, and the pool one short for good.
        await asyncio.shield(self._pool.putconn(connection))

    async def open(self) -> None:
        if not self._opened:
            self._opened = True
            await self._pool.open()

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._pool.close()


async def _check(connection: psycopg.AsyncConnection[Any]) -> None:
    refuse_if_closed_by_server(connection.pgconn)


def refuse_if_closed_by_server(pgconn: Any) -> None:
    """Checking a connection out of a pool: refuse one the server has closed meanwhile (a
    terminated session, a restarted server), at no round trip: raises `psycopg.OperationalError`.

    An idle session receives nothing but notices; when the server ends it, its socket turns
    readable and reading it fails. A pre-ping would catch the same with a `SELECT 1` on every
    checkout, a round trip in each of the saga's transactions. A connection that dies at any other
    moment fails its statement: consumers retry the delivery, HTTP answers 503 and clients retry.
    """
    for _ in range(3):
        readable, _, _ = select.select([pgconn.socket], [], [], 0)
        if not readable:
            return
        pgconn.consume_input()


class BulkInsert:
    """`INSERT … SELECT … FROM json_populate_recordset(…)` of a table's columns: any number of
    rows in one statement, sent as one JSON array of rows that PostgreSQL reads as the table's own
    row type, inserted in the order given. One SQL text for every batch size, so psycopg prepares
    it once per connection; and one parameter, encoded by msgspec: psycopg adapts a list per
    column (`unnest` of arrays) at 10 to 25 times the CPU (docs/performance.md)."""

    def __init__(self, table: Table, tail: str = "", exclude: Iterable[str] = ()) -> None:
        self.table = table
        columns = [column for column in table.columns if column.name not in set(exclude)]
        self.columns = tuple(column.name for column in columns)
        # bytea reads its text form from JSON: `\x` and hex digits.
        self._binary = {c.name for c in columns if isinstance(c.type, LargeBinary)}
        names = ", ".join(self.columns)
        self.sql = (
            f"INSERT INTO {table.name} ({names}) SELECT {names} "
            f"FROM json_populate_recordset(NULL::{table.name}, %(rows)s::json) {tail}"
        )

    @classmethod
    def upsert(cls, table: Table) -> BulkInsert:
        """New rows inserted, existing ones (by primary key) overwritten with the given values."""
        key = [column.name for column in table.primary_key]
        updates = ", ".join(
            f"{c.name} = excluded.{c.name}" for c in table.columns if c.name not in key
        )
        return cls(table, f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")

    def params(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        binary = self._binary
        return {
            "rows": _ROWS.encode(
                [
                    {
                        name: _bytea(row[name]) if name in binary else row[name]
                        for name in self.columns
                    }
                    for row in rows
                ]
            ).decode()
        }


def _bytea(value: bytes | None) -> str | None:
    return None if value is None else "\\x" + value.hex()
