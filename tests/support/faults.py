"""The faults the fault suite injects into a running `System`, each one logged with when it struck.

Local faults touch only the test's own processes, vhost, broker users and databases: SIGKILL and
restart, a kill storm, SIGSTOP past the broker heartbeat, closing the vhost's connections, cutting
one service off the broker (its user's connection limit set to 0), terminating the services'
database sessions, and refusing connections to their databases for a while.

Global faults strike a whole server: the broker's `stop_app`/`start_app` and a PostgreSQL restart.
They need servers nobody else uses (`harness.cluster.OwnServers`, given as `own`), so that the
suite can run beside other tests on one machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from harness.cluster import ClusterUnavailable, OwnServers, check_engines
from harness.rabbitmq import Vhost
from harness.system import System
from harness.wait import eventually_sync
from tools.postgres import libpq

#: Heartbeat the services negotiate in the fault suite: a process stopped for longer than two of
#: them is dropped by the broker. Short, so that the suite can pause a service past it.
HEARTBEAT_S = 5
#: How long a robust connection waits between reconnection attempts (aio-pika's default is 5 s).
RECONNECT_INTERVAL_S = 1


@dataclass
class FaultLog:
    """What was injected, when (seconds since the log began), and what it did."""

    started: float = field(default_factory=time.monotonic)
    entries: list[tuple[float, str, str]] = field(default_factory=list)

    def add(self, kind: str, detail: str) -> None:
        self.entries.append((round(time.monotonic() - self.started, 1), kind, detail))

    @property
    def counts(self) -> Counter[str]:
        return Counter(kind for _, kind, _ in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


@contextlib.contextmanager
def engines_base(suite: str) -> Iterator[Path]:
    """A folder for servers of the suite's own (`OwnServers`, `LocalCluster`), removed after; the
    suite fails at once, saying what is missing, where this machine cannot run them."""
    try:
        check_engines()
    except ClusterUnavailable as missing:
        pytest.fail(f"the {suite} cannot run on this machine: {missing}", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix=f"order-saga-{suite.replace(' ', '-')}-"))
    base.chmod(0o755)  # PostgreSQL's servers run as postgres, under it
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- broker users ------------------------------------------------------------------------------


@dataclass
class BrokerUsers:
    """One RabbitMQ user per service, with every right in the test's vhost, deleted afterwards.

    A user of its own lets a test cut one service off the broker (`limit_connections(user, 0)`)."""

    vhost: Vhost
    amqp_urls: dict[str, str] = field(default_factory=dict)  # service -> AMQP URL as that user
    users: dict[str, str] = field(default_factory=dict)  # service -> user name

    @classmethod
    @contextlib.contextmanager
    def create(cls, vhost: Vhost, services: tuple[str, ...], query: str) -> Iterator[BrokerUsers]:
        created = cls(vhost)
        parts = urlsplit(vhost.amqp_url)
        try:
            for service in services:
                user, password = f"{vhost.name}.{service}", secrets.token_hex(8)
                vhost.management.put_user(user, password)
                created.users[service] = user
                vhost.management.set_permissions(
                    vhost.name, user, configure=".*", write=".*", read=".*"
                )
                netloc = f"{quote(user, safe='')}:{password}@{parts.hostname}:{parts.port or 5672}"
                created.amqp_urls[service] = urlunsplit(parts._replace(netloc=netloc, query=query))
            yield created
        finally:
            for user in created.users.values():
                vhost.management.delete_user(user)

    def limit_connections(self, service: str, limit: int | None) -> None:
        """At most `limit` connections for the service's user from now on (None: no limit)."""
        self.vhost.management.limit_connections(self.users[service], limit)

    def connections_of(self, service: str) -> list[dict]:
        return [c for c in self.vhost.connections() if c.get("user") == self.users[service]]


def close_connections(vhost: Vhost, connections: list[dict], reason: str) -> int:
    """Close connections from the broker's side, as `rabbitmqctl close_connection` would."""
    for connection in connections:
        vhost.management.close_connection(connection["name"], reason)
    return len(connections)


# --- databases ---------------------------------------------------------------------------------


def _admin(admin_url: str) -> psycopg.Connection:
    return psycopg.connect(libpq(admin_url), autocommit=True)


