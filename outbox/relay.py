"""The relay: publishes committed outbox rows with publisher confirms, then marks them published."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractExchange, FieldValue
from aio_pika.exceptions import PublishError
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Row,
    Table,
    any_,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts import SCHEMA_VERSION
from outbox import metrics
from outbox.faults import crash_point
from outbox.tables import OutboxMessage

log = logging.getLogger(__name__)

_OUTBOX = cast(Table, OutboxMessage.__table__)
_MARK = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
    .values(published_at=func.clock_timestamp())
)


#: An outbox row as the relay reads it: a plain row of the table (or an `OutboxMessage`).
OutboxRow = Row[Any] | OutboxMessage


def to_message(row: OutboxRow, service: str) -> aio_pika.Message:
    """The AMQP message for an outbox row: the properties and headers of SPEC §3."""
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
    """Moves outbox rows to the broker: claim, publish all, await every confirm, mark, commit.

    Several replicas may relay one database: rows are claimed with `FOR UPDATE SKIP LOCKED`.
    A crash after publishing but before the mark commits leaves the rows unpublished, so they are
    published again with the same message ids; consumers' inboxes make that harmless. A returned
    (unroutable) or nacked message is a failure: its row stays and is retried — except a returned
    broadcast (an event no service of ours needs), which counts as published.
    """

    def __init__(
        self,
        service: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        batch_size: int = 256,
        sweep_interval_s: float = 1.0,
        broadcasts: frozenset[str] = frozenset(),
    ) -> None:
        self.service = service
        self._broadcasts = broadcasts
        self._sessionmaker = sessionmaker
        self._batch_size = batch_size
        self._sweep_interval_s = sweep_interval_s
        # Plain rows, not ORM objects: the relay only reads them. Built once, like `_MARK`.
        self._claim = (
            select(_OUTBOX)
            .where(_OUTBOX.c.published_at.is_(None))
            .order_by(_OUTBOX.c.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        self._wakeup = asyncio.Event()
        self._exchange: AbstractExchange | None = None

    def wake(self) -> None:
        """Called right after a commit that staged rows, so they leave without waiting for a sweep."""
        self._wakeup.set()

    async def run(self, exchange: AbstractExchange) -> None:
        """Relay until cancelled; `exchange` is on a channel opened with confirms and on_return_raises."""
        self._exchange = exchange
        failures = 0
        while True:
            self._wakeup.clear()
            try:
                published = await self.publish_batch()
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning("relay: publishing failed, retrying in %.1fs", delay, exc_info=True)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if published < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._sweep_interval_s)

    async def publish_batch(self) -> int:
        """Publish one batch of unpublished rows; returns how many were confirmed and marked."""
        assert self._exchange is not None, "run() sets the exchange"
        async with self._sessionmaker() as session, session.begin():
            rows = (await session.execute(self._claim)).all()
            if not rows:
                return 0
            confirmed = await self._publish(rows)
            crash_point("relay.after_publish")
            if confirmed:
                await session.execute(_MARK, {"ids": [row.id for row in confirmed]})
        metrics.PUBLISHED.inc(len(confirmed))
        for row in confirmed:
            metrics.OUTBOX_DWELL.observe(_age_seconds(row))
        if len(confirmed) < len(rows):
            raise RuntimeError(
                f"{len(rows) - len(confirmed)} of {len(rows)} messages not confirmed"
            )
        return len(confirmed)

    async def _publish(self, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
        exchange = self._exchange
        assert exchange is not None
        results = await asyncio.gather(
            *(exchange.publish(to_message(row, self.service), row.event_type) for row in rows),
            return_exceptions=True,
        )
        confirmed = []
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, PublishError) and row.event_type in self._broadcasts:
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


def _age_seconds(row: OutboxRow) -> float:
    return max(0.0, (datetime.now(UTC) - row.created_at).total_seconds())
