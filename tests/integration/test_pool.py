"""The consumer's pool (`outbox.transaction.Pool`) against a real PostgreSQL server: a cancel is
never lost on the way in or out, and a connection the server dropped, or left in a failed
transaction, is never handed out as it is. And its transactions (`outbox.unit.begin`: one
pipeline, committed at its Sync, with no BEGIN and no COMMIT): all or nothing, whichever way
their block ends."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest

from harness.wait import eventually
from outbox.transaction import Pool, Transaction
from outbox.unit import begin
from tools.postgres import libpq

#: Linux's tcp_states.h.
_CLOSE_WAIT = 8


@pytest.fixture
async def pool(database_factory: Callable[[str], str]) -> AsyncIterator[Pool]:
    """A pool of one connection: whoever checks out while it is taken waits for it."""
    opened = Pool(database_factory("pool"), 1, hand_over=None, wait_s=2.0)
    await opened.open()
    yield opened
    await opened.close()


async def _cancelled_as_its_connection_arrives(pool: Pool, turns: int) -> bool:
    """One checkout waits while the only connection is held; the holder gives it back and, `turns`
    turns of the loop later, the waiting checkout is cancelled. True if that cancel was lost: the
    task was still running when cancelled, and ended as if it never had been."""
    release, held = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with pool.connection():
            held.set()
            await release.wait()

    async def checkout() -> None:
        async with pool.connection():
            pass

    holder = asyncio.create_task(hold())
    await held.wait()
    waiter = asyncio.create_task(checkout())
    await eventually(lambda: _waiting(pool) == 1, interval=0)
    release.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    requested = waiter.cancel()
    await asyncio.gather(holder, waiter, return_exceptions=True)
    return requested and not waiter.cancelled()


async def test_a_checkout_cancelled_as_its_connection_arrives_is_cancelled(pool: Pool) -> None:
    # psycopg_pool waits with asyncio.wait_for, which on Python 3.11 returns the connection and
    # drops a cancel that comes in the same turn: a consumer worker would go on, and
    # `Messaging.stop` wait for it forever. Every moment of the hand-over is tried.
    lost = [turns for turns in range(40) if await _cancelled_as_its_connection_arrives(pool, turns)]
    assert lost == []
    await _still_serves(pool)


async def test_a_task_cancelled_while_its_connection_goes_back_leaves_it_in_the_pool(
    pool: Pool,
) -> None:
    inner = pool._pool
    done, go = asyncio.Event(), asyncio.Event()

    async def use() -> None:
        async with pool.connection() as connection:
            await connection.execute("SELECT 1")
            await connection.commit()
            done.set()
            await go.wait()

    user = asyncio.create_task(use())
    await done.wait()
    # The pool's own lock held, so that the return waits inside the pool when the cancel comes.
    async with inner._lock:
        go.set()
        await eventually(lambda: inner._lock._waiters, interval=0)  # type: ignore[attr-defined]
        assert user.cancel()
    with pytest.raises(asyncio.CancelledError):
        await user
    await _still_serves(pool)


async def test_a_connection_that_dies_in_a_transaction_is_replaced(pool: Pool, servers) -> None:
    with pytest.raises(psycopg.OperationalError):  # noqa: PT012 (the death is in the block)
        async with pool.connection() as connection:
            pid = await _backend(connection)
            await _terminate(servers, pid)
            await connection.execute("SELECT 1")
    async with asyncio.timeout(5), pool.connection() as connection:
        assert await _backend(connection) != pid


async def test_a_connection_closed_by_the_server_while_idle_is_refused_at_checkout(
    pool: Pool, servers
) -> None:
    async with pool.connection() as connection:
        pid = await _backend(connection)
        await connection.commit()
    await _terminate(servers, pid)
    await eventually(lambda: _closed_by_server(connection))
    # The socket test refuses it at no round trip; the first checkout gets a new one.
    async with asyncio.timeout(5), pool.connection() as replaced:
        assert await _backend(replaced) != pid


async def test_a_failed_transaction_is_rolled_back_and_its_connection_kept(pool: Pool) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero):  # noqa: PT012
        async with pool.connection() as connection:
            pid = await _backend(connection)
            # The pool's connections are in autocommit: a transaction of its own, left failed.
            await connection.execute("BEGIN")
            await connection.execute("SELECT 1 / 0")
    async with pool.connection() as again:
        assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert await _backend(again) == pid


@pytest.fixture
async def notes(pool: Pool) -> AsyncIterator[psycopg.AsyncConnection]:
    """A table `notes` in the pool's database, and a session of its own to look at it from
    outside the pool's transactions."""
    async with pool.connection() as connection:
        await connection.execute("CREATE TABLE notes (n int PRIMARY KEY)")
    async with await psycopg.AsyncConnection.connect(pool._pool.conninfo, autocommit=True) as other:
        yield other


