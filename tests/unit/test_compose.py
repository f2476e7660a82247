"""compose.yaml, checked without a Docker engine: it follows the Compose specification (the JSON
schema that check-jsonschema ships), starts everything in order of health rather than of sleeps,
runs each service from the one image with its own credentials, as `tools.provision` makes them,
and beside them Prometheus, Grafana and Jaeger, configured from deploy/ to see those services."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from harness.prometheus import scrape_config
from tools import provision

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DEPLOY = ROOT / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
SERVICES = list(provision.MANIFESTS)
DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")  # ${VARIABLE:-default}


def check_against_specification(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True,
        text=True,
        timeout=60,
    )


def with_defaults(text: str) -> str:
    """`text` as Compose interpolates it when no variable is set."""
    return DEFAULT.sub(lambda match: match.group(2), text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(with_defaults(COMPOSE.read_text()))


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def test_compose_yaml_follows_the_compose_specification() -> None:
    checked = check_against_specification(COMPOSE)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_specification_check_refuses_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("service_healthy", "healthy", 1))
    checked = check_against_specification(broken)
    assert checked.returncode != 0, checked.stdout


def test_every_long_running_container_has_a_health_check_and_waits_for_healthy_ones(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    one_shot = {name for name, spec in services.items() if spec.get("restart") == "no"}
    assert one_shot == {"provision"}
    for name, spec in services.items():
        if name not in one_shot:
            assert spec["healthcheck"]["test"][0] == "CMD", name
        for dependency, condition in spec.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dependency in one_shot else "service_healthy"
            )
            assert condition == {"condition": expected}, (name, dependency)
    assert set(services["provision"]["depends_on"]) == {"postgres", "rabbitmq"}
    for service in SERVICES:
        assert set(services[service]["depends_on"]) == {"provision", "postgres", "rabbitmq"}
    assert services["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert services["rabbitmq"]["healthcheck"]["test"][1:] == ["rabbitmq-diagnostics", "-q", "ping"]
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_nothing_waits_by_sleeping(compose: dict[str, Any]) -> None:
    assert not [s for s in strings(compose) if re.search(r"\bsleep\b", s)]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_from_the_one_image_with_its_own_credentials(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(f"{service.upper()}_PASSWORD", raising=False)
    spec = compose["services"][service]
    env = spec["environment"]
    database, broker = make_url(env["DATABASE_URL"]), make_url(env["AMQP_URL"])

    assert spec["command"] == ["python", "-m", service]
    assert spec["build"] == compose["services"]["provision"]["build"] == "."
    assert spec["image"] == compose["services"]["provision"]["image"]
    assert env["HOST"] == "0.0.0.0"
    assert [f"{env['PORT']}:{env['PORT']}"] == spec["ports"]
    assert "/health/ready" in spec["healthcheck"]["test"][-1]
    assert (database.drivername, database.host, database.database) == (
        "postgresql+psycopg",
        "postgres",
        service,
    )
    assert (database.username, database.password) == (service, provision.password(service))
    assert (broker.host, broker.username, broker.password) == (
        "rabbitmq",
        service,
        provision.password(service),
    )
    provision_env = compose["services"]["provision"]["environment"]
    assert provision_env[f"{service.upper()}_PASSWORD"] == provision.password(service)


def test_the_image_is_python_311_slim_and_installs_the_lock_then_the_project() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    lock = re.search(r"^RUN pip install --require-hashes -r requirements\.lock$", dockerfile, re.M)
    project = re.search(r"^RUN pip install --no-deps \.", dockerfile, re.MULTILINE)
    assert lock, "the image installs the runtime lock"
    assert project, "then the project, with no dependencies of its own"
    assert lock.start() < project.start()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".run"} <= set(ignored)
    assert not {"requirements.lock", "*.lock"} & set(ignored)


def test_the_provision_job_migrates_and_gives_the_operator_tools_their_read_only_role(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader is granted the outbox and inbox tables, which exist once migrated."""
    monkeypatch.delenv("SAGA_READER_PASSWORD", raising=False)
    job = compose["services"]["provision"]
    assert job["command"] == ["python", "-m", "tools.provision", "--migrate"]
    assert job["environment"]["SAGA_READER_PASSWORD"] == provision.reader_password()


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_sends_its_traces_to_jaeger_by_the_standard_variables(
    compose: dict[str, Any], service: str
) -> None:
    env = compose["services"][service]["environment"]
    assert env["OTEL_SERVICE_NAME"] == service
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"  # OTLP over HTTP
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    jaeger = compose["services"]["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/jaeger:2.")  # v2: all-in-one, OTLP on
    assert "16686:16686" in jaeger["ports"]


def mounts(spec: dict[str, Any]) -> dict[str, Path]:
    """A container's bind mounts of this checkout: where inside -> which file or folder here."""
    found = {}
    for volume in spec.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def test_prometheus_scrapes_the_four_services_and_the_brokers_queues_as_make_prometheus_does(
    compose: dict[str, Any],
) -> None:
    prometheus = compose["services"]["prometheus"]
    config_file = mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_file.read_text())
    ports = {name: compose["services"][name]["environment"]["PORT"] for name in SERVICES}
    targets = {name: [f"{name}:{port}"] for name, port in ports.items()}
    # The rabbitmq image enables rabbitmq_prometheus (:15692) by default.
    assert config == scrape_config(targets, "rabbitmq:15692")
    assert "9090:9090" in prometheus["ports"]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard_every_panel_of_which_uses_it(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    mounted = mounts(grafana)
    provisioning = mounted["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "order-saga.yaml").read_text())[
        "providers"
    ]
    assert mounted[provider["options"]["path"]] == DEPLOY / "grafana" / "dashboards"
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert DASHBOARDS
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["panels"], path
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
                assert target["expr"].strip(), panel["title"]
