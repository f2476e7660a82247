"""Where a saga's latency goes, hop by hop, read from the services' outbox and inbox tables.

An outbox row's `created_at` is when its event was staged (just before its transaction commits);
an inbox row's `handled_at` is when a consumer began handling a message (its transaction's first
statement). For a completed saga the hops below add up exactly to the latency the benchmark saw,
from sending `POST /orders` to its consumer receiving OrderCompleted:

    POST sent → OrderCreated staged → inventory handles it → StockReserved staged → payment
    handles it → PaymentSucceeded staged → inventory handles it → StockCommitted staged → order
    handles it → OrderCompleted staged → the benchmark's consumer has it

A "staged → handled" hop is the commit, the relay (claim, publish, confirm) and the broker's
delivery; a "handles" hop is the handler's transaction up to its last insert.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg

from tools.postgres import libpq
from tools.provision import reader_url

HOPS = (
    "POST sent → OrderCreated staged",
    "OrderCreated staged → inventory handles",
    "inventory reserves stock",
    "StockReserved staged → payment handles",
    "payment charges",
    "PaymentSucceeded staged → inventory handles",
    "inventory commits stock",
    "StockCommitted staged → order handles",
    "order completes",
    "OrderCompleted staged → bench consumer",
)


def _rows(url: str, query: str, ids: list[str]) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq(reader_url(url))) as connection:
        return connection.execute(query, [ids]).fetchall()


def _epoch(value: datetime) -> float:
    return value.timestamp()


def hop_times(
    databases: dict[str, str], sagas: Iterable[tuple[str, float, float]]
) -> dict[str, list[float]]:
    """Milliseconds of each hop of each completed saga, given (order id, sent, received) in epoch
    seconds; sagas missing a row (cancelled ones) are left out."""
    sagas = list(sagas)
    ids = [order_id for order_id, _, _ in sagas]
    staged: dict[tuple[str, str], float] = {}  # (order, event) -> created_at
    handled: dict[tuple[str, str, str], float] = {}  # (order, service, event) -> handled_at
    for service, url in databases.items():
        for order_id, event, created in _rows(
            url,
            "SELECT order_id::text, event_type, created_at FROM outbox WHERE order_id::text = ANY(%s)",
            ids,
        ):
            staged[(order_id, event)] = _epoch(created)
        for order_id, event, at in _rows(
            url,
            "SELECT order_id::text, event_type, handled_at FROM inbox WHERE order_id::text = ANY(%s)",
            ids,
        ):
            handled[(order_id, service, event)] = _epoch(at)
    times: dict[str, list[float]] = defaultdict(list)
    for order_id, sent, received in sagas:
        try:
            points = [
                sent,
                staged[(order_id, "OrderCreated")],
                handled[(order_id, "inventory_service", "OrderCreated")],
                staged[(order_id, "StockReserved")],
                handled[(order_id, "payment_service", "StockReserved")],
                staged[(order_id, "PaymentSucceeded")],
                handled[(order_id, "inventory_service", "PaymentSucceeded")],
                staged[(order_id, "StockCommitted")],
                handled[(order_id, "order_service", "StockCommitted")],
                staged[(order_id, "OrderCompleted")],
                received,
            ]
        except KeyError:
            continue
        for name, start, end in zip(HOPS, points, points[1:], strict=False):
            times[name].append((end - start) * 1000)
    return dict(times)
