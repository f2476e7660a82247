"""Wires one service's messaging: engine, sessions, broker connection, consumer, relay, purge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.connection import make_url
from sqlalchemy import event, exc, func, select, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from contracts import event_name
from outbox import metrics
from outbox.consumer import Consumer
from outbox.manifest import Manifest, dead_letter_queue
from outbox.relay import Relay, purge_expired
from outbox.settings import MessagingSettings
from outbox.tables import OutboxMessage
from outbox.topology import declare_exchange
from outbox.transaction import Pool, refuse_if_closed_by_server
from outbox.writer import OutboxSession, Staged, session_info

log = logging.getLogger(__name__)

#: How long a stop waits for a broker connection being made, to close it rather than leave it.
_CONNECT_GRACE_S = 1.0


class Messaging:
    """Everything a service needs to take part in the saga, started and stopped by its lifespan.

    The consumer's transactions run on `pool`'s connections (no SQLAlchemy session on that path);
    HTTP routes, the relay and the sweeps get sessions from `sessionmaker`. Events staged with
    `outbox.add` or a unit's `emit` leave through the relay once their transaction commits. The
    broker connection is robust: it reconnects by itself, and the consumer's queues and the
    relay's channel come back with it.
    """

    def __init__(self, manifest: Manifest, settings: MessagingSettings) -> None:
        self.manifest = manifest
        self.settings = settings
        # Two fixed pools that hold `db_pool_size` connections between them, sized for what runs
        # at once: one per consumer transaction (bounded by `consumer_concurrency`), the rest for
        # HTTP requests, the relay and the sweeps, at least two of them where the size allows (with
        # one, every request waited for the relay's sweep). No overflow: none opened under load.
        consumers = max(1, min(settings.consumer_concurrency, settings.db_pool_size - 2))
        self.engine: AsyncEngine = create_async_engine(
            settings.database_url,
            pool_size=max(1, settings.db_pool_size - consumers),
            max_overflow=0,
        )
        event.listen(self.engine.sync_engine, "checkout", _drop_if_closed_by_server)
        self.sessionmaker = async_sessionmaker(
            self.engine,
            expire_on_commit=False,
            sync_session_class=OutboxSession,
            info=session_info(self._hand_over, manifest.emits),
        )
        self.pool = Pool(
            settings.database_url,
            consumers,
            self._hand_over,
            manifest.emits,
            name=manifest.service,
        )
        self.relay = Relay(
            manifest.service,
            self.sessionmaker,
            batch_size=settings.relay_batch_size,
            sweep_interval_s=settings.relay_sweep_interval_s,
            grace_s=settings.relay_grace_s,
            mark_interval_s=settings.relay_mark_interval_s,
            broadcasts=frozenset(event_name(event) for event in manifest.broadcasts),
        )
        self.consumer = Consumer(
            manifest,
            self.pool,
            max_attempts=settings.handler_max_attempts,
            workers=settings.consumer_workers,
            max_batch=settings.consumer_max_batch,
            concurrency=self.pool.size,
        )
        metrics.expect(
            [event_name(event) for event in manifest.consumes],
            [dead_letter_queue(manifest.queue_for(event)) for event in manifest.consumes],
        )
        self.connection: AbstractRobustConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _hand_over(self, staged: Iterable[Staged]) -> None:
        """Where both pools' committed events go: the relay (made after the pools)."""
        self.relay.hand_over(staged)

    async def start(self) -> None:
        """Connect (retrying until the broker answers) and start consumer, relay and purge."""
        await self.pool.open()
        self._tasks.append(
            asyncio.create_task(self._run(), name=f"{self.manifest.service}-messaging")
        )
        self._tasks.append(asyncio.create_task(self._purge_forever(), name="outbox-purge"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # A task may have died of anything (a SimulatedCrash included): close up all the same.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.consumer.stop()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        await self.dispose()

    async def dispose(self) -> None:
        """Close the database connections, both pools'."""
        await self.pool.close()
        await self.engine.dispose()

    async def _run(self) -> None:
        """Set up and serve; a failure before the relay runs (broker down, access refused) is
        retried from scratch, since a robust connection only restores what was set up."""
        delay = 0.2
        while True:
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "%s: broker setup failed (%r), retrying in %.1fs",
                    self.manifest.service,
                    exc,
                    delay,
                )
                if self.connection is not None:
                    with contextlib.suppress(Exception):
                        await self.connection.close()
                    self.connection = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _serve(self) -> None:
        self.connection = await self._connect()
        consume_channel = await self.connection.channel()
        await consume_channel.set_qos(prefetch_count=self.settings.prefetch)
        exchange = await declare_exchange(consume_channel, self.settings.exchange)
        await self.consumer.start(consume_channel, exchange)
        publish_channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        publish_exchange = await publish_channel.get_exchange(self.settings.exchange, ensure=False)
        log.info(
            "%s: consuming %d queues, relay running",
            self.manifest.service,
            len(self.manifest.consumes),
        )
        await self.relay.run(publish_exchange)

    async def _connect(self) -> AbstractRobustConnection:
        """The broker connection. A stop that comes while it is being made lets the attempt end
        (within `_CONNECT_GRACE_S`), then closes the connection: cancelled halfway, its
        reconnection task (aio-pika's own) would go on connecting, or retrying a broker that does
        not answer, and ignore being cancelled again. Under uvicorn the process ends anyway (it
        re-raises the SIGTERM once shut down); a loop that runs the service in-process, as a
        test client's does, would be left with the connection, or never finish."""
        connection = aio_pika.RobustConnection(
            make_url(self.settings.amqp_url),
            client_properties={"connection_name": self.manifest.service},
        )
        connecting = asyncio.ensure_future(connection.connect())
        try:
            await asyncio.shield(connecting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # the attempt failed, or outlasted the grace
                async with asyncio.timeout(_CONNECT_GRACE_S):
                    await connecting
            connecting.cancel()
            with contextlib.suppress(Exception):
                await connection.close()  # which ends its reconnection task too
            raise
        return connection

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.purge_interval_s)
            try:
                await purge_expired(self.sessionmaker, self.settings.retention_s)
            except Exception:
                log.warning("purge of expired messaging rows failed", exc_info=True)

    async def check_database(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    def broker_connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    async def broker_blocks_publishing(self) -> bool:
        """The broker has blocked this connection (`connection.blocked`: a memory or disk alarm
        somewhere in the cluster): publishes, and so the relay, wait until the alarm clears."""
        transport = self.connection.transport if self.connection is not None else None
        if transport is None or not self.broker_connected():
            return False
        try:  # aiormq's `ready()` returns at once unless the connection is blocked
            await asyncio.wait_for(transport.ready(), 0.05)
        except TimeoutError:
            return True
        return False

    async def outbox_backlog(self) -> tuple[int, float]:
        """How many rows wait for the relay, and the age in seconds of the oldest."""
        async with self.sessionmaker() as session:
            count, oldest = (
                await session.execute(
                    select(
                        func.count(),
                        func.coalesce(
                            func.extract("epoch", func.now() - func.min(OutboxMessage.created_at)),
                            0,
                        ),
                    ).where(OutboxMessage.published_at.is_(None))
                )
            ).one()
        metrics.OUTBOX_BACKLOG.set(count)
        metrics.OUTBOX_OLDEST_AGE.set(float(oldest))
        return int(count), float(oldest)

    async def dead_letter_depths(self) -> dict[str, int]:
        """How many messages wait in each of this service's dead-letter queues, as the broker
        counts them now (passive declares on a short-lived channel of their own: a missing queue
        closes that channel, never the consumer's)."""
        if self.connection is None or self.connection.is_closed:
            return {}
        depths: dict[str, int] = {}
        async with self.connection.channel() as channel:
            for event in self.manifest.consumes:
                name = dead_letter_queue(self.manifest.queue_for(event))
                queue = await channel.declare_queue(name, passive=True)
                depths[name] = queue.declaration_result.message_count or 0
                metrics.DEAD_LETTER_DEPTH.labels(name).set(depths[name])
        return depths


def _drop_if_closed_by_server(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Checking a connection out of the engine's pool: refuse one the server has closed meanwhile,
    at no round trip (`outbox.transaction.refuse_if_closed_by_server`; the consumer's pool does the
    same)."""
    try:
        refuse_if_closed_by_server(dbapi_connection.driver_connection.pgconn)
    except Exception as error:
        raise exc.DisconnectionError(str(error)) from error
