"""A service's manifest: the events it consumes (with their handlers) and the events it emits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from contracts import Event, event_name

#: A handler changes state and stages events in the session it is given; it never commits.
Handler = Callable[[AsyncSession, Any], Awaitable[None]]


@dataclass(frozen=True)
class Manifest:
    """What one service listens to and tells the world; queues and bindings derive from it."""

    service: str
    consumes: Mapping[Any, Handler]  # event class -> handler of that event
    emits: tuple[type[Event], ...]
    #: Emitted events that no service of ours needs to receive (published for whoever wants them).
    #: The broker returning one of these as unroutable is not an error; for every other event it is,
    #: and the relay keeps the row until a queue is bound.
    broadcasts: tuple[type[Event], ...] = ()

    def queue_for(self, event: type[Event]) -> str:
        """The durable queue this service reads `event` from: `<service>.<EventName>`."""
        return f"{self.service}.{event_name(event)}"


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"
