"""Reading an event off the wire: what makes a message poison, decided once for consumers and tools."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contracts import SCHEMA_VERSION, DecodeError, Event, decode, event_name

#: Largest message body a consumer accepts; anything bigger is poison, not an event.
MAX_BODY_BYTES = 256 * 1024


class PoisonMessage(Exception):
    """A message that can never be handled, whatever the number of attempts: dead-letter it now.

    Raised by `parse_event` for undecodable messages, and by handlers for events that make no sense
    (an event for an order this service never heard of)."""


def parse_event(
    body: bytes,
    *,
    headers: Mapping[str, Any] | None,
    name: str | None,
    expected: type[Event] | None = None,
) -> Event:
    """The event a message carries, or `PoisonMessage` saying why there is none.

    `name` is the event the message says it is (its AMQP type, else its routing key); `expected`,
    the event of the queue it was read from, if it matters.
    """
    if len(body) > MAX_BODY_BYTES:
        raise PoisonMessage(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    version = (headers or {}).get("schema_version", SCHEMA_VERSION)
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 1 <= version <= SCHEMA_VERSION
    ):
        raise PoisonMessage(f"unknown schema_version {version!r}")
    name = name or ""
    if expected is not None and name != event_name(expected):
        raise PoisonMessage(f"a {name!r} message in the {event_name(expected)} queue")
    try:
        return decode(body, name)
    except DecodeError as exc:
        raise PoisonMessage(str(exc)) from exc
