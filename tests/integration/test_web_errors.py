"""What the web layer answers when the database fails: 503 only while it cannot be reached; a query
it refuses is a bug, a 500 with nothing of the error in the body, logged with its traceback.

A stand-in service (probe_service's messaging, one route that runs a chosen query) runs in-process
in Litestar's test client, on a real database and broker vhost."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
from litestar import Litestar, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.testing import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from harness.rabbitmq import Vhost
from harness.servers import Servers
from outbox import Messaging
from tests.support import probe
from web import ServiceSettings, create_service_app
from web.migrations import upgrade

QUERIES = {
    "valid": "SELECT 1",
    "data-error": "SELECT 'seven'::integer",  # what unchecked input would cause
    "programming-error": "SELECT no_such_column",  # what a broken query causes
}


@get("/query/{kind:str}")
async def run_query(kind: FromPath[str], session: NamedDependency[AsyncSession]) -> None:
    await session.execute(text(QUERIES[kind]))


def probe_api(database_url: str, vhost: Vhost) -> TestClient[Litestar]:
    settings = ServiceSettings(
        service=probe.SERVICE,
        port=0,
        database_url=database_url,
        amqp_url=vhost.amqp_url,
        migrate_on_start=False,
        db_pool_size=2,
        auth_disabled=True,  # what is tested here is the error mapping behind the guard
    )
    messaging = Messaging(probe.manifest({}), settings)
    app = create_service_app(settings, messaging, [run_query], title=probe.SERVICE)
    return TestClient(app, timeout=30)


@pytest.fixture
def api(database_factory: Callable[[str], str], vhost: Vhost) -> Iterator[TestClient[Litestar]]:
    url = database_factory(probe.SERVICE)
    upgrade(probe.MIGRATIONS, url)
    with probe_api(url, vhost) as client:
        yield client


def test_a_database_that_cannot_be_reached_is_a_503_to_try_again(servers: Servers, vhost: Vhost):
    nowhere = make_url(servers.postgres_admin_url).set(database="t_no_such_database")

    with probe_api(nowhere.render_as_string(hide_password=False), vhost) as client:
        response = client.get("/query/valid")

    assert response.status_code == 503, response.text
    assert response.json() == {"status_code": 503, "detail": "database unavailable, try again"}


@pytest.mark.parametrize(
    ("kind", "error"), [("data-error", "DataError"), ("programming-error", "ProgrammingError")]
)
def test_a_query_the_database_refuses_is_a_500_logged_with_its_traceback(
    api: TestClient[Litestar], caplog: pytest.LogCaptureFixture, kind: str, error: str
):
    assert api.get("/query/valid").status_code == 200

    with caplog.at_level(logging.ERROR, logger="web.app"):
        response = api.get(f"/query/{kind}")

    assert response.status_code == 500, response.text
    assert response.json() == {"status_code": 500, "detail": "internal server error"}
    [logged] = [r for r in caplog.records if r.name == "web.app"]
    assert logged.getMessage() == f"unhandled error in GET /query/{kind}"
    assert logged.exc_info is not None
    assert type(logged.exc_info[1]).__name__ == error
