"""The benchmark's own world: a fresh vhost, fresh databases and the four services on free ports.

Nothing of `make up` is touched (its ports 8000-8003 and its databases): the benchmark starts its
services the way the e2e tests do (`harness.system.running_system`), measures the CPU each process
spends, and removes everything it created when it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from harness.rabbitmq import ManagementApi
from harness.servers import Servers, provide_servers
from harness.system import SERVICES, System, running_system
from tools.client import Urls
from tools.postgres import libpq


@contextlib.contextmanager
def isolated_world(extra_env: dict[str, str] | None = None) -> Iterator[System]:
    """Servers from `SAGA_TEST_*` (or local ones), a new vhost and databases, services started."""
    log_dir = Path(tempfile.mkdtemp(prefix="saga-bench-logs-"))
    with (
        provide_servers() as servers,
        running_system(
            servers,
            log_dir,
            extra_env=extra_env,
            label=f"bench-{os.getpid()}",
            start_timeout=120,
        ) as world,
    ):
        yield world


# --- seeding ---------------------------------------------------------------------------------

#: Stock of every product and money of every customer: more than any run can use up.
INITIAL_ON_HAND = 10**9
INITIAL_BALANCE_CENTS = 10**12


async def seed(
    urls: Urls,
    skus: list[str],
    customers: list[str],
    headers: dict[str, str],
    concurrency: int = 16,
) -> None:
    """Stock every sku and fund every customer, far beyond what the benchmark will use; `headers`
    carry an operator's token."""
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

    def __init__(self, world: System) -> None:
        self._procs = {
            name: psutil.Process(service.pid)
            for name, service in world.services.items()
            if service.pid is not None
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
