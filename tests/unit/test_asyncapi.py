"""docs/asyncapi.yaml is a valid AsyncAPI 3.0 document, is what the manifests and contracts generate
today, and says what the services and the relay really do."""

from __future__ import annotations

import functools
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from contracts import ALL_EVENTS, Event, encode, event_name
from outbox.manifest import dead_letter_queue
from outbox.relay import Staged, to_message
from outbox.topology import EXCHANGE
from tools import asyncapi

ROOT = Path(__file__).resolve().parents[2]
#: The official schema, from the npm package @asyncapi/specs 6.11.1 (schemas/3.0.0.json), Apache-2.0.
SCHEMA = Path(__file__).parent / "schemas" / "asyncapi-3.0.0.json"


@functools.cache
def read_committed() -> dict[str, Any]:
    return yaml.safe_load(asyncapi.DOCUMENT.read_text())


@pytest.fixture
def committed() -> dict[str, Any]:
    return json.loads(json.dumps(read_committed()))  # a copy each test may change


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]


def test_the_committed_document_follows_the_asyncapi_3_0_schema(committed):
    assert committed["asyncapi"] == "3.0.0"
    assert schema_errors(committed) == []


def test_the_schema_check_refuses_a_broken_document(committed):
    broken = committed
    operation = broken["operations"]["order_service.sends.OrderCreated"]
    operation["action"] = "publish"  # AsyncAPI 2's word
    broken["channels"]["OrderCreated"]["bindings"]["amqp"]["exchange"]["type"] = "fan-out"
    assert len(schema_errors(broken)) == 2


def test_every_reference_in_the_document_resolves(committed):
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(committed):
        assert ref.startswith("#/"), ref
        node = committed
        for part in ref[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            assert key in node, f"{ref} does not resolve"
            node = node[key]


def test_the_committed_document_is_what_the_manifests_and_contracts_generate():
    assert asyncapi.DOCUMENT.read_text() == asyncapi.render(), "run `make asyncapi`"


def test_every_consumed_and_emitted_event_of_every_manifest_is_its_operation(committed):
    channels, operations = committed["channels"], committed["operations"]

    def channel_of(operation: dict[str, Any]) -> dict[str, Any]:
        return channels[operation["channel"]["$ref"].removeprefix("#/channels/")]

    def message_of(operation: dict[str, Any]) -> str:
        [message] = operation["messages"]
        return message["$ref"].rsplit("/", 1)[1]

    expected = set()
    for manifest in asyncapi.MANIFESTS:
        service = manifest.service
        for event in manifest.emits:
            name = event_name(event)
            expected.add(f"{service}.sends.{name}")
            operation = operations[f"{service}.sends.{name}"]
            assert operation["action"] == "send"
            assert message_of(operation) == name
            channel = channel_of(operation)
            assert channel["address"] == name  # the routing key
            binding = channel["bindings"]["amqp"]
            assert binding["is"] == "routingKey"
            assert binding["exchange"]["name"] == EXCHANGE
            assert binding["exchange"]["type"] == "topic"
            assert operation["bindings"]["amqp"]["deliveryMode"] == 2  # persistent
        for event in manifest.consumes:
            name, queue = event_name(event), manifest.queue_for(event)
            expected.add(f"{service}.receives.{name}")
            operation = operations[f"{service}.receives.{name}"]
            assert operation["action"] == "receive"
            assert message_of(operation) == name
            channel = channel_of(operation)
            assert channel["address"] == queue
            binding = channel["bindings"]["amqp"]
            assert binding["is"] == "queue"
            assert binding["queue"]["name"] == queue
            assert binding["x-arguments"]["x-queue-type"] == "quorum"
            assert binding["x-bound-to"] == [{"exchange": EXCHANGE, "routingKey": name}]
            dead = dead_letter_queue(queue)
            assert binding["x-arguments"]["x-dead-letter-routing-key"] == dead
            assert channels[dead]["bindings"]["amqp"]["queue"]["name"] == dead
    assert set(operations) == expected


def an_event(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Any valid event of `cls`, built from its type hints."""
    return st.builds(cls, event_id=st.uuids(), occurred_at=st.datetimes(timezones=st.just(UTC)))


@given(st.sampled_from(ALL_EVENTS).flatmap(an_event), st.none() | st.uuids())
def test_a_message_as_the_relay_sends_it_is_what_the_document_says(event, cause):
    components = read_committed()["components"]
    row = Staged(
        event_id=event.event_id,
        event_type=event_name(event),
        order_id=event.order_id,
        payload=encode(event),
        causation_id=cause,
        traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
        created_at=datetime.now(UTC),
    )
    message = to_message(row, "some_service")
    described = components["messages"][event_name(event)]

    def validate(instance: Any, ref: dict[str, str]) -> None:
        jsonschema.Draft7Validator({**ref, "components": components}).validate(instance)

    validate(msgspec.json.decode(message.body), described["payload"])
    validate(message.headers, described["headers"])
    properties = described["bindings"]["amqp"]["x-properties"]
    assert message.content_type == properties["content_type"] == described["contentType"]
    assert message.delivery_mode.value == properties["delivery_mode"]
    assert message.type == properties["type"] == event_name(event)
    assert properties["message_id"] == "$message.payload#/event_id"
    assert message.message_id == str(event.event_id)
    assert properties["correlation_id"] == described["correlationId"]["location"]
    assert described["correlationId"]["location"] == "$message.payload#/order_id"
    assert message.correlation_id == str(event.order_id)
