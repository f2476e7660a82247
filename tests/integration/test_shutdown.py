"""A service's messaging stops whatever it interrupts, against real PostgreSQL and RabbitMQ: the
relay woken by a commit in the same turn of the loop as the stop, and the broker connection while
it is being made.

On Python 3.11, `asyncio.wait_for` returns the result and drops the cancellation when both come in
the same turn (cpython gh-86296, fixed in 3.12). A task whose cancellation is dropped goes on as if
never cancelled, and `Messaging.stop`, which waits for its tasks, waits forever: an app's shutdown
hung so once, in a test's teardown on four workers, with sagas in flight."""

from __future__ import annotations

import asyncio
import threading

import pytest

from contracts import OrderCreated
from harness.wait import eventually
from outbox import Messaging, runtime
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


@pytest.mark.parametrize("after_s", [0.0, 0.003], ids=["at-once", "while-connecting"])
async def test_a_service_stopped_while_it_connects_leaves_nothing_running(
    start_service, probe_database, after_s
) -> None:
    """A stop that comes while the broker connection is being made (a process told to stop as it
    starts) lets the attempt end and closes what it made: nothing of the service is left on the
    loop. Cancelled halfway, aio-pika's reconnection task would go on connecting, leave the
    connection's reader, writer and heartbeat running, and ignore being cancelled again at exit."""
    before = asyncio.all_tasks()
    service = await start_service(
        probe.manifest({OrderCreated: probe.record_effect}),
        probe.Settings,
        database_url=probe_database,
        settled=False,
    )
    await asyncio.sleep(after_s)  # when the stop comes: a moment of the start, not a condition

    async with asyncio.timeout(10):
        await service.stop()

    assert [task for task in asyncio.all_tasks() - before if not task.done()] == []


async def test_a_loop_that_stopped_a_service_while_its_broker_did_not_answer_finishes(
    probe_database, monkeypatch
) -> None:
    """A broker that takes the connection and never answers (a frozen node; here a listener that
    reads nothing): the stop waits for the attempt no longer than the grace, then ends it, and
    the loop that ran the service finishes. Left running, the connection's reconnection task
    would retry for good and ignore the loop's last cancel: the loop, in a thread of its own
    here, would never finish."""
    monkeypatch.setattr(runtime, "_CONNECT_GRACE_S", 0.5)

    async def start_and_stop() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def answer_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)

        async with await asyncio.start_server(answer_nothing, "127.0.0.1", 0) as silent:
            port = silent.sockets[0].getsockname()[1]
            service = Messaging(
                probe.manifest({OrderCreated: probe.record_effect}),
                probe.Settings(database_url=probe_database, amqp_url=f"amqp://127.0.0.1:{port}/"),
            )
            await service.start()
            await eventually(lambda: accepted)  # waiting for the broker's greeting
            async with asyncio.timeout(5):
                await service.stop()
            for writer in accepted:
                writer.close()

    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(start_and_stop())
        except BaseException as exc:
            failed.append(exc)

    loop_thread = threading.Thread(target=run, daemon=True)
    loop_thread.start()
    await asyncio.to_thread(loop_thread.join, 20)
    assert not loop_thread.is_alive(), "the loop never finished: a task ignores being cancelled"
    assert failed == []
