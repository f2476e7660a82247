"""Settings of the messaging runtime; `web.ServiceSettings` adds those of a service's process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Self

import msgspec


def local_database_url(database: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"


class MessagingSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Configuration of one service's messaging. Read once, from the environment, by `from_env`.

    Each field is set by the environment variable of its upper-cased name (`DATABASE_URL`, `AMQP_URL`, …).
    """

    service: str
    database_url: str
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    exchange: str = "events"
    #: Database connections the process keeps open (no overflow: none opened under load).
    db_pool_size: int = 10
    #: Unacked messages the broker hands each queue's consumer ahead.
    prefetch: int = 64
    #: Tasks taking batches of ready deliveries, each batch one transaction.
    consumer_workers: int = 2
    #: Most deliveries in one transaction.
    consumer_max_batch: int = 64
    #: Most consumer transactions at once (batches, and deliveries retried on their own): the
    #: consumer's own pool of that many connections (at most `db_pool_size` - 2); the rest of
    #: `db_pool_size` is the engine's, for HTTP requests, the relay and the sweeps.
    consumer_concurrency: int = 4
    relay_batch_size: int = 256
    relay_sweep_interval_s: float = 1.0
    #: A sweep leaves alone unpublished rows younger than this: a hand-over may be publishing them
    #: (this replica's or another's). Catching up (at start, after a failure) it takes them all.
    relay_grace_s: float = 5.0
    #: Confirmed hand-overs are marked published this long after their publish, many in one
    #: statement; at most a quarter of the grace (the relay shortens it to that), so that no
    #: sweep takes them meanwhile. Short, a quiet service marks each event in a transaction of
    #: its own (at 0.05 s, 2.6 of a saga's 10.6 transactions at 20 orders/s; at 0.5 s, 0.9).
    relay_mark_interval_s: float = 0.5
    #: Readiness fails while the oldest unpublished outbox row is older than this, though the
    #: database and the broker answer: the relay is stuck (an event nobody may receive, say).
    relay_stuck_after_s: float = 30.0
    #: Attempts at a message whose handler raises, with backoff of 0.05 s doubling up to 5 s: 16 keep
    #: retrying for about 45 s, so that a database restart is waited out rather than dead-lettered.
    handler_max_attempts: int = 16
    retention_s: float = 7 * 24 * 3600.0
    purge_interval_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Defaults, overridden by the environment, overridden by keyword arguments."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            if field.name.upper() in env:
                values[field.name] = env[field.name.upper()]
        values.update(overrides)
        return msgspec.convert(values, cls, strict=False)
