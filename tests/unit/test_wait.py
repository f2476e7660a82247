"""The harness's waits: they return as soon as the condition holds, and say clearly why they gave up."""

import itertools
import time

import pytest

from harness.wait import eventually, eventually_sync, poll, retry


def counter():
    return itertools.count(1).__next__


def test_eventually_sync_returns_the_first_truthy_value():
    calls = counter()
    assert eventually_sync(lambda: (n := calls()) >= 3 and n, timeout=5, interval=0) == 3


async def test_eventually_awaits_async_checks_and_calls_plain_ones():
    calls = counter()

    async def third_time() -> bool:
        return calls() >= 3

    assert await eventually(third_time, timeout=5, interval=0) is True
    assert await eventually(lambda: "plain", timeout=5) == "plain"


def test_at_the_timeout_the_last_assertion_error_is_raised_as_it_was():
    def check():
        assert 1 + 1 == 3, "arithmetic"

    with pytest.raises(AssertionError, match="arithmetic"):
        eventually_sync(check, timeout=0.1, interval=0.01)


def test_at_the_timeout_a_falsy_check_raises_timeout_error_naming_the_last_value():
    with pytest.raises(TimeoutError, match=r"after 0.1s; last value: \[\]"):
        eventually_sync(list, timeout=0.1, interval=0.01)


def test_another_exception_is_raised_at_once_not_waited_out():
    started = time.monotonic()
    with pytest.raises(KeyError):
        eventually_sync(lambda: {}["missing"], timeout=30)
    assert time.monotonic() - started < 1


def test_poll_gives_back_the_last_value_when_the_condition_never_holds():
    calls = counter()
    assert poll(calls, until=lambda n: n > 1000, timeout=0.1, interval=0.01) > 1


def test_retry_tries_again_after_a_listed_exception_and_raises_the_last_at_the_timeout():
    calls = counter()

    def flaky() -> str:
        if calls() < 3:
            raise ConnectionError("not yet")
        return "up"

    assert retry(flaky, on=ConnectionError, timeout=5, interval=0) == "up"
    with pytest.raises(ConnectionError, match="always"):
        retry(lambda: (_ for _ in ()).throw(ConnectionError("always")), on=OSError, timeout=0.1)
