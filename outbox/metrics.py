"""Prometheus metrics of the messaging runtime, served at `/metrics` by every service."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

#: What `saga_messages_handled_total` counts each consumed message as.
OUTCOMES = ("handled", "duplicate", "retried", "dead_lettered", "poison")

HANDLED = Counter(
    "saga_messages_handled_total",
    "Messages consumed, by event and outcome (handled, duplicate, retried, dead_lettered, poison).",
    ["event", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "saga_handler_seconds",
    "Time from delivery to commit of a handler's transaction.",
    ["event"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PUBLISHED = Counter("saga_outbox_published_total", "Outbox rows confirmed by the broker.")
UNROUTED = Counter(
    "saga_outbox_unrouted_total",
    "Broadcast events the broker returned because no queue is bound to them.",
    ["event"],
)
OUTBOX_DWELL = Histogram(
    "saga_outbox_dwell_seconds",
    "Time from an outbox row's insert to the broker's confirm.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OUTBOX_BACKLOG = Gauge("saga_outbox_backlog", "Outbox rows not yet published (read at scrape).")
OUTBOX_OLDEST_AGE = Gauge(
    "saga_outbox_oldest_unpublished_seconds", "Age of the oldest unpublished outbox row."
)
DEAD_LETTER_DEPTH = Gauge(
    "saga_dead_letter_depth", "Messages waiting in this service's dead-letter queues.", ["queue"]
)
BATCH_SIZE = Histogram(
    "saga_consumer_batch_size",
    "Deliveries handled per consumer transaction (each batch commits once).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCHES_SPLIT = Counter(
    "saga_consumer_batches_split_total",
    "Batches whose transaction failed and were handled again one delivery at a time.",
)


def expect(consumed: Iterable[str], dead_letter_queues: Iterable[str]) -> None:
    """Create the series of a service's consumed events and its dead-letter queues at 0, so that
    a dashboard's queries return data (a rate of 0) before the first retry or dead letter rather
    than nothing at all."""
    for name in consumed:
        for outcome in OUTCOMES:
            HANDLED.labels(name, outcome)
        HANDLER_SECONDS.labels(name)
    for queue in dead_letter_queues:
        DEAD_LETTER_DEPTH.labels(queue)
