"""Integration fixtures: order_service's messaging (the real manifest, migrations and handlers) and
probe_service (a stand-in whose handlers leave a trace), on a real database and broker vhost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from order_service.messaging import MANIFEST as ORDER
from order_service.settings import Settings as OrderSettings
from outbox import Messaging
from tests.support import probe
from tests.support.broker import Broker, Tap


@pytest.fixture
async def order_database(migrated_database: Callable[[str], Awaitable[str]]) -> str:
    return await migrated_database("order_service")


@pytest.fixture
async def downstream(broker: Broker) -> Tap:
    """What the other services would hear from order_service: every event it emits."""
    return await broker.tap(*(event.__name__ for event in ORDER.emits))


@pytest.fixture
async def order_service(start_service, order_database: str, downstream: Tap) -> Messaging:
    return await start_service(ORDER, OrderSettings, database_url=order_database)


@pytest.fixture
async def probe_database(migrated_database: Callable[[str], Awaitable[str]]) -> str:
    return await migrated_database(probe.MIGRATIONS)
