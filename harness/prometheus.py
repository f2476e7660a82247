"""A real Prometheus server on a port of its own, scraping the services and the broker it is given.

`make prometheus` runs one against `make up`'s services; the dashboard test
(`tests/e2e/test_dashboard.py`) runs one against an isolated system and asks it the dashboard's
queries. The server is Debian's `prometheus` package (`make prometheus-install`), run with a
configuration written by `scrape_config`, the same shape as `deploy/prometheus/prometheus.yml`
for Docker Compose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from harness import http_client
from harness.servers import Servers
from harness.system import free_port
from harness.wait import eventually_sync

INSTALL = "make prometheus-install (apt-get install prometheus)"
#: RabbitMQ's own per-queue figures (messages ready and unacked by vhost and queue): the
#: `detailed` endpoint of its Prometheus plugin, so that the broker itself keeps its defaults.
BROKER_METRICS_PATH = "/metrics/detailed"
BROKER_FAMILIES = ["queue_coarse_metrics"]


#: Where RabbitMQ's Prometheus plugin listens, on the broker's host.
BROKER_METRICS_PORT = 15692


def broker_target(servers: Servers) -> str:
    """`host:port` of the broker's Prometheus plugin: `SAGA_TEST_RABBITMQ_PROMETHEUS` if set, else
    the management API's host on the plugin's port."""
    given = os.environ.get("SAGA_TEST_RABBITMQ_PROMETHEUS")
    return given or f"{urlsplit(servers.rabbitmq_api).hostname}:{BROKER_METRICS_PORT}"


class PrometheusUnavailable(Exception):
    """No `prometheus` binary here, or it exited or did not become ready: why, and its log."""


def scrape_config(
    services: Mapping[str, Sequence[str]],
    broker: str | None,
    *,
    vhost: str | None = None,
    interval_s: float = 5.0,
) -> dict[str, Any]:
    """A Prometheus configuration: one job per service (named after it, `host:port` targets, its
    `/metrics`) and one, `rabbitmq`, for the broker's per-queue metrics (of `vhost` only, if
    given)."""
    jobs: list[dict[str, Any]] = [
        {"job_name": name, "static_configs": [{"targets": list(targets)}]}
        for name, targets in services.items()
    ]
    if broker is not None:
        params: dict[str, list[str]] = {"family": BROKER_FAMILIES}
        if vhost is not None:
            params["vhost"] = [vhost]
        jobs.append(
            {
                "job_name": "rabbitmq",
                "metrics_path": BROKER_METRICS_PATH,
                "params": params,
                "static_configs": [{"targets": [broker]}],
            }
        )
    interval = f"{interval_s:g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": jobs,
    }


@dataclass
class Prometheus:
    """A running server: its URL and its HTTP API."""

    url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector or scalar `expr` evaluates to now; ValueError if Prometheus refuses
        the query (with its reason)."""
        response = http_client.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        result = body["data"]["result"]
        return result if body["data"]["resultType"] == "vector" else [{"value": result}]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, with their `health` and `lastError`."""
        response = http_client.get(f"{self.url}/api/v1/targets", timeout=10)
        return response.json()["data"]["activeTargets"]  # type: ignore[no-any-return]

    def ready(self) -> bool:
        try:
            return http_client.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait(self) -> int:
        """Until the server exits (Ctrl-C, a signal); its exit status."""
        return self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusUnavailable(f"no prometheus binary on PATH: {INSTALL}")
    return found


@contextlib.contextmanager
def running_prometheus(
    config: Mapping[str, Any], directory: Path, *, port: int = 0, timeout: float = 30.0
) -> Iterator[Prometheus]:
    """Prometheus with `config`, its data and log in `directory`, listening on 127.0.0.1:`port`
    (a free one if 0), ready; stopped when the block ends."""
    executable = binary()
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    port = port or free_port()
    log_path = directory / "prometheus.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                executable,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log_path, process)
    try:

        def ready_or_exited() -> bool:
            if process.poll() is not None:
                raise PrometheusUnavailable(
                    f"prometheus exited with status {process.returncode}:\n{server.log_tail()}"
                )
            return server.ready()

        try:
            eventually_sync(ready_or_exited, timeout=timeout, interval=0.1)
        except TimeoutError:
            raise PrometheusUnavailable(
                f"prometheus not ready after {timeout:g}s:\n{server.log_tail()}"
            ) from None
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
