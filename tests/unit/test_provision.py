"""The rights `tools.provision` derives from the manifests: each service may publish exactly the
events it emits, bind exactly those it consumes, and touch no other service's queues. (RabbitMQ
reads these as PCRE; for these patterns Python's `re` agrees. The broker's own answers are in
tests/integration/test_least_privilege.py.)"""

from __future__ import annotations

import re

import pytest

from contracts import ALL_EVENTS, event_name
from tools.provision import (
    MANIFESTS,
    amqp_url,
    broker_permissions,
    reader_url,
    topic_permissions,
)

NAMES = [event_name(event) for event in ALL_EVENTS]


def allowed(pattern: str, names: list[str]) -> set[str]:
    return {name for name in names if re.search(pattern, name)}


@pytest.mark.parametrize("service", list(MANIFESTS))
def test_a_service_may_publish_what_it_emits_and_bind_what_it_consumes_nothing_else(
    service: str,
) -> None:
    manifest = MANIFESTS[service]
    rights = topic_permissions(manifest)

    assert rights["exchange"] == "events"
    assert allowed(rights["write"], NAMES) == {event_name(e) for e in manifest.emits}
    assert allowed(rights["read"], NAMES) == {event_name(e) for e in manifest.consumes}
    assert not allowed(rights["write"], ["", "#", f"{NAMES[0]}.x", f"x{NAMES[0]}"])


@pytest.mark.parametrize("service", list(MANIFESTS))
def test_a_service_reaches_the_events_exchange_and_its_own_resources_only(service: str) -> None:
    manifest = MANIFESTS[service]
    own = [manifest.queue_for(e) for e in manifest.consumes]
    own += [f"{queue}.dlq" for queue in own] + [f"{service}.dead-letters"]
    others = [
        MANIFESTS[other].queue_for(event)
        for other in MANIFESTS
        if other != service
        for event in MANIFESTS[other].consumes
    ]

    for pattern in broker_permissions(manifest).values():
        assert allowed(pattern, [*own, "events"]) == {*own, "events"}
        assert allowed(pattern, [*others, "amq.default", "", "amq.topic", service]) == set()


def test_services_reach_the_broker_with_their_own_user_in_their_vhost() -> None:
    assert amqp_url("amqp://guest:guest@10.0.0.1:5673/", "/", "order_service", "p@ss") == (
        "amqp://order_service:p%40ss@10.0.0.1:5673/"
    )
    assert amqp_url("amqp://127.0.0.1/", "test-1", "u", "p") == "amqp://u:p@127.0.0.1/test-1"


def test_operator_tools_reach_a_database_as_the_read_only_role(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SAGA_READER_PASSWORD", raising=False)
    service = "postgresql+psycopg://order_service:secret@db.internal:5433/order_service"
    assert reader_url(service) == (
        "postgresql+psycopg://saga_reader:saga_reader-dev@db.internal:5433/order_service"
    )
    monkeypatch.setenv("SAGA_READER_PASSWORD", "p@ss")
    assert reader_url("postgresql://postgres@127.0.0.1/t_1_inventory_service") == (
        "postgresql://saga_reader:p%40ss@127.0.0.1/t_1_inventory_service"
    )
