"""An isolated copy of the system: the four services on free ports, fresh databases, a fresh vhost.

`running_system(servers, log_dir)` makes the databases and the vhost on `servers`, starts the four
services (each applies its migrations on start), waits until each is ready, and removes everything
when the block ends. Nothing of `make up` is touched (its ports 8000-8003, its databases): the e2e
and fault tests and the benchmark each run in a copy of their own.

Authentication is on, as under `make up`: each system verifies tokens with a secret of its own,
and `System.tokens` mints them, as a user's identity provider would. `extra_env` may name another
key (`AUTH_PUBLIC_KEY` with `AUTH_PRIVATE_KEY` to sign) or `AUTH_DISABLED=true`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ephemeral_port_reserve
from sqlalchemy.engine import make_url

from harness.databases import create_database, drop_database
from harness.process import ServiceProcess
from harness.rabbitmq import Vhost
from harness.servers import Servers
from tools.client import Urls
from tools.provision import provision_reader
from tools.tokens import Tokens, names_a_key, new_secret

SERVICES = ("order_service", "inventory_service", "payment_service", "notification_service")

#: Quicker than the default, so that a test waiting for a sweep does not wait long.
RELAY_SWEEP_INTERVAL_S = "0.5"


def free_port() -> int:
    """A free port of 127.0.0.1, left in TIME_WAIT: for a minute the kernel gives it to no other
    `bind(("127.0.0.1", 0))`, so two services started at once, here or by another test worker,
    never get the same one; a server that binds with SO_REUSEADDR (uvicorn, PostgreSQL,
    Prometheus) takes it."""
    return int(ephemeral_port_reserve.reserve("127.0.0.1"))


def service_process(
    name: str, database_url: str, amqp_url: str, log_dir: Path, env: dict[str, str] | None = None
) -> ServiceProcess:
    """Service `name` on a free port of its own, on these servers; `env` adds to its environment.

    Not started; forked when it starts (`harness.process`). It inherits this process's
    environment, but for armed crash points and the keys of authentication: it verifies tokens
    with a fresh secret, unless `env` names a key."""
    port = free_port()
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k != "ORDER_SAGA_CRASH_AT" and not k.startswith("AUTH_")
    }
    return ServiceProcess(
        name,
        port,
        {
            **inherited,
            **({} if names_a_key(env or {}) else {"AUTH_SECRET": new_secret()}),
            "PYTHONUNBUFFERED": "1",
            "PORT": str(port),
            "DATABASE_URL": database_url,
            "AMQP_URL": amqp_url,
            "RELAY_SWEEP_INTERVAL_S": RELAY_SWEEP_INTERVAL_S,
            **(env or {}),
        },
        log_dir / f"{name}.log",
        forked=True,
    )


@dataclass
class System:
    """Four services, each on its own database, all in one vhost of `servers`' broker."""

    servers: Servers
    vhost: Vhost
    log_dir: Path
    databases: dict[str, str] = field(default_factory=dict)  # service -> database URL
    #: By service name; replicas are `<service>#2`, `#3`, …
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    extra_databases: list[str] = field(default_factory=list)
    #: Mints the tokens its services accept; None if they take none (`AUTH_DISABLED`).
    tokens: Tokens | None = None
    #: Service -> the admin URL of the server its database is on (default: `servers`').
    database_servers: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 60.0) -> None:
        """Start every process not running, then wait until each is ready."""
        for service in self.services.values():
            if not service.running:
                service.start()
        for service in self.services.values():
            service.wait_ready(timeout)

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()

    def add_replica(self, name: str) -> ServiceProcess:
        """One more process of service `name` on a port of its own: the same database and vhost
        (competing consumers on its queues, relays sharing its outbox). Not started; `stop()`
        stops it with the others. It is `self["<name>#2"]`, `#3`, …"""
        first = self.services[name]
        key = f"{name}#{sum(s.name == name for s in self.services.values()) + 1}"
        port = free_port()
        self.services[key] = ServiceProcess(
            name,
            port,
            {**first.env, "PORT": str(port)},
            first.log_path.with_name(f"{key}.log"),
            forked=first.forked,
        )
        return self.services[key]

    def database(self, name: str) -> str:
        """A further fresh database (for a baseline, a probe), dropped with the system."""
        url = create_database(self.servers.postgres_admin_url, name)
        self.extra_databases.append(url)
        return url

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    @property
    def urls(self) -> Urls:
        return Urls(self.order, self.inventory, self.payment, self.notification)

    @property
    def order(self) -> str:
        return self.services["order_service"].url

    @property
    def inventory(self) -> str:
        return self.services["inventory_service"].url

    @property
    def payment(self) -> str:
        return self.services["payment_service"].url

    @property
    def notification(self) -> str:
        return self.services["notification_service"].url


@contextlib.contextmanager
def running_system(
    servers: Servers,
    log_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    per_service_env: dict[str, dict[str, str]] | None = None,
    vhost: Vhost | None = None,
    label: str = "test",
    start_timeout: float = 60.0,
    database_servers: dict[str, str] | None = None,
) -> Iterator[System]:
    """The four services started on fresh databases and a vhost (`<label>-<hex>`, unless one is
    given: it is then left in place), stopped and cleaned up after. `extra_env` goes to every
    service, `per_service_env[name]` to one. `database_servers[name]` is the admin URL of another
    PostgreSQL server for that service's database (a server per service, as in a cluster)."""
    with contextlib.ExitStack() as cleanup:
        if vhost is None:
            vhost = Vhost.create(servers, f"{label}-{secrets.token_hex(6)}")
            cleanup.callback(vhost.delete)
        system = System(servers, vhost, log_dir)
        extra_env = dict(extra_env or {})
        if not names_a_key(extra_env):
            extra_env["AUTH_SECRET"] = new_secret()
        system.tokens = Tokens.from_env(extra_env)
        system.database_servers = {
            name: (database_servers or {}).get(name, servers.postgres_admin_url)
            for name in SERVICES
        }
        # Run last: the databases go once every process holding sessions on them has stopped.
        cleanup.callback(_drop_databases, system)
        cleanup.callback(system.stop)
        for name in SERVICES:
            system.databases[name] = create_database(system.database_servers[name], name)
        # Ports picked just before the processes bind them: the shorter the gap, the smaller the
        # chance that another process on the machine takes one meanwhile.
        for name in SERVICES:
            env = {**extra_env, **(per_service_env or {}).get(name, {})}
            system.services[name] = service_process(
                name, system.databases[name], vhost.amqp_url, log_dir, env
            )
        system.start(start_timeout)
        # The operator tools' read-only role reads the migrated outboxes and inboxes (the audit,
        # the benchmark's hop table).
        for admin_url in set(system.database_servers.values()):
            provision_reader(
                admin_url,
                [
                    str(make_url(system.databases[name]).database)
                    for name, server in system.database_servers.items()
                    if server == admin_url
                ],
            )
        yield system


def _drop_databases(system: System) -> None:
    for name, url in system.databases.items():
        drop_database(system.database_servers[name], url, patience=120)
    for url in system.extra_databases:
        drop_database(system.servers.postgres_admin_url, url, patience=120)
