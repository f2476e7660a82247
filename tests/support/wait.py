"""Waiting for a condition instead of sleeping: poll until it holds, fail clearly when it never does."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _timed_out(timeout: float, last: Any) -> TimeoutError:
    return TimeoutError(f"condition still not met after {timeout}s; last value: {last!r}")


async def eventually(
    check: Callable[[], T | Awaitable[T]], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Call `check` (sync or async) until it returns something truthy without an AssertionError.

    Returns that value; a check that only asserts must end with `return True`. At the timeout,
    re-raises the last AssertionError if the last call raised one, else raises TimeoutError
    naming the last value returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        failure: AssertionError | None = None
        value: Any = None
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError as exc:
            failure = exc
        else:
            if value:
                return value  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            if failure is not None:
                raise failure
            raise _timed_out(timeout, value)
        await asyncio.sleep(interval)


def eventually_sync(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """`eventually` for code without an event loop: `check` is a plain function."""
    deadline = time.monotonic() + timeout
    while True:
        failure: AssertionError | None = None
        value: Any = None
        try:
            value = check()
        except AssertionError as exc:
            failure = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            if failure is not None:
                raise failure
            raise _timed_out(timeout, value)
        time.sleep(interval)
