"""The benchmark's own world: a fresh vhost, fresh databases and the four services on free ports.

Nothing of `make up` is touched (its ports 8000-8003 and its databases): the benchmark starts its
services the way the e2e tests do (`harness.system.running_system`), on a PostgreSQL server of its
own where it can (`tools.bench.postgres`), measures the CPU each process spends, and removes
everything it created when it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import psycopg

from harness.rabbitmq import ManagementApi
from harness.servers import Servers, provide_servers
from harness.system import SERVICES, System, running_system
from tools.bench.postgres import bindir, own_postgres
from tools.client import Urls
from tools.postgres import libpq

log = logging.getLogger(__name__)


@dataclass
class World:
    system: System
    #: The postmaster of the benchmark's own PostgreSQL server, None on the shared server.
    postgres_pid: int | None


@contextlib.contextmanager
def isolated_world(
    extra_env: dict[str, str] | None = None, own_server: bool = True
) -> Iterator[World]:
    """RabbitMQ from `SAGA_TEST_*` (or the local one), PostgreSQL of our own (`own_server`, where
    its binaries are installed) or from `SAGA_TEST_*`; a new vhost and databases; the services
    started."""
    log_dir = Path(tempfile.mkdtemp(prefix="saga-bench-logs-"))
    binaries = bindir() if own_server else None
    with contextlib.ExitStack() as stack:
        servers = stack.enter_context(provide_servers())
        pid = None
        if binaries is not None:
            try:
                own = stack.enter_context(own_postgres(binaries))
            except (OSError, subprocess.CalledProcessError) as exc:
                reason = getattr(exc, "stderr", b"") or str(exc)
                log.warning("no PostgreSQL server of our own, on the shared one: %s", reason)
            else:
                servers = dataclasses.replace(servers, postgres_admin_url=own.admin_url)
                pid = own.pid
        system = stack.enter_context(
            running_system(
                servers,
                log_dir,
                extra_env=extra_env,
                label=f"bench-{os.getpid()}",
                start_timeout=120,
            )
        )
        yield World(system, pid)


# --- seeding ---------------------------------------------------------------------------------

#: Stock of every product and money of every customer: more than any run can use up.
INITIAL_ON_HAND = 10**9
INITIAL_BALANCE_CENTS = 10**12


async def seed(
    urls: Urls,
    skus: list[str],
    customers: list[str],
    concurrency: int = 16,
    headers: dict[str, str] | None = None,
) -> None:
    """Stock every sku and fund every customer, far beyond what the benchmark will use."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:

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


def _server_seconds(postmaster: psutil.Process) -> float | None:
    """CPU of a whole PostgreSQL server: postmaster, live backends, and backends that exited."""
    try:
        total = _busy(postmaster.cpu_times(), children=True)
        for child in postmaster.children():
            with contextlib.suppress(psutil.Error):
                total += _busy(child.cpu_times())
        return total
    except psutil.Error:
        return None


def _postgres_seconds(pid: int | None) -> float | None:
    """The server of postmaster `pid`; without one, the machine's first (the shared server)."""
    if pid is not None:
        return _server_seconds(psutil.Process(pid))
    for proc in psutil.process_iter(["name", "ppid", "username"]):
        if proc.info["name"] in ("postgres", "postmaster") and proc.info["ppid"] in (0, 1):
            return _server_seconds(proc)
    return None


def broker_pid(amqp_url: str) -> int | None:
    """The process listening on the broker's AMQP port (a machine may run several RabbitMQ
    nodes), where the system lets us see it; else None."""
    port = urlsplit(amqp_url).port or 5672
    with contextlib.suppress(psutil.Error):
        for connection in psutil.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
                return connection.pid
    return None


def _rabbitmq_seconds(pid: int | None) -> float | None:
    """The broker of `pid`; without one, the machine's first RabbitMQ node."""
    if pid is not None:
        with contextlib.suppress(psutil.Error):
            return _busy(psutil.Process(pid).cpu_times())
        return None
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "beam.smp":
            with contextlib.suppress(psutil.Error):
                return _busy(proc.cpu_times())
    return None


class CpuMeter:
    """CPU seconds spent by each service process, this process, and the two servers.

    The services' processes are looked up at each sample: a phase that restarts them with other
    settings is measured on the new ones (a phase's figures are differences within it)."""

    def __init__(self, world: System, postgres_pid: int | None = None) -> None:
        self._world = world
        self._postgres_pid = postgres_pid
        self._broker_pid = broker_pid(world.servers.amqp_url)

    def sample(self) -> dict[str, float]:
        sample = {
            name: _busy(psutil.Process(service.pid).cpu_times())
            for name, service in self._world.services.items()
            if service.pid is not None
        }
        sample["bench (load + consumer)"] = _busy(psutil.Process().cpu_times())
        for name, seconds in (
            ("postgresql", _postgres_seconds(self._postgres_pid)),
            ("rabbitmq", _rabbitmq_seconds(self._broker_pid)),
        ):
            if seconds is not None:
                sample[name] = seconds
        machine = psutil.cpu_times()
        sample["machine busy"] = float(sum(machine)) - float(machine.idle) - float(machine.iowait)
        sample["machine total"] = float(sum(machine))
        return sample

    @staticmethod
    def ms_per(before: dict[str, float], after: dict[str, float], count: float) -> dict[str, float]:
        """CPU milliseconds per `count` (completed sagas, seconds), for each process and all the
        services together."""
        if count == 0:
            return {}
        result = {
            name: round((after[name] - before[name]) * 1000 / count, 3)
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
        rabbitmq = ManagementApi(servers.rabbitmq_api, timeout=5).overview()["rabbitmq_version"]
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
