"""Where a service's CPU goes: py-spy on each service during the throughput phase
(`start_profilers`), and a summary of its collapsed stacks (`--format raw`).

`python -m tools.bench.profile .run/bench/profile/order_service.folded` prints the share of busy
samples spent under each library (inclusive) and the functions with the most samples of their own.
`make bench PROFILE=1` writes one such file per service during the throughput phase.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from harness.system import System


def start_profilers(
    world: System, directory: Path, seconds: float
) -> list[subprocess.Popen[bytes]]:
    """py-spy on every service for `seconds`: a speedscope profile and collapsed stacks each."""
    directory.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    started = []
    for name, service in world.services.items():
        assert service.pid is not None
        started.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(service.pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(directory / f"{name}.folded"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return started


#: Libraries by a piece of their path; the first that matches a frame names it.
LIBRARIES = (
    ("sqlalchemy", r"(^|/)sqlalchemy/"),
    ("psycopg", r"(^|/)psycopg(_pool)?/"),
    ("aio-pika / aiormq / pamqp", r"(^|/)(aio_pika|aiormq|pamqp)/"),
    ("litestar", r"(^|/)litestar/"),
    ("uvicorn / httptools", r"(^|/)(uvicorn|httptools)/"),
    ("msgspec", r"(^|/)msgspec/"),
    ("prometheus_client", r"(^|/)prometheus_client/"),
    ("logging", r"(^|/)logging/"),
    ("outbox", r"(^|/)outbox/"),
    ("handlers and models", r"(^|/)\w+_service/"),
    ("contracts", r"(^|/)contracts/"),
    # The event loop's own work (uvloop is C: its samples end in asyncio's runner or tasks).
    ("event loop (asyncio, uvloop)", r"(^|/)asyncio/"),
)
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:]+)(:\d+)?\)$")


def library_of(file: str) -> str | None:
    for name, pattern in LIBRARIES:
        if re.search(pattern, file):
            return name
    return None


#: What a process was busy with, by the first frame of the stack that names it.
ACTIVITIES = (
    ("relay (outbox/relay.py)", "(outbox/relay.py"),
    ("consumers (outbox/consumer.py)", "(outbox/consumer.py"),
    ("HTTP requests (litestar)", "(litestar/"),
)


def summarize(path: Path, top: int = 25) -> str:
    """Busy samples by activity, by library (the deepest library frame of each sample), and the
    functions with the most samples of their own. The event loop's own work is `Runner.run`."""
    activity: Counter[str] = Counter()
    library: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        activity[next((name for name, mark in ACTIVITIES if mark in stack), "other")] += count
        deepest = "other"
        for frame in reversed(frames):
            match = FRAME.match(frame)
            found = library_of(match["file"]) if match else None
            if found:
                deepest = found
                break
        library[deepest] += count
        leaf = FRAME.match(frames[-1])
        if leaf:
            short = "/".join(leaf["file"].split("/")[-2:])
            own[f"{leaf['function']} ({short})"] += count
    if total == 0:
        return f"{path.name}: no samples"
    lines = [f"{path.stem}: {total} busy samples", "  by activity:"]
    lines += [f"    {n / total:6.1%}  {name}" for name, n in activity.most_common()]
    lines.append("  by library (deepest frame):")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in library.most_common()]
    lines.append(f"  own samples, top {top}:")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.profile")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for file in args.files:
        print(summarize(file, args.top))


if __name__ == "__main__":
    main()
