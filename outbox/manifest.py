"""A service's manifest: the events it consumes (with their handlers) and the events it emits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from contracts import Event, event_name
from outbox.unit import Unit

#: A handler applies one event to the rows its unit loaded and emits what follows from it; it
#: never touches the database, and never commits: the consumer does, for the whole batch.
Handler = Callable[..., None]


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
    #: What the handlers work on: loaded for a batch of deliveries, saved before it commits.
    unit: type[Unit] = Unit

    def queue_for(self, event: type[Event]) -> str:
        """The durable queue this service reads `event` from: `<service>.<EventName>`."""
        return f"{self.service}.{event_name(event)}"


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"
