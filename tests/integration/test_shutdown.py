"""A service's messaging stops whatever it interrupts, against real PostgreSQL and RabbitMQ: the
relay woken by a commit in the same turn of the loop as the stop.

On Python 3.11, `asyncio.wait_for` returns the result and drops the cancellation when both come in
the same turn (cpython gh-86296, fixed in 3.12). A task whose cancellation is dropped goes on as if
never cancelled, and `Messaging.stop`, which waits for its tasks, waits forever: an app's shutdown
hung so once, in a test's teardown on four workers, with sagas in flight."""

from __future__ import annotations

import asyncio

from contracts import OrderCreated
from tests.support import probe


async def test_the_stop_ends_a_relay_woken_by_a_commit_in_the_same_turn(
    start_service, probe_database
) -> None:
    # A sweep a minute away: once caught up, the relay waits for a hand-over, nothing else.
    service = await start_service(
        probe.manifest({OrderCreated: probe.record_effect}),
        probe.Settings,
        database_url=probe_database,
        relay_sweep_interval_s=60.0,
    )
    service.relay.hand_over([])  # as a consumer's commit does, right before the stop
    async with asyncio.timeout(10):
        await service.stop()
