"""What one handler transaction costs the service's own process: `python -m tools.bench.deliver`.

Inventory's two deliveries of a completed saga (OrderCreated: reserve; PaymentSucceeded: commit
the stock), handed to `outbox.consumer.deliver` in batches of 1, 8 and 64 on a throwaway database,
with no broker: what is measured is the process's CPU per delivery (inbox claim, the unit's loads,
the handlers, the writes, the outbox rows, the commit: psycopg, its pool and our code), the
part of a saga that batching and the statements' shape decide. PostgreSQL's own CPU is not in
it (`make bench` measures that). Compare two versions of the code in two checkouts, interleaved
(A B A B): docs/performance.md has the figures.

`--raw` adds, in the same process and in turn with `deliver`, the same transactions with no
application code: the same SQL (the inbox claim, the two locking loads, the two upserts, the
outbox insert and `COMMIT`, in the same two pipelines), the same kind of parameters, on one plain
psycopg connection with no pool, no units, no models: what is left of a delivery's cost once
everything above psycopg is gone.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import uvloop
from psycopg.rows import dict_row
from sqlalchemy.engine import make_url

from contracts import Item, OrderCreated, PaymentSucceeded
from harness.databases import create_database, drop_database, migrate
from harness.servers import provide_servers
from inventory_service.messaging import MANIFEST
from inventory_service.models import Product, Reservation
from inventory_service.settings import Settings
from inventory_service.store import _LOCK_PRODUCTS, _LOCK_RESERVATIONS
from outbox import Messaging
from outbox.consumer import deliver
from outbox.inbox import _CLAIM, Delivery
from outbox.transaction import BulkInsert
from outbox.writer import _INSERT

SKUS = 50


def a_saga(number: int) -> tuple[Delivery, Delivery]:
    """The two deliveries inventory gets in a saga that completes."""
    order_id = uuid.uuid4()
    items = (Item(sku=f"sku-{number % SKUS}", quantity=1),)
    created = OrderCreated(order_id=order_id, customer_id="ann", items=items)
    paid = PaymentSucceeded(
        order_id=order_id, customer_id="ann", amount_cents=100, payment_id=uuid.uuid4()
    )
    return (
        Delivery(MANIFEST.queue_for(OrderCreated), created, "order_service"),
        Delivery(MANIFEST.queue_for(PaymentSucceeded), paid, "payment_service"),
    )


async def cpu_ms_per_delivery(messaging: Messaging, sagas: int, batch: int) -> float:
    """Deliver `sagas` sagas' deliveries, `batch` at a time (all the OrderCreated of a batch of
    sagas, then their PaymentSucceeded); the process's CPU per delivery, in ms."""
    pairs = [a_saga(number) for number in range(sagas)]
    started = time.process_time()
    for first in range(0, sagas, batch):
        chunk = pairs[first : first + batch]
        await deliver(messaging.pool, MANIFEST, [created for created, _ in chunk])
        await deliver(messaging.pool, MANIFEST, [paid for _, paid in chunk])
    return (time.process_time() - started) / (2 * sagas) * 1000


_RESERVATIONS = BulkInsert.upsert(Reservation.__table__)  # type: ignore[arg-type]
_PRODUCTS = BulkInsert.upsert(Product.__table__)  # type: ignore[arg-type]


async def _raw_transaction(
    pg: psycopg.AsyncConnection[Any], delivery: Delivery, reservation: dict[str, Any]
) -> None:
    """One delivery's statements, as `deliver` sends them for a batch of one, by hand."""
    event = delivery.event
    now = datetime.now(UTC)
    async with pg.pipeline():
        cursors = [pg.cursor(row_factory=dict_row) for _ in range(3)]
        claim = {
            "consumer": delivery.consumer,
            "message_id": event.event_id,
            "event_type": type(event).__name__,
            "order_id": event.order_id,
            "emitted_by": delivery.emitted_by,
        }
        await cursors[0].execute(_CLAIM.sql, _CLAIM.params([claim]))
        await cursors[1].execute(_LOCK_RESERVATIONS, {"ids": [event.order_id]})
        found = await cursors[1].fetchall()
        sku = reservation["items"][0]["sku"]
        await cursors[2].execute(_LOCK_PRODUCTS, {"skus": [sku]})
        [product] = await cursors[2].fetchall()
        await cursors[0].fetchall()
        for cursor in cursors:
            await cursor.close()
        product["reserved"] += 1
        row = found[0] if found else {**reservation, "order_id": event.order_id}
        row["updated_at"] = now
        await pg.execute(_RESERVATIONS.sql, _RESERVATIONS.params([row]))
        await pg.execute(_PRODUCTS.sql, _PRODUCTS.params([product]))
        staged = {
            "event_id": uuid.uuid4(),
            "event_type": "StockReserved",
            "order_id": event.order_id,
            "payload": b'{"order_id": "..."}',
            "causation_id": event.event_id,
            "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
            "created_at": now,
        }
        await pg.execute(_INSERT.sql, _INSERT.params([staged]))
        await pg.commit()


