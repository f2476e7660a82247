"""The delivery audit: every event a service published was handled by every queue bound to it,
exactly once, as the outboxes and inboxes of the services' own databases record it.

The invariants seen through the HTTP APIs cannot tell a lost message from a slow one once the
order deadline has cancelled the order; the outboxes and inboxes can. Needs the rows to be there:
run it before the retention window has passed.
"""

from __future__ import annotations

from collections import defaultdict

import psycopg

from contracts import event_name
from inventory_service.messaging import MANIFEST as INVENTORY
from notification_service.messaging import MANIFEST as NOTIFICATION
from order_service.messaging import MANIFEST as ORDER
from payment_service.messaging import MANIFEST as PAYMENT
from tools.postgres import libpq
from tools.provision import reader_url

MANIFESTS = (ORDER, INVENTORY, PAYMENT, NOTIFICATION)


def _rows(database_url: str, query: str) -> list[tuple]:
    with psycopg.connect(libpq(reader_url(database_url))) as connection:
        return connection.execute(query).fetchall()


def audit_deliveries(database_urls: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """Per event, how many were published; and every event a consumer never handled, or handled
    without anyone having published it (keyed by service name as in `database_urls`)."""
    published: dict[str, set[str]] = defaultdict(set)
    for manifest in MANIFESTS:
        for event_type, event_id, published_at in _rows(
            database_urls[manifest.service],
            "SELECT event_type, event_id::text, published_at FROM outbox",
        ):
            published[event_type].add(event_id)
            if published_at is None:
                published[event_type].discard(event_id)  # the checker reports it unpublished
    problems: list[str] = []
    for manifest in MANIFESTS:
        handled: dict[str, set[str]] = defaultdict(set)
        for consumer, message_id in _rows(
            database_urls[manifest.service], "SELECT consumer, message_id::text FROM inbox"
        ):
            handled[consumer].add(message_id)
        for event in manifest.consumes:
            queue = manifest.queue_for(event)
            sent = published[event_name(event)]
            problems += [
                f"{queue} never handled {event_name(event)} {i}" for i in sent - handled[queue]
            ]
            problems += [
                f"{queue} handled {event_name(event)} {i}, never published"
                for i in handled[queue] - sent
            ]
    return {event: len(ids) for event, ids in sorted(published.items())}, problems
