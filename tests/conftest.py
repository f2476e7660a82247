"""Fixtures shared by every test: servers, a broker vhost and databases per test, services in-process.

- `servers` (session): `Servers(postgres_admin_url, amqp_url, rabbitmq_api)`, from
  `SAGA_TEST_*` environment variables, else testcontainers, else local defaults.
- `vhost`: a fresh RabbitMQ vhost (`.name`, `.amqp_url`, management API helpers), deleted after.
- `database_factory`: `database_factory("order_service") -> url` makes an empty database, dropped after.
- `broker` (async tests): an AMQP client in `vhost`: `publish_event`, `tap`, `queue_state`.
- `migrated_database`: `await migrated_database("order_service") -> url`, with that package's
  alembic history applied (`tests.support.probe.MIGRATIONS` for the probe service).
- `start_service` (async tests): `await start_service(MANIFEST, Settings, database_url=url, **settings)`
  runs that service's consumer and relay in the test's loop until the test ends.

Fixtures with a wider scope can call `Vhost.create(servers)` and `create_database(...)` directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from harness.databases import create_database, drop_database, migrate
from harness.rabbitmq import Vhost
from harness.servers import Servers, provide_servers
from outbox import Manifest, Messaging, MessagingSettings, faults
from tests.support.broker import Broker
from tests.support.services import start_messaging, stop_messaging


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with provide_servers() as found:
        yield found


@pytest.fixture
def vhost(servers: Servers) -> Iterator[Vhost]:
    created = Vhost.create(servers)
    yield created
    created.delete()


@pytest.fixture
def database_factory(servers: Servers) -> Iterator[Callable[[str], str]]:
    created: list[str] = []

    def create(name: str) -> str:
        url = create_database(servers.postgres_admin_url, name)
        created.append(url)
        return url

    yield create
    for url in created:
        drop_database(servers.postgres_admin_url, url)


@pytest.fixture
async def broker(vhost: Vhost) -> AsyncIterator[Broker]:
    client = await Broker.connect(vhost)
    yield client
    await client.close()


@pytest.fixture
def migrated_database(
    database_factory: Callable[[str], str],
) -> Callable[[str], Awaitable[str]]:
    async def create(package: str) -> str:
        url = database_factory(package.rsplit(".", 1)[-1])
        await migrate(package, url)
        return url

    return create


StartService = Callable[..., Awaitable[Messaging]]


@pytest.fixture
async def start_service(
    broker: Broker,
    database_factory: Callable[[str], str],  # so that databases are dropped after services stop
) -> AsyncIterator[StartService]:
    started: list[Messaging] = []

    async def start(
        manifest: Manifest,
        settings_class: type[MessagingSettings],
        *,
        database_url: str,
        **overrides: Any,
    ) -> Messaging:
        messaging = await start_messaging(
            manifest, settings_class, database_url=database_url, broker=broker, **overrides
        )
        started.append(messaging)
        return messaging

    yield start
    for messaging in reversed(started):
        await stop_messaging(messaging)


@pytest.fixture(autouse=True)
def _disarm_crash_points() -> Iterator[None]:
    yield
    faults.disarm_all()
