"""The relay: publishes committed outbox rows with publisher confirms, then marks them published."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import aio_pika
from aio_pika.abc import AbstractExchange, FieldValue
from aio_pika.exceptions import PublishError
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Interval,
    Row,
    Table,
    any_,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts import SCHEMA_VERSION
from outbox import metrics, tracing
from outbox.faults import crash_point
from outbox.tables import OutboxMessage
from outbox.writer import Staged

log = logging.getLogger(__name__)

_OUTBOX = cast(Table, OutboxMessage.__table__)
_IDS = bindparam("ids", type_=ARRAY(BigInteger))
#: Marks rows that were handed over, published and confirmed (a sweep may have got there first).
_MARK_HANDED = (
    update(_OUTBOX)
    .where(
        _OUTBOX.c.event_id == any_(bindparam("event_ids", type_=ARRAY(UUID(as_uuid=True)))),
        _OUTBOX.c.published_at.is_(None),
    )
    .values(published_at=func.clock_timestamp())
)
#: Gives back what a sweep claimed but the broker did not confirm.
_UNMARK = update(_OUTBOX).where(_OUTBOX.c.id == any_(_IDS)).values(published_at=None)
#: Most handed-over rows waiting in memory; past that, the sweep publishes them from the table.
_MAX_HANDED = 10_000


#: An outbox row as the relay publishes it: handed over, or a plain row of the table.
OutboxRow = Staged | Row[Any] | OutboxMessage
_Row = TypeVar("_Row", Staged, Row[Any], OutboxMessage)


def to_message(row: OutboxRow, service: str) -> aio_pika.Message:
    """The AMQP message for an outbox row: the properties and headers of docs/spec.md §3."""
    headers: dict[str, FieldValue] = {
        "traceparent": row.traceparent,
        "schema_version": SCHEMA_VERSION,
    }
    if row.causation_id is not None:
        headers["causation_id"] = str(row.causation_id)
    return aio_pika.Message(
        row.payload,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(row.event_id),
        type=row.event_type,
        correlation_id=str(row.order_id),
        app_id=service,
        timestamp=row.created_at,
        headers=headers,
    )


class Relay:
    """Moves outbox rows to the broker with publisher confirms, by two paths.

    - **Hand-over**, the fast path: a transaction that staged events hands its rows to the relay
      right after it commits (`hand_over`). The relay publishes them from memory and awaits their
      confirms together; a moment later one `UPDATE` marks the confirmed rows of every commit
      since the last mark. No query on the way out: this is most of a saga's traffic.
    - **Sweep**, the safety net: every `sweep_interval_s` the relay claims unpublished rows from
      the table (`FOR UPDATE SKIP LOCKED`, so replicas share them) and publishes those. It finds
      what the fast path left behind: rows of a process that died between commit and confirm,
      rows the broker returned or nacked, rows staged while the broker was away. One statement
      claims a batch and marks it; the transaction commits only after every confirm came back,
      and gives back the rows that were not confirmed. A sweep leaves alone rows younger than
      `grace_s`, which a hand-over (of this replica or another) is publishing, except while it
      catches up: at start, after a failure, and while batches come back full. What a sweep
      published leaves this replica's hand-overs, so that a row committed just before a
      catch-up's claim is not published twice.

    Tracing, each publish is a span, a child of the context its row recorded (the message carries
    that context, not the relay's), and each sweep that publishes something a span linked to its
    rows' contexts (`outbox.tracing`).

    Either way, a crash after publishing and before the mark commits leaves rows unpublished:
    they are published again with the same message ids, and consumers' inboxes make that
    harmless. A returned (unroutable) or nacked message is a failure and its row stays, except a
    returned broadcast (an event no service of ours needs), which counts as published.
    """

    def __init__(
        self,
        service: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = 256,
        sweep_interval_s: float = 1.0,
        grace_s: float = 5.0,
        mark_interval_s: float = 0.5,
        broadcasts: frozenset[str] = frozenset(),
    ) -> None:
        self.service = service
        self._broadcasts = broadcasts
        self._sessionmaker = sessionmaker
        engine = sessionmaker.kw["bind"]
        # The hand-over mark is a transaction of one statement: no BEGIN and COMMIT round trips.
        self._autocommit: AsyncEngine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._batch_size = batch_size
        self._sweep_interval_s = sweep_interval_s
        self._grace_s = grace_s
        # Claim and mark in one statement, on plain rows: built once, like the marks.
        batch = (
            select(_OUTBOX.c.id)
            .where(
                _OUTBOX.c.published_at.is_(None),
                _OUTBOX.c.created_at
                < func.clock_timestamp() - bindparam("grace", type_=Interval()),
            )
            .order_by(_OUTBOX.c.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
            .cte("batch")
        )
        self._claim = (
            update(_OUTBOX)
            .where(_OUTBOX.c.id == batch.c.id)
            .values(published_at=func.clock_timestamp())
            .returning(*(c for c in _OUTBOX.c if c.name != "published_at"))
        )
        self._handed: deque[Staged] = deque()
        #: Event ids handed over, published and confirmed, waiting to be marked in the table.
        self._confirmed: list[uuid.UUID] = []
        # A confirmed row waits for its mark in the table, where a sweep would take it (and
        # publish it again) once it is older than the grace: the marks come well before that.
        self._mark_interval_s = min(mark_interval_s, grace_s / 4)
        self._to_mark = asyncio.Event()
        #: False until the first sweep found the table caught up, and again after a failure.
        self.caught_up = False
        self._wakeup = asyncio.Event()
        self._exchange: AbstractExchange | None = None

    def hand_over(self, staged: Iterable[Staged]) -> None:
        """Called right after a commit with the events it staged: publish them now."""
        if len(self._handed) < _MAX_HANDED:
            self._handed.extend(staged)
        self._wakeup.set()

    async def run(self, exchange: AbstractExchange) -> None:
        """Relay until cancelled; `exchange` is on a channel opened with confirms and on_return_raises."""
        marking = asyncio.create_task(self._mark_forever(), name=f"{self.service}-relay-marks")
        stopped = False
        try:
            await self._relay(exchange)
        except asyncio.CancelledError:
            stopped = True
            raise
        finally:
            marking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await marking
            if stopped:
                await self._mark_before_stopping()

    async def _relay(self, exchange: AbstractExchange) -> None:
        self._exchange = exchange
        failures = 0
        self.caught_up = False
        next_sweep = 0.0
        while True:
            self._wakeup.clear()
            try:
                if self._handed:
                    await self.publish_handed()
                if not self.caught_up:
                    await self.mark_confirmed()  # so that catching up skips what is confirmed
                if not self.caught_up or time.monotonic() >= next_sweep:
                    swept = await self.sweep(grace_s=self._grace_s if self.caught_up else 0.0)
                    self.caught_up = swept < self._batch_size
                    next_sweep = time.monotonic() + self._sweep_interval_s
            except asyncio.CancelledError:
                raise
            except Exception:
                # Whatever was handed over is in the table: the catch-up sweep publishes it.
                self._handed.clear()
                self.caught_up = False
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning("relay: publishing failed, retrying in %.1fs", delay, exc_info=True)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if not self._handed and self.caught_up:
                # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` drops a cancel that
                # comes in the same turn as a hand-over's wakeup (cpython gh-86296), and the
                # relay would go on relaying while `Messaging.stop` waits for it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_sweep - time.monotonic())):
                        await self._wakeup.wait()

    async def publish_handed(self) -> int:
        """Publish up to a batch of handed-over rows; those the broker confirmed are marked soon
        after, together with those of other commits (`_mark_forever`)."""
        rows = [self._handed.popleft() for _ in range(min(len(self._handed), self._batch_size))]
        confirmed = await self._publish(rows)
        crash_point("relay.after_publish")
        if confirmed and len(self._confirmed) < _MAX_HANDED:
            self._confirmed.extend(row.event_id for row in confirmed)
            self._to_mark.set()
        return self._published(rows, confirmed)

    async def mark_confirmed(self) -> int:
        """Mark published, in one autocommit `UPDATE`, what was handed over and confirmed."""
        ids, self._confirmed = self._confirmed, []
        if ids:
            try:
                async with self._autocommit.connect() as connection:
                    await connection.execute(_MARK_HANDED, {"event_ids": ids})
            except BaseException:
                self._confirmed.extend(ids)
                raise
        return len(ids)

    async def _mark_forever(self) -> None:
        """Marks come after their publish, off the path of the next one, and wait a moment to
        take in the confirms of several commits: one statement for all of them. Until a row is
        marked, a crash means it is published again (a duplicate the inboxes skip); the sweep
        leaves it alone meanwhile, being younger than the grace."""
        failures = 0
        while True:
            await self._to_mark.wait()
            await asyncio.sleep(self._mark_interval_s)
            self._to_mark.clear()
            try:
                await self.mark_confirmed()
            except Exception:
                failures += 1
                self._to_mark.set()
                delay = min(0.1 * 2**failures, 5.0)
                log.warning("relay: marking published rows failed, retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                continue
            failures = 0

    async def _mark_before_stopping(self, timeout_s: float = 1.0) -> None:
        """A stop marks what was confirmed since the last mark, so that the next start does not
        publish it again. If the database does not answer within `timeout_s`, the next start
        publishes those rows again instead: duplicates, which the inboxes skip."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.mark_confirmed()
        except Exception as exc:
            log.info(
                "relay: %d confirmed rows left unmarked at stop (%r)", len(self._confirmed), exc
            )

    async def sweep(self, grace_s: float = 0.0) -> int:
        """Publish one batch of unpublished rows older than `grace_s` seconds from the table;
        returns how many were confirmed and marked."""
        with tracing.sweeping(self.service) as claimed:
            async with self._sessionmaker() as session, session.begin():
                result = await session.execute(self._claim, {"grace": timedelta(seconds=grace_s)})
                rows = sorted(result.all(), key=lambda row: row.id)
                if not rows:
                    return 0
                claimed.extend(rows)
                confirmed = await self._publish(rows)
                crash_point("relay.after_publish")
                if len(confirmed) < len(rows):
                    kept = {row.id for row in confirmed}
                    unmark = [r.id for r in rows if r.id not in kept]
                    await session.execute(_UNMARK, {"ids": unmark})
        if self._handed:  # a catch-up claims rows whose commits are handing them over meanwhile
            swept = {row.event_id for row in confirmed}
            self._handed = deque(row for row in self._handed if row.event_id not in swept)
        return self._published(rows, confirmed)

    def _published(self, rows: Sequence[OutboxRow], confirmed: Sequence[OutboxRow]) -> int:
        metrics.PUBLISHED.inc(len(confirmed))
        now = datetime.now(UTC)
        for row in confirmed:
            metrics.OUTBOX_DWELL.observe(max(0.0, (now - row.created_at).total_seconds()))
        if len(confirmed) < len(rows):
            raise RuntimeError(
                f"{len(rows) - len(confirmed)} of {len(rows)} messages not confirmed"
            )
        return len(confirmed)

    async def _publish(self, rows: Sequence[_Row]) -> list[_Row]:
        assert self._exchange is not None, "run() sets the exchange"
        exchange = self._exchange
        with tracing.publishing(rows, self.service, exchange.name) as refused:
            results = await asyncio.gather(
                *(exchange.publish(to_message(row, self.service), row.event_type) for row in rows),
                return_exceptions=True,
            )
            for i, result in enumerate(results):
                if isinstance(result, BaseException) and not self._unrouted_broadcast(
                    rows[i], result
                ):
                    refused(i, result)
        confirmed = []
        for row, result in zip(rows, results, strict=True):
            if self._unrouted_broadcast(row, result):
                metrics.UNROUTED.labels(row.event_type).inc()  # nobody subscribed: that is fine
                confirmed.append(row)
            elif isinstance(result, BaseException):
                log.warning(
                    "relay: %s %s not published: %r",
                    row.event_type,
                    row.event_id,
                    result,
                    extra={"order_id": str(row.order_id)},
                )
            else:
                confirmed.append(row)
        return confirmed

    def _unrouted_broadcast(self, row: OutboxRow, result: object) -> bool:
        return isinstance(result, PublishError) and row.event_type in self._broadcasts


# table -> the timestamp after which its rows may go (outbox rows only once published)
_RETAINED = {"outbox": "published_at", "inbox": "handled_at", "idempotency_keys": "created_at"}


async def purge_expired(
    sessionmaker: async_sessionmaker[AsyncSession], retention_s: float, batch: int = 5000
) -> int:
    """Delete published outbox rows, inbox rows and idempotency keys older than the retention window.

    The window must outlast any redelivery: an inbox row deleted too soon would let a very late
    duplicate run its handler again. Small batches keep locks short so the relay is never blocked.
    """
    total = 0
    for table, column in _RETAINED.items():
        stmt = text(
            f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table}"
            f" WHERE {column} < now() - make_interval(secs => :retention) LIMIT :batch)"
        )
        while True:
            async with sessionmaker() as session, session.begin():
                result = await session.execute(stmt, {"retention": retention_s, "batch": batch})
            deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
            total += deleted
            if deleted < batch:
                break
    return total
