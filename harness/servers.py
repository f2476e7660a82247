"""Where the servers are: given by environment variables, else started with Docker, else local.

- `SAGA_TEST_POSTGRES_URL`: an admin URL (`postgresql+psycopg://postgres@127.0.0.1:5432/postgres`)
- `SAGA_TEST_AMQP_URL`: the broker's default vhost (`amqp://guest:guest@127.0.0.1:5672/`)
- `SAGA_TEST_RABBITMQ_API`: the management API with credentials (`http://guest:guest@127.0.0.1:15672`)

Whoever uses them (a test, the benchmark) makes its own databases and its own vhost on them.
Containers need testcontainers (a dev dependency) and a Docker engine that answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from harness.rabbitmq import ManagementApi
from harness.wait import eventually_sync

log = logging.getLogger(__name__)

LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_RABBITMQ_API = "http://guest:guest@127.0.0.1:15672"

POSTGRES_IMAGE = "postgres:16"
RABBITMQ_IMAGE = "rabbitmq:3.13-management"


@dataclass(frozen=True)
class Servers:
    """A PostgreSQL server (admin URL, SQLAlchemy form) and a RabbitMQ broker (AMQP and HTTP API)."""

    postgres_admin_url: str
    amqp_url: str
    rabbitmq_api: str


LOCAL = Servers(LOCAL_POSTGRES_URL, LOCAL_AMQP_URL, LOCAL_RABBITMQ_API)


def from_environment() -> Servers | None:
    names = ("SAGA_TEST_POSTGRES_URL", "SAGA_TEST_AMQP_URL", "SAGA_TEST_RABBITMQ_API")
    values = [os.environ.get(name) for name in names]
    if not any(values):
        return None
    return Servers(
        postgres_admin_url=values[0] or LOCAL_POSTGRES_URL,
        amqp_url=values[1] or LOCAL_AMQP_URL,
        rabbitmq_api=values[2] or LOCAL_RABBITMQ_API,
    )


def docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env()
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def containers() -> Iterator[Servers]:
    """PostgreSQL and RabbitMQ (with its management API) in throwaway containers."""
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.rabbitmq import RabbitMqContainer

    with (
        PostgresContainer(POSTGRES_IMAGE, driver="psycopg") as postgres,
        RabbitMqContainer(RABBITMQ_IMAGE).with_exposed_ports(5672, 15672) as rabbitmq,
    ):
        host = rabbitmq.get_container_host_ip()
        servers = Servers(
            postgres_admin_url=postgres.get_connection_url(),
            amqp_url=f"amqp://guest:guest@{host}:{rabbitmq.get_exposed_port(5672)}/",
            rabbitmq_api=f"http://guest:guest@{host}:{rabbitmq.get_exposed_port(15672)}",
        )
        # The AMQP port answers before the management plugin has started.
        eventually_sync(ManagementApi(servers.rabbitmq_api).answers, timeout=60, interval=0.5)
        yield servers


@contextlib.contextmanager
def provide_servers() -> Iterator[Servers]:
    """Environment variables first; else containers if a Docker engine answers; else local servers."""
    given = from_environment()
    if given is not None:
        yield given
    elif docker_answers():
        log.info("starting PostgreSQL and RabbitMQ containers")
        with containers() as servers:
            yield servers
    else:
        yield LOCAL
