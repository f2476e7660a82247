"""The four services as real processes, for e2e and fault tests: start, stop, kill, restart, ask."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from tests.support.broker import Vhost
from tests.support.databases import create_database, drop_database
from tests.support.servers import Servers
from tests.support.wait import eventually_sync
from tools.client import Urls
from tools.provision import provision_reader

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("order_service", "inventory_service", "payment_service", "notification_service")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.name],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health/ready?timeout=1", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no acks, no commits in flight."""
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metric(self, name: str, **labels: str) -> float:
        """The sum of this process's Prometheus samples `name` whose labels include `labels`."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class System:
    """Four services, each on its own database, all on one broker vhost."""

    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        database_urls: dict[str, str],
        amqp_url: str,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        per_service_env: dict[str, dict[str, str]] | None = None,
    ) -> System:
        system = cls()
        for name in SERVICES:
            port = free_port()
            inherited = {k: v for k, v in os.environ.items() if k != "ORDER_SAGA_CRASH_AT"}
            env = {
                **inherited,
                "PYTHONUNBUFFERED": "1",
                "PORT": str(port),
                "DATABASE_URL": database_urls[name],
                "AMQP_URL": amqp_url,
                "RELAY_SWEEP_INTERVAL_S": "0.5",
                **(extra_env or {}),
                **((per_service_env or {}).get(name, {})),
            }
            system.services[name] = ServiceProcess(name, port, env, log_dir / f"{name}.log")
        return system

    def start(self, timeout: float = 60.0) -> None:
        for service in self.services.values():
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
            name, port, {**first.env, "PORT": str(port)}, first.log_path.with_name(f"{key}.log")
        )
        return self.services[key]

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
) -> Iterator[System]:
    """The four services started on fresh databases (`.databases`) and a vhost (`.vhost`; a fresh
    one unless given), stopped and cleaned up after. For tests that need their own settings."""
    own_vhost = vhost is None
    vhost = vhost or Vhost.create(servers)
    databases = {name: create_database(servers.postgres_admin_url, name) for name in SERVICES}
    system = System.create(databases, vhost.amqp_url, log_dir, extra_env, per_service_env)
    system.vhost = vhost  # type: ignore[attr-defined]
    system.databases = databases  # type: ignore[attr-defined]
    try:
        system.start()
        # The operator tools' read-only role reads the migrated outboxes and inboxes (the audit).
        provision_reader(
            servers.postgres_admin_url, [make_url(u).database for u in databases.values()]
        )
        yield system
    finally:
        system.stop()
        if own_vhost:
            vhost.delete()
        for url in databases.values():
            # Patiently: on a busy shared server, a connection slot may take a while to free up.
            eventually_sync(lambda url=url: _dropped(servers, url), timeout=120, interval=1.0)


def _dropped(servers: Servers, database_url: str) -> bool:
    try:
        drop_database(servers.postgres_admin_url, database_url)
    except psycopg.OperationalError:
        return False
    return True
