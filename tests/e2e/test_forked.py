"""The services the tests run are forked from an interpreter that has imported what they share
(`harness.process`), and each is still what `python -m <service>` makes: a process with its own
session, settings and log, that shows its own metrics and no other service's."""

from __future__ import annotations

import json
import os

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import http_client
from harness.system import System

pytestmark = pytest.mark.e2e


def test_each_service_is_forked_and_has_its_own_session_port_and_log(
    system: System,
) -> None:
    for name, service in system.services.items():
        assert service.pid is not None, f"{name} runs"
        process = psutil.Process(service.pid)
        assert "forkserver" in " ".join(process.parent().cmdline()), name
        assert os.getsid(service.pid) == service.pid, f"{name} leads a session of its own"
        # Its environment is its own (/proc/<pid>/environ shows the forkserver's, from before
        # the fork): the port it listens on is the one it was given.
        assert service.listening(), f"{name} listens on its port {service.port}"
        logged = [json.loads(line) for line in service.log_path.read_text().splitlines()]
        assert any(f"{name}: consuming" in entry["msg"] for entry in logged), name


def test_each_service_shows_its_own_metrics_and_no_other_services(system: System) -> None:
    """order_service alone counts ended orders: forked from an interpreter that had imported
    order_service too, the other three would show its counter, at 0 (as Prometheus then saw)."""
    shown = {name: metric_names(service.url) for name, service in system.services.items()}
    assert all("saga_messages_handled" in names for names in shown.values()), "shared metrics"
    assert "saga_orders_ended" in shown["order_service"]
    assert [name for name, names in shown.items() if "saga_orders_ended" in names] == [
        "order_service"
    ]


def metric_names(url: str) -> set[str]:
    text = http_client.get(f"{url}/metrics", timeout=10).text
    return {family.name for family in text_string_to_metric_families(text)}
