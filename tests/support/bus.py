"""A simulated bus: the services' real handlers and databases, with no broker in between.

After each step the bus reads the new outbox rows of every service whose commit staged events
and marks them published, as its relay would. Each event becomes a pending delivery for every
service that consumes it, once or more (a re-published or redelivered copy carries the same event
id). Each copy gets a priority from the caller, and the pending copy of highest priority goes next
(the oldest among equals), so events arrive in any order, more than once, some of them long after
they were sent. Deliveries go through `outbox.consumer.deliver`, one or several to a service in
one transaction (a batch: inbox claims, the handlers in turn, outgoing events), exactly as the
real consumer runs them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from contracts import Event, decode, event_name
from outbox import Manifest, inbox
from outbox.consumer import deliver
from outbox.tables import OutboxMessage
from outbox.transaction import Pool
from outbox.writer import OutboxSession, session_info

E = TypeVar("E", bound=Event)


class Service:
    """One service as the bus sees it: what it consumes and emits, and sessions on its database,
    built like `outbox.Messaging` builds them. A commit that staged events wakes the service, as
    it would wake its relay."""

    def __init__(
        self, manifest: Manifest, engine: AsyncEngine, connect_args: Mapping[str, Any]
    ) -> None:
        self.manifest = manifest
        self.woken = False
        self.pool = Pool(
            engine.url.render_as_string(hide_password=False),
            2,
            self._wake,
            manifest.emits,
            connect_args=connect_args,
        )
        self.sessionmaker = async_sessionmaker(
            engine,
            expire_on_commit=False,
            sync_session_class=OutboxSession,
            info=session_info(self._wake, manifest.emits),
        )

    @property
    def name(self) -> str:
        return self.manifest.service

    def _wake(self, rows: object) -> None:
        self.woken = True


@dataclass(frozen=True)
class Delivery:
    """One copy of an event on its way to one consumer (a queue: `<service>.<Event>`)."""

    service: Service
    event: Event
    emitted_by: str
    copy: int = 0
    priority: int = 0

    @property
    def consumer(self) -> str:
        return self.service.manifest.queue_for(type(self.event))

    def __str__(self) -> str:
        copy = f" (copy {self.copy + 1})" if self.copy else ""
        return f"{event_name(self.event)} {str(self.event.event_id)[:8]} -> {self.consumer}{copy}"


class Bus:
    """The events of one order travelling between `services`, one delivery at a time.

    `schedule(delivery)` gives the priorities of the copies of each new delivery to queue: one
    priority for a single copy, more for duplicates. The bus remembers what was emitted and which
    deliveries ran their handler.
    """

    def __init__(
        self,
        services: Iterable[Service],
        order_id: uuid.UUID,
        schedule: Callable[[Delivery], Sequence[int]] = lambda _: (0,),
    ) -> None:
        self.services = {service.name: service for service in services}
        self.order_id = order_id
        self._schedule = schedule
        self.pending: list[Delivery] = []
        #: (emitting service, event), in the order the bus picked them up.
        self.emitted: list[tuple[str, Event]] = []
        #: (consumer, event_id) -> how many of its deliveries ran the handler (were not duplicates).
        self.handled: Counter[tuple[str, uuid.UUID]] = Counter()
        #: What happened, in order: "emitted <Event>" and "handled <consumer>" (duplicates left out).
        self.journal: list[str] = []
        self.delivered = 0

    async def relay(self) -> None:
        """Publish the events of every service woken by a commit since its last publish."""
        for service in self.services.values():
            if service.woken:
                await self.publish(service)

    async def publish(self, service: Service) -> list[Event]:
        """Take `service`'s unpublished outbox rows for the order, mark them published, queue them."""
        service.woken = False
        async with service.sessionmaker() as session, session.begin():
            rows = (
                await session.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.order_id == self.order_id,
                        OutboxMessage.published_at.is_(None),
                    )
                    .values(published_at=func.now())
                    .returning(OutboxMessage.id, OutboxMessage.event_type, OutboxMessage.payload)
                )
            ).all()
        events = [decode(row.payload, row.event_type) for row in sorted(rows, key=lambda r: r.id)]
        for event in events:
            self.emitted.append((service.name, event))
            self.journal.append(f"emitted {event_name(event)}")
            for consumer in self.services.values():
                if type(event) not in consumer.manifest.consumes:
                    continue
                delivery = Delivery(consumer, event, service.name)
                for copy, priority in enumerate(self._schedule(delivery)):
                    self.pending.append(replace(delivery, copy=copy, priority=priority))
        return events

    async def deliver_next(self, together: int = 0) -> list[tuple[Delivery, bool]]:
        """Perform the pending delivery of highest priority, in one transaction with up to
        `together` more pending deliveries to the same service (the next ones by priority), as
        a consumer batches what is ready; then publish what the handlers emitted.

        Returns each delivery and whether its handler ran (False: a duplicate, skipped by the inbox).
        """
        batch = [self._take(lambda _: True)]
        service = batch[0].service
        for _ in range(together):
            if not any(d.service is service for d in self.pending):
                break
            batch.append(self._take(lambda d: d.service is service))
        ran = await deliver(
            service.pool,
            service.manifest,
            [inbox.Delivery(d.consumer, d.event, d.emitted_by) for d in batch],
        )
        self.delivered += len(batch)
        for delivery, new in zip(batch, ran, strict=True):
            if new:
                self.handled[delivery.consumer, delivery.event.event_id] += 1
                self.journal.append(f"handled {delivery.consumer}")
        await self.relay()
        return list(zip(batch, ran, strict=True))

    def _take(self, which: Callable[[Delivery], bool]) -> Delivery:
        """The pending delivery of highest priority among `which` (the oldest among equals)."""
        candidates = [i for i, delivery in enumerate(self.pending) if which(delivery)]
        first = max(candidates, key=lambda i: (self.pending[i].priority, -i))
        return self.pending.pop(first)

    def expected_deliveries(self) -> set[tuple[str, uuid.UUID]]:
        """(consumer, event_id) of every emitted event for every service that consumes it."""
        return {
            (service.manifest.queue_for(type(event)), event.event_id)
            for _, event in self.emitted
            for service in self.services.values()
            if type(event) in service.manifest.consumes
        }

    def happened_before(self, first: str, then: str) -> bool:
        """Both are in the journal, `first` before `then`: `"handled <consumer>"`, `"emitted <Event>"`."""
        return first in self.journal and then in self.journal[self.journal.index(first) :]

    def events_of(self, kind: type[E]) -> list[E]:
        """The events of this kind emitted so far, in order."""
        return [event for _, event in self.emitted if isinstance(event, kind)]
