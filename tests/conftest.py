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

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from harness.databases import create_database, drop_database, migrate
from harness.rabbitmq import Vhost
from harness.servers import Servers, provide_servers
from outbox import Manifest, Messaging, MessagingSettings, faults
from tests.support.broker import Broker
from tests.support.services import start_messaging, stop_messaging

# The suite runs on four workers on two cores: how fast hypothesis draws its inputs or runs one
# example measures the machine, not the code (`too_slow` failed a unit test in a CI run).
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


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


#: The longest tests, started first when `make test` runs the suite on several workers
#: (pytest-xdist, one test file per worker at a time): each takes a worker of its own from the
#: start, and the rest of the suite shares the others.
LONGEST_FIRST = (
    "tests/faults/test_cluster.py",
    "tests/faults/test_fault_suite.py",
    "tests/e2e/test_bench.py",
    "tests/faults/test_backlog.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, then the unit tests (each worker takes a second file at once: a
    short one, so that nothing waits behind a long one), then the rest as collected."""

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        if path in LONGEST_FIRST:
            return LONGEST_FIRST.index(path)
        return len(LONGEST_FIRST) + (0 if path.startswith("tests/unit/") else 1)

    items.sort(key=rank)
    for item in items:
        # schemathesis names each API operation's test (`test_…[GET /orders]`) but gives them all
        # the function's node id, and pytest-xdist hands out tests by node id: without the label
        # a worker would run one operation per function and skip the rest.
        if getattr(item, "operation_label", None) and not item.nodeid.endswith(f"::{item.name}"):
            item._id = item.parent.id.child(item.name)  # pytest's own id for an item so named
    shared = [nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1]
    if shared:
        raise pytest.UsageError(f"tests sharing a node id (xdist would run one of each): {shared}")
