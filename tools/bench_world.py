"""The benchmark's own world: a fresh vhost, fresh databases and the four services on free ports.

Nothing of `make up` is touched (its ports 8000-8003 and its databases): the benchmark starts its
services the way the e2e tests do (`tests.support.system.System`), measures the CPU each process
spends, and removes everything it created when it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from sqlalchemy.engine import make_url

from tests.support.broker import Vhost
from tests.support.databases import create_database, drop_database
from tests.support.servers import Servers, provide_servers
from tests.support.system import SERVICES, System
from tools.client import Urls
from tools.postgres import libpq
from tools.provision import provision_reader


@dataclass
class World:
    servers: Servers
    vhost: Vhost
    databases: dict[str, str]
    system: System
    log_dir: Path
    extra_databases: list[str] = field(default_factory=list)

    @property
    def urls(self) -> Urls:
        return self.system.urls

    def database(self, name: str) -> str:
        """A further fresh database (baselines, relay drain), dropped with the world."""
        url = create_database(self.servers.postgres_admin_url, name)
        self.extra_databases.append(url)
        return url


@contextlib.contextmanager
def isolated_world(extra_env: dict[str, str] | None = None) -> Iterator[World]:
    """Servers from `SAGA_TEST_*` (or local ones), a new vhost and databases, services started."""
    with provide_servers() as servers:
        vhost = Vhost.create(servers, name=f"bench-{os.getpid()}-{random.randrange(16**6):06x}")
        databases: dict[str, str] = {}
        world: World | None = None
        try:
            databases = {
                name: create_database(servers.postgres_admin_url, name) for name in SERVICES
            }
            log_dir = Path(tempfile.mkdtemp(prefix="saga-bench-logs-"))
            system = System.create(databases, vhost.amqp_url, log_dir, extra_env=extra_env)
            world = World(servers, vhost, databases, system, log_dir)
            system.start(timeout=120)
            # The hop table reads the migrated outboxes and inboxes as the read-only role.
            provision_reader(
                servers.postgres_admin_url, [make_url(u).database for u in databases.values()]
            )
            yield world
        finally:
            if world is not None:
                world.system.stop()
            vhost.delete()
            for url in [*databases.values(), *(world.extra_databases if world else [])]:
                with contextlib.suppress(Exception):
                    drop_database(servers.postgres_admin_url, url)


# --- seeding ---------------------------------------------------------------------------------

#: Stock of every product and money of every customer: more than any run can use up.
INITIAL_ON_HAND = 10**9
INITIAL_BALANCE_CENTS = 10**12


async def seed(urls: Urls, skus: list[str], customers: list[str], concurrency: int = 16) -> None:
    """Stock every sku and fund every customer, far beyond what the benchmark will use."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30) as http:

        async def put(method: str, url: str, body: dict[str, Any]) -> None:
            async with limit:
                response = await http.request(method, url, json=body)
                response.raise_for_status()

        await asyncio.gather(
            *(
                put(
                    "PUT",
                    f"{urls.inventory}/products/{sku}",
                    {"name": sku, "price_cents": 100 + i % 50, "on_hand": INITIAL_ON_HAND},
                )
                for i, sku in enumerate(skus)
            ),
            *(
                put(
                    "POST",
                    f"{urls.payment}/accounts",
                    {"customer_id": customer, "balance_cents": INITIAL_BALANCE_CENTS},
                )
                for customer in customers
            ),
        )


# --- CPU -------------------------------------------------------------------------------------


def _busy(times: Any, children: bool = False) -> float:
    total = float(times.user + times.system)
    if children:
        total += float(times.children_user + times.children_system)
    return total


def _postgres_seconds() -> float | None:
    """CPU of the whole PostgreSQL server: postmaster, live backends, and backends that exited."""
    for proc in psutil.process_iter(["name", "ppid", "username"]):
        if proc.info["name"] in ("postgres", "postmaster") and proc.info["ppid"] in (0, 1):
            try:
                total = _busy(proc.cpu_times(), children=True)
                for child in proc.children():
                    with contextlib.suppress(psutil.Error):
                        total += _busy(child.cpu_times())
                return total
            except psutil.Error:
                return None
    return None


def _rabbitmq_seconds() -> float | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "beam.smp":
            with contextlib.suppress(psutil.Error):
                return _busy(proc.cpu_times())
    return None


class CpuMeter:
    """CPU seconds spent by each service process, this process, and the two servers."""

    def __init__(self, world: World) -> None:
        self._procs = {
            name: psutil.Process(service.proc.pid)
            for name, service in world.system.services.items()
            if service.proc is not None
        }

    def sample(self) -> dict[str, float]:
        sample = {name: _busy(proc.cpu_times()) for name, proc in self._procs.items()}
        sample["bench (load + consumer)"] = _busy(psutil.Process().cpu_times())
        for name, seconds in (
            ("postgresql", _postgres_seconds()),
            ("rabbitmq", _rabbitmq_seconds()),
        ):
            if seconds is not None:
                sample[name] = seconds
        machine = psutil.cpu_times()
        sample["machine busy"] = float(sum(machine)) - float(machine.idle) - float(machine.iowait)
        sample["machine total"] = float(sum(machine))
        return sample

    @staticmethod
    def per_saga(before: dict[str, float], after: dict[str, float], sagas: int) -> dict[str, float]:
        """CPU milliseconds per completed saga, for each process and all of ours together."""
        if sagas == 0:
            return {}
        result = {
            name: round((after[name] - before[name]) * 1000 / sagas, 3)
            for name in after
            if name in before and not name.startswith("machine")
        }
        result["services (4 processes)"] = round(
            sum(v for k, v in result.items() if k in SERVICES or k.split("#")[0] in SERVICES), 3
        )
        return result

    @staticmethod
    def machine_busy(before: dict[str, float], after: dict[str, float]) -> float:
        """Fraction of all cores busy in between (other tenants of the machine included)."""
        total = after["machine total"] - before["machine total"]
        return round((after["machine busy"] - before["machine busy"]) / total, 3) if total else 0.0


# --- the machine -----------------------------------------------------------------------------


def describe_machine(servers: Servers) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    postgres = ""
    with (
        contextlib.suppress(Exception),
        psycopg.connect(libpq(servers.postgres_admin_url)) as connection,
    ):
        row = connection.execute("SHOW server_version").fetchone()
        postgres = row[0] if row else ""
    rabbitmq = ""
    with contextlib.suppress(Exception):
        overview = httpx.get(f"{servers.rabbitmq_api.rstrip('/')}/api/overview", timeout=5).json()
        rabbitmq = overview.get("rabbitmq_version", "")
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "rabbitmq": rabbitmq,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