async def _noted(other: psycopg.AsyncConnection) -> list[int]:
    cursor = await other.execute("SELECT n FROM notes ORDER BY n")
    return [n for (n,) in await cursor.fetchall()]


async def _note(tx: Transaction, n: int) -> None:
    """Insert a note and read the table back within the transaction: a round trip, as a
    consumer's claims and loads make before its handlers run."""
    await tx.execute("INSERT INTO notes VALUES (%(n)s)", {"n": n})
    assert n in [row["n"] for row in await tx.rows("SELECT n FROM notes")]


async def test_a_transaction_is_all_seen_at_once_when_its_block_ends(
    pool: Pool, notes: psycopg.AsyncConnection
) -> None:
    # The connection is in autocommit: were each statement its own transaction, the first note
    # would show before the block ends.
    async with begin(pool) as tx:
        await _note(tx, 1)
        await _note(tx, 2)
        assert await _noted(notes) == []
    assert await _noted(notes) == [1, 2]


async def test_a_transaction_whose_block_raises_commits_nothing_and_keeps_its_connection(
    pool: Pool, notes: psycopg.AsyncConnection
) -> None:
    # The pipeline's Sync would commit what was sent; the ROLLBACK ahead of it undoes it, so a
    # handler's failure costs no new connection.
    with pytest.raises(RuntimeError):  # noqa: PT012
        async with begin(pool) as tx:
            pid = await _backend(tx.connection)
            await _note(tx, 1)
            raise RuntimeError("the handler failed")
    assert await _noted(notes) == []
    async with begin(pool) as tx:
        assert await _backend(tx.connection) == pid
        await _note(tx, 2)
    assert await _noted(notes) == [2]


async def test_a_transaction_whose_statement_fails_commits_nothing(
    pool: Pool, notes: psycopg.AsyncConnection
) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation):  # noqa: PT012
        async with begin(pool) as tx:
            await _note(tx, 1)
            await tx.rows("INSERT INTO notes VALUES (1) RETURNING n")
    assert await _noted(notes) == []
    await _still_serves(pool)


async def test_a_transaction_cancelled_midway_commits_nothing(
    pool: Pool, notes: psycopg.AsyncConnection
) -> None:
    midway = asyncio.Event()

    async def stopped_midway() -> None:
        async with begin(pool) as tx:
            await _note(tx, 1)
            midway.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stopped_midway())
    await midway.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _noted(notes) == []
    await _still_serves(pool)
    async with begin(pool) as tx:
        await _note(tx, 2)
    assert await _noted(notes) == [2]


def _waiting(pool: Pool) -> int:
    return pool._pool.get_stats().get("requests_waiting", 0)


async def _still_serves(pool: Pool) -> None:
    """The pool kept its one connection: a checkout gets it at once."""
    async with asyncio.timeout(1), pool.connection() as connection:
        await connection.execute("SELECT 1")
        await connection.commit()


async def _backend(connection: psycopg.AsyncConnection) -> int:
    cursor = await connection.execute("SELECT pg_backend_pid()")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def _terminate(servers, pid: int) -> None:
    """End a backend, as an administrator or a restart does."""
    admin = libpq(servers.postgres_admin_url)
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as connection:
        await connection.execute("SELECT pg_terminate_backend(%s)", [pid])


def _closed_by_server(connection: psycopg.AsyncConnection) -> bool:
    """The server's end of the connection is closed (TCP's CLOSE_WAIT), not only its last message
    sent; read from the socket's state, without reading from it."""
    sock = socket.socket(fileno=os.dup(connection.pgconn.socket))
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _CLOSE_WAIT
    finally:
        sock.close()
