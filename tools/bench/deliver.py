"""What one handler transaction costs the service's own process: `python -m tools.bench.deliver`.

Inventory's two deliveries of a completed saga (OrderCreated: reserve; PaymentSucceeded: commit
the stock), handed to `outbox.consumer.deliver` in batches of 1, 8 and 64 on a throwaway database,
with no broker: what is measured is the process's CPU per delivery (inbox claim, the unit's loads,
the handlers, the writes, the outbox rows, the commit: psycopg, SQLAlchemy's session and our
code), the part of a saga that batching and the statements' shape decide. PostgreSQL's own CPU is
not in it (`make bench` measures that). Compare two versions of the code in two checkouts,
interleaved (A B A B): docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence

import uvloop

from contracts import Item, OrderCreated, PaymentSucceeded
from harness.databases import create_database, drop_database, migrate
from harness.servers import provide_servers
from inventory_service.messaging import MANIFEST
from inventory_service.models import Product
from inventory_service.settings import Settings
from outbox import Messaging
from outbox.consumer import deliver
from outbox.inbox import Delivery
from outbox.unit import begin

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
        await deliver(messaging.sessionmaker, MANIFEST, [created for created, _ in chunk])
        await deliver(messaging.sessionmaker, MANIFEST, [paid for _, paid in chunk])
    return (time.process_time() - started) / (2 * sagas) * 1000


async def measure(database_url: str, sagas: int, batches: Sequence[int], rounds: int) -> None:
    await migrate("inventory_service", database_url)
    messaging = Messaging(MANIFEST, Settings(database_url=database_url, db_pool_size=2))
    messaging.relay.hand_over = lambda staged: None  # type: ignore[method-assign]  # no broker
    try:
        async with begin(messaging.sessionmaker) as session:
            for number in range(SKUS):
                sku = f"sku-{number}"
                session.add(Product(sku=sku, name=sku, price_cents=100, on_hand=10**9, reserved=0))
        await cpu_ms_per_delivery(messaging, 50, 1)  # warm up: connections, prepared statements
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
        await messaging.engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.deliver", description=__doc__)
    parser.add_argument("--sagas", type=int, default=256, help="sagas per round (256)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (1, 8, 64)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with provide_servers() as servers:
        url = create_database(servers.postgres_admin_url, "bench_deliver")
        try:
            uvloop.run(measure(url, args.sagas, args.batch or [1, 8, 64], args.rounds))
        finally:
            drop_database(servers.postgres_admin_url, url, patience=10)


if __name__ == "__main__":
    main()
