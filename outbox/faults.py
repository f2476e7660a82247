"""Named crash points, armed by `ORDER_SAGA_CRASH_AT`, to prove each message path survives a kill.

`ORDER_SAGA_CRASH_AT=relay.after_publish` makes the process exit abruptly (as SIGKILL would) the
first time it reaches that point. Tests running in-process can `arm()` a point instead, which
raises `SimulatedCrash` there.
"""

from __future__ import annotations

import os

POINTS = (
    "relay.after_publish",  # broker confirmed, rows not yet marked published
    "consumer.after_commit",  # handler's transaction committed, message not yet acked
    "consumer.during_acks",  # a batch committed, some of its messages acked, the rest not yet
    "consumer.before_commit",  # handler ran, its transaction not yet committed
    "http.after_commit",  # a request's transaction committed, its response not yet sent
)

_armed_in_process: set[str] = set()


class SimulatedCrash(BaseException):
    """Raised at an armed crash point in-process; BaseException so no handler swallows it."""


def arm(point: str) -> None:
    assert point in POINTS, point
    _armed_in_process.add(point)


def disarm_all() -> None:
    _armed_in_process.clear()


def crash_point(point: str) -> None:
    if os.environ.get("ORDER_SAGA_CRASH_AT") == point:
        os._exit(70)
    if point in _armed_in_process:
        _armed_in_process.discard(point)
        raise SimulatedCrash(point)
