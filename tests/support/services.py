"""A service's messaging (`outbox.Messaging`: consumer, relay, purge) run in the test's event loop."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from harness.wait import eventually
from outbox import Manifest, Messaging, MessagingSettings
from outbox.faults import SimulatedCrash
from outbox.tables import InboxMessage, OutboxMessage
from tests.support.broker import Broker

#: Quicker than production so that tests which wait for a sweep do not wait long.
TEST_SETTINGS: dict[str, Any] = {"relay_sweep_interval_s": 0.2, "db_pool_size": 5}


async def start_messaging(
    manifest: Manifest,
    settings_class: type[MessagingSettings],
    *,
    database_url: str,
    broker: Broker,
    settled: bool = True,
    **overrides: Any,
) -> Messaging:
    """Start `manifest`'s consumer and relay against a (migrated) database in the broker's vhost.

    Returns once every queue of the manifest has its consumer and the relay has caught up (or
    an armed crash point killed it): messages published from then on are handled, and rows
    staged from then on meet the relay's steady state (the hand-over, and sweeps only past the
    grace), not its catch-up at start, which takes rows of any age. With `settled=False`, as
    soon as it started: its broker connection is still being made. `overrides` are settings
    (`handler_max_attempts=3`, `amqp_url=…`).
    """
    settings = settings_class(
        database_url=database_url,
        **{"amqp_url": broker.vhost.amqp_url, **TEST_SETTINGS, **overrides},
    )
    messaging = Messaging(manifest, settings)
    await messaging.start()
    if not settled:
        return messaging
    try:
        await broker.wait_consumed(manifest.queue_for(event) for event in manifest.consumes)
        await eventually(lambda: messaging.relay.caught_up or crashed(messaging))
    except BaseException:
        await stop_messaging(messaging)
        raise
    return messaging


async def stop_messaging(messaging: Messaging) -> None:
    """Stop a service's messaging, also after a `SimulatedCrash` killed it (as a process restart)."""
    try:
        await messaging.stop()
    except SimulatedCrash:
        # stop() re-raises the crash of a task before closing anything: finish the job.
        if messaging.connection is not None:
            with contextlib.suppress(Exception):
                await messaging.connection.close()
        await messaging.dispose()


def crashed(messaging: Messaging) -> bool:
    """True once one of the messaging's tasks died of a `SimulatedCrash` (an armed crash point).

    Reads `Messaging._tasks` and its consumer's: outbox offers no public way to see that a task
    died."""
    return any(
        task.done() and not task.cancelled() and isinstance(task.exception(), SimulatedCrash)
        for task in [*messaging._tasks, *messaging.consumer._tasks]
    )


async def outbox_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> list[OutboxMessage]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


async def inbox_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> list[InboxMessage]:
    async with sessionmaker() as session:
        return list(await session.scalars(select(InboxMessage).order_by(InboxMessage.handled_at)))


def published() -> float:
    """How many outbox rows this process's relays have seen confirmed so far (counted at the
    confirm, before any mark): the service's /metrics counter."""
    return REGISTRY.get_sample_value("saga_outbox_published_total") or 0.0


def handled(event: str, outcome: str) -> float:
    """How many `event` messages this process's consumers have counted with `outcome` so far
    (handled, duplicate, retried, dead_lettered, poison): the service's /metrics counter."""
    value = REGISTRY.get_sample_value(
        "saga_messages_handled_total", {"event": event, "outcome": outcome}
    )
    return value or 0.0
