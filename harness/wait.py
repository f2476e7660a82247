"""Waiting for a condition instead of sleeping: poll until it holds, give up clearly when it never does.

Every wait of the tests and the tools goes through these four, built on tenacity:

- `eventually(check)` / `eventually_sync(check)`: until `check()` returns something truthy (an
  AssertionError counts as "not yet"); at the timeout, the last AssertionError or a TimeoutError.
- `poll(read, until)`: until `until(read())`; at the timeout, the last value read.
- `retry(attempt, on=...)`: until `attempt()` no longer raises one of `on`; at the timeout, the last.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

T = TypeVar("T")


def _give_up(timeout: float, state: RetryCallState) -> Any:
    """At the timeout of `eventually`: the last AssertionError, else the last value, named."""
    assert state.outcome is not None
    failure = state.outcome.exception()
    if failure is not None:
        raise failure
    last = state.outcome.result()
    raise TimeoutError(f"condition still not met after {timeout}s; last value: {last!r}")


def _until_truthy(timeout: float, interval: float) -> dict[str, Any]:
    return {
        "stop": stop_after_delay(timeout),
        "wait": wait_fixed(interval),
        "retry": retry_if_exception_type(AssertionError) | retry_if_result(lambda value: not value),
        "retry_error_callback": partial(_give_up, timeout),
    }


async def eventually(
    check: Callable[[], T | Awaitable[T]], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Call `check` (sync or async) until it returns something truthy without an AssertionError.

    Returns that value; a check that only asserts must end with `return True`. At the timeout,
    re-raises the last AssertionError if the last call raised one, else raises TimeoutError
    naming the last value returned. Any other exception is raised at once.
    """

    async def attempt() -> T:
        value = check()
        if inspect.isawaitable(value):
            return await value
        return value

    return await AsyncRetrying(**_until_truthy(timeout, interval))(attempt)


def eventually_sync(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """`eventually` for code without an event loop: `check` is a plain function."""
    return Retrying(**_until_truthy(timeout, interval))(check)


def poll(
    read: Callable[[], T],
    until: Callable[[T], bool],
    *,
    timeout: float,
    interval: float,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> T:
    """`read()` until `until(value)` holds, and that value; exceptions of `retry_on` count as
    "not yet". At the timeout, the last value read (or the last such exception, raised)."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_exception_type(retry_on) | retry_if_result(lambda value: not until(value)),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    return retrying(read)


def retry(
    attempt: Callable[[], T],
    *,
    on: type[BaseException] | tuple[type[BaseException], ...],
    timeout: float,
    interval: float = 0.5,
) -> T:
    """`attempt()` until it no longer raises one of `on`; at the timeout, the last one is raised."""
    return Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_exception_type(on),
        reraise=True,
    )(attempt)