def terminate_sessions(admin_url: str, database_urls: list[str]) -> int:
    """`pg_terminate_backend` on every session of these databases (and no other); how many."""
    names = [make_url(url).database for url in database_urls]
    with _admin(admin_url) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            (names,),
        ).fetchall()
    return sum(1 for (terminated,) in rows if terminated)


@contextlib.contextmanager
def databases_down(admin_url: str, database_urls: list[str]) -> Iterator[int]:
    """These databases refuse every connection, and lose the ones they had, until the block ends:
    what the services see of a database server that is down, without touching anybody else's."""
    names = [make_url(url).database for url in database_urls]
    with _admin(admin_url) as connection:
        for name in names:
            connection.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                    sql.Identifier(name)
                )
            )
        try:
            yield terminate_sessions(admin_url, database_urls)
        finally:
            for name in names:
                connection.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                        sql.Identifier(name)
                    )
                )


# --- the faults, on a running system -----------------------------------------------------------


class Faults:
    """Inject faults into `system`; each method returns once the fault is over (not healed)."""

    def __init__(
        self,
        system: System,
        vhost: Vhost,
        users: BrokerUsers,
        admin_url: str,
        rng: random.Random,
        log: FaultLog | None = None,
        own: OwnServers | None = None,
    ) -> None:
        self.system = system
        self.vhost = vhost
        self.users = users
        self.admin_url = admin_url
        self.rng = rng
        self.log = log or FaultLog()
        self.own = own  # the servers under `system`, if nobody else uses them (global faults)

    def kill_and_restart(self, name: str, down_s: float) -> None:
        """SIGKILL at a random moment of its work, then a restart after `down_s`."""
        service = self.system[name]
        service.kill()
        self.log.add("sigkill", f"{name}, restarted after {down_s:.1f}s")
        time.sleep(down_s)
        service.start()
        service.wait_ready(timeout=90)

    def kill_storm(self, name: str, kills: int = 5, down_s: float = 2.0) -> None:
        """Kill one consumer `kills` times in a row, each time soon after it came back to a
        backlog that built up while it was down."""
        service = self.system[name]
        for kill in range(1, kills + 1):
            service.kill()
            backlog = self.backlog_of(name)
            self.log.add("kill storm", f"{name} kill {kill}/{kills} (backlog ~{backlog})")
            time.sleep(down_s)
            service.start()
            if kill < kills:
                service.wait_ready(timeout=90)
                time.sleep(self.rng.uniform(0.3, 1.5))  # let it take a bite of its backlog
        service.wait_ready(timeout=90)

    def pause_past_heartbeat(self, name: str, seconds: float = 4 * HEARTBEAT_S) -> None:
        """SIGSTOP for longer than the broker tolerates missed heartbeats (it must drop the
        connection meanwhile), then SIGCONT; returns once the service has reconnected."""
        service = self.system[name]
        before = self._connection_names()
        service.pause()
        paused_at = time.monotonic()
        self.log.add("sigstop", f"{name} for {seconds:.0f}s (heartbeat {HEARTBEAT_S}s)")
        try:
            eventually_sync(lambda: not self.users.connections_of(name), seconds, interval=0.5)
            time.sleep(max(0.0, seconds - (time.monotonic() - paused_at)))
        finally:
            service.resume()
        self.wait_reconnected([name], before)

    def close_all_connections(self) -> int:
        """Every client connection of the vhost closed by the broker (`close_all_connections -p`);
        returns once each service has a new one."""
        before = self._connection_names()
        closed = close_connections(self.vhost, self.vhost.connections(), "fault suite")
        self.log.add("close_all_connections", f"{closed} connections in {self.vhost.name}")
        self.wait_reconnected(self.users.users, before)
        return closed

    def cut_off(self, name: str, seconds: float) -> None:
        """The service's broker user may hold no connection; its open ones are closed. It keeps
        trying to reconnect, is let back in after `seconds`, and this returns once it is back."""
        before = self._connection_names()
        self.users.limit_connections(name, 0)
        try:
            closed = close_connections(self.vhost, self.users.connections_of(name), "cut off")
            self.log.add("cut off from broker", f"{name} for {seconds:.0f}s ({closed} closed)")
            time.sleep(seconds)
            assert not self.users.connections_of(name), f"{name} got past its limit of 0"
        finally:
            self.users.limit_connections(name, None)
        self.wait_reconnected([name], before)

    def wait_reconnected(
        self, services: Iterable[str] = (), before: set[str] | None = None, timeout: float = 90.0
    ) -> None:
        """Every service holds a broker connection, and each of `services` one that is not among
        the connections `before` the fault (it reconnected)."""
        must_be_new = set(services)

        def all_back() -> bool:
            connections = self.vhost.connections()
            for service, user in self.users.users.items():
                names = {c["name"] for c in connections if c.get("user") == user}
                if not names or (service in must_be_new and names <= (before or set())):
                    return False
            return True

        eventually_sync(all_back, timeout=timeout, interval=0.2)

    def _connection_names(self) -> set[str]:
        return {c["name"] for c in self.vhost.connections()}

    def terminate_sessions(self) -> int:
        urls = list(self.system.databases.values())
        terminated = terminate_sessions(self.admin_url, urls)
        self.log.add("pg_terminate_backend", f"{terminated} sessions")
        return terminated

    def databases_down(self, seconds: float) -> None:
        urls = list(self.system.databases.values())
        with databases_down(self.admin_url, urls) as terminated:
            self.log.add("databases down", f"all four for {seconds:.0f}s ({terminated} sessions)")
            time.sleep(seconds)

    def restart_broker(self, down_s: float = 5.0) -> None:
        """GLOBAL: the whole broker stops (`stop_app`: every connection, every queue) and starts
        again after `down_s`."""
        node = self._own().node
        node.ctl("stop_app")
        self.log.add("broker stop_app/start_app", f"{node.name} down {down_s:.0f}s")
        try:
            time.sleep(down_s)
        finally:
            node.ctl("start_app")
        eventually_sync(self._broker_answers, timeout=60, interval=0.5)

    def restart_postgres(self) -> None:
        """GLOBAL: the whole PostgreSQL server restarts (`pg_ctlcluster … restart`, fast mode)."""
        server = self._own().postgres
        server.ctl("restart")
        self.log.add("postgresql restart", f"{server.name} on :{server.port}")

    def _own(self) -> OwnServers:
        if self.own is None:
            raise RuntimeError("a global fault needs servers of the test's own (OwnServers)")
        return self.own

    def backlog_of(self, name: str) -> int:
        """Messages waiting in the service's queues, as the management API last counted them."""
        try:
            return sum(
                q.get("messages", 0)
                for q in self.vhost.queues()
                if q["name"].startswith(f"{name}.") and not q["name"].endswith(".dlq")
            )
        except httpx.HTTPError:
            return -1

    def wait_all_consumed(self, timeout: float = 90.0) -> None:
        """Every work queue of the vhost has a consumer again (the services reconnected)."""

        def all_consumed() -> bool:
            queues = [q for q in self.vhost.queues() if not q["name"].endswith(".dlq")]
            return bool(queues) and all(q.get("consumers", 0) > 0 for q in queues)

        eventually_sync(all_consumed, timeout=timeout, interval=0.5)

    def _broker_answers(self) -> bool:
        try:
            self.vhost.queues()
        except httpx.HTTPError:
            return False
        return True


def keep_and_judge(
    figures: dict, entries: list, violations: list[str], seed: int, logs: Path
) -> None:
    """`keep` the run's figures and faults, then fail with the first violations, the seed that
    replays the run and where its logs are."""
    keep(figures, entries)
    assert not violations, (
        f"{len(violations)} violations (seed {seed}, logs in {logs}):\n"
        + "\n".join(violations[:40])
        + "\nfaults:\n"
        + "\n".join(map(str, entries))
    )


def keep(figures: dict, entries: list) -> None:
    """Print a run's figures and faults; write them as JSON to `SAGA_FAULTS_REPORT` if set."""
    print("fault suite:", json.dumps(figures))
    for at, kind, detail in entries:
        print(f"  fault at {at:6.1f}s: {kind} — {detail}")
    target = os.environ.get("SAGA_FAULTS_REPORT")
    if target:
        Path(target).write_text(json.dumps({**figures, "log": entries}, indent=2) + "\n")
