"""A service's transactions, on the psycopg connection under its SQLAlchemy session.

The statements of the saga's hot path (inbox claims, the units' loads and writes, the outbox rows)
are built once with SQLAlchemy Core or from the tables' metadata, compiled once, and sent straight
to psycopg: SQLAlchemy's execution machinery costs more CPU per statement than the statement
itself (docs/performance.md). `outbox.unit.commit` sends the units' writes, the outbox rows and
the `COMMIT` together, in one round trip (psycopg's pipeline mode). The session still owns the connection and
the transaction: ORM reads and writes of the HTTP API share them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Protocol

import msgspec
import psycopg
from psycopg.rows import dict_row
from sqlalchemy import LargeBinary, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ClauseElement

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
_CONNECTION = "outbox.connection"
_UNITS = "outbox.units"
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


async def connection(session: AsyncSession) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection of the session's transaction (checked out, and begun, if need be)."""
    found: psycopg.AsyncConnection[Any] | None = session.info.get(_CONNECTION)
    if found is None:
        raw = await (await session.connection()).get_raw_connection()
        found = session.info[_CONNECTION] = raw.driver_connection
        assert found is not None
    return found


class Sent:
    """A statement sent, its rows not read yet. In a pipeline (`pipeline`), statements sent one
    after the other travel together: reading the rows of any of them waits for all."""

    def __init__(self, cursor: psycopg.AsyncCursor[dict[str, Any]]) -> None:
        self._cursor = cursor

    async def rows(self) -> list[dict[str, Any]]:
        """Its rows, as dicts by column name."""
        try:
            return await self._cursor.fetchall()
        finally:
            await self._cursor.close()


async def send(session: AsyncSession, sql: str, params: Mapping[str, Any] | None = None) -> Sent:
    pg = await connection(session)
    cursor = pg.cursor(row_factory=dict_row)
    await cursor.execute(sql, params)
    return Sent(cursor)


async def rows(
    session: AsyncSession, sql: str, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The rows a statement returns, as dicts by column name."""
    return await (await send(session, sql, params)).rows()


@contextlib.asynccontextmanager
async def pipeline(session: AsyncSession) -> AsyncIterator[None]:
    """Statements sent in the block wait for their answers together: one round trip for all the
    statements sent before the first rows are read, another for the rest."""
    pg = await connection(session)
    async with pg.pipeline():
        yield


async def execute(session: AsyncSession, sql: str, params: Mapping[str, Any]) -> None:
    """Send a statement whose result nobody reads: inside `commit`, it waits for the commit."""
    pg = await connection(session)
    await pg.execute(sql, params)


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


def register(session: AsyncSession, unit: Saves) -> None:
    """`unit` is written back when the transaction commits (`outbox.unit.commit`)."""
    session.info.setdefault(_UNITS, []).append(unit)


def units(session: AsyncSession | Any) -> Iterable[Saves]:
    return session.info.get(_UNITS, ())  # type: ignore[no-any-return]


def forget(session: AsyncSession | Any) -> None:
    """The transaction ended: its connection goes back to the pool, its units are done."""
    session.info.pop(_CONNECTION, None)
    session.info.pop(_UNITS, None)
