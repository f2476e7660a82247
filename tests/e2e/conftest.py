"""The e2e world: four service processes on fresh databases and a fresh vhost, shared by a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.broker import Vhost
from tests.support.databases import create_database, drop_database
from tests.support.servers import Servers
from tests.support.system import SERVICES, System
from tools.client import Shop, Urls

#: Short enough for the timeout scenario to finish quickly, long enough for any healthy saga.
E2E_ORDER_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def system(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    vhost = Vhost.create(servers)
    databases = {name: create_database(servers.postgres_admin_url, name) for name in SERVICES}
    log_dir = tmp_path_factory.mktemp("logs")
    running = System.create(
        databases,
        vhost.amqp_url,
        log_dir,
        extra_env={"ORDER_TIMEOUT_S": str(E2E_ORDER_TIMEOUT_S), "LOG_LEVEL": "INFO"},
    )
    running.vhost = vhost  # type: ignore[attr-defined]
    try:
        running.start()
        yield running
    finally:
        running.stop()
        vhost.delete()
        for url in databases.values():
            drop_database(servers.postgres_admin_url, url)


@pytest.fixture
def shop(system: System) -> Iterator[Shop]:
    for service in system.services.values():
        if not service.running:
            service.start()
    for service in system.services.values():
        service.wait_ready()
    with Shop(Urls(system.order, system.inventory, system.payment, system.notification)) as client:
        yield client