async def raw_cpu_ms_per_delivery(
    pg: psycopg.AsyncConnection[Any], sagas: int, reservation: dict[str, Any]
) -> float:
    """The same deliveries as `cpu_ms_per_delivery` with a batch of one, as raw transactions."""
    pairs = [a_saga(number) for number in range(sagas)]
    started = time.process_time()
    for created, paid in pairs:
        await _raw_transaction(pg, created, reservation)
        await _raw_transaction(pg, paid, reservation)
    return (time.process_time() - started) / (2 * sagas) * 1000


async def measure_raw(messaging: Messaging, database_url: str, sagas: int, rounds: int) -> None:
    """`deliver` with a batch of one and the raw transactions, in turn, `rounds` times."""
    libpq = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    async with await psycopg.AsyncConnection.connect(libpq) as pg:
        rows = await (
            await pg.cursor(row_factory=dict_row).execute("SELECT * FROM reservations LIMIT 1")
        ).fetchall()
        await pg.commit()
        reservation = rows[0]
        await raw_cpu_ms_per_delivery(pg, 50, reservation)  # warm up
        figures: dict[str, list[float]] = {"deliver": [], "raw": []}
        for _ in range(rounds):
            figures["deliver"].append(await cpu_ms_per_delivery(messaging, sagas, 1))
            figures["raw"].append(await raw_cpu_ms_per_delivery(pg, sagas, reservation))
    for name, found in figures.items():
        print(
            f"{name:>7}, batch 1: {min(found):.3f} ms of CPU per delivery (best of {rounds};"
            f" all: {', '.join(f'{f:.3f}' for f in found)})"
        )


async def measure(
    database_url: str, sagas: int, batches: Sequence[int], rounds: int, raw: bool = False
) -> None:
    await migrate("inventory_service", database_url)
    messaging = Messaging(MANIFEST, Settings(database_url=database_url, db_pool_size=2))
    messaging.relay.hand_over = lambda staged: None  # type: ignore[method-assign]  # no broker
    try:
        async with messaging.sessionmaker.begin() as session:
            for number in range(SKUS):
                sku = f"sku-{number}"
                session.add(Product(sku=sku, name=sku, price_cents=100, on_hand=10**9, reserved=0))
        await cpu_ms_per_delivery(messaging, 50, 1)  # warm up: connections, prepared statements
        if raw:
            await measure_raw(messaging, database_url, sagas, rounds)
            return
        results: dict[int, list[float]] = {batch: [] for batch in batches}
        for _ in range(rounds):
            for batch in batches:
                results[batch].append(await cpu_ms_per_delivery(messaging, sagas, batch))
        for batch, figures in results.items():
            best = min(figures)
            print(
                f"batch {batch:>3}: {best:.3f} ms of CPU per delivery (best of {rounds};"
                f" all: {', '.join(f'{f:.3f}' for f in figures)})"
            )
    finally:
        await messaging.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.deliver", description=__doc__)
    parser.add_argument("--sagas", type=int, default=256, help="sagas per round (256)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (1, 8, 64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--raw", action="store_true", help="batch of 1 against the same statements on plain psycopg"
    )
    args = parser.parse_args(argv)
    with provide_servers() as servers:
        url = create_database(servers.postgres_admin_url, "bench_deliver")
        try:
            uvloop.run(measure(url, args.sagas, args.batch or [1, 8, 64], args.rounds, args.raw))
        finally:
            drop_database(servers.postgres_admin_url, url, patience=10)


if __name__ == "__main__":
    main()
