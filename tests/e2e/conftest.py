"""The e2e world: four service processes on fresh databases and a fresh vhost, shared by a module.

A test module may set `ORDER_TIMEOUT_S` to give its orders another deadline than the default here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.servers import Servers
from harness.system import System, running_system
from tools.client import Shop

#: Short enough for the timeout scenario to finish quickly, long enough for any healthy saga.
E2E_ORDER_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def system(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[System]:
    timeout = getattr(request.module, "ORDER_TIMEOUT_S", E2E_ORDER_TIMEOUT_S)
    with running_system(
        servers,
        tmp_path_factory.mktemp("logs"),
        # A small pool: PostgreSQL's 100 connections are shared with whatever else runs.
        extra_env={"ORDER_TIMEOUT_S": str(timeout), "DB_POOL_SIZE": "5"},
    ) as running:
        yield running


@pytest.fixture
def shop(system: System) -> Iterator[Shop]:
    """A client of the module's system, every service (re)started and ready."""
    for service in system.services.values():
        if not service.running:
            service.start()
    for service in system.services.values():
        service.wait_ready()
    with Shop(system.urls, timeout=30, tokens=system.tokens) as client:
        yield client
