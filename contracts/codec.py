"""JSON encoding of events, and strict decoding of what arrives from the broker."""

from __future__ import annotations

from typing import Union

import msgspec

from contracts.events import ALL_EVENTS, Event

#: Version of the message format, sent in every message's `schema_version` header. A consumer
#: refuses a version it does not know; additive changes to events do not change it.
SCHEMA_VERSION = 1

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Union[ALL_EVENTS])  # noqa: UP007
_by_name = {cls.__name__: cls for cls in ALL_EVENTS}


class DecodeError(ValueError):
    """A message is not a valid event: bad JSON, an unknown event, a missing or mistyped field."""


def encode(event: Event) -> bytes:
    """The event as JSON, including its `event` tag, `event_id` and `occurred_at`."""
    return _encoder.encode(event)


def decode(body: bytes, name: str | None = None) -> Event:
    """Decode a message body; `name` (the routing key or AMQP type) must agree with the body's tag.

    Unknown fields are ignored, so that producers can add fields before consumers know them.
    """
    if name is not None and name not in _by_name:
        raise DecodeError(f"unknown event {name!r}")
    try:
        event = _decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise DecodeError(str(exc)) from exc
    if name is not None and type(event).__name__ != name:
        raise DecodeError(f"body is a {type(event).__name__}, message says {name}")
    return event
