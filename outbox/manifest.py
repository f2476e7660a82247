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
    consumes: Mapping[type[Event], Handler]
    emits: tuple[type[Event], ...]

    def queue_for(self, event: type[Event]) -> str:
        """The durable queue this service reads `event` from: `<service>.<EventName>`."""
        return f"{self.service}.{event_name(event)}"


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"
