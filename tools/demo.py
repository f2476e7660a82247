"""`make demo`: play the scenarios (tools.scenarios) against the running services, then check docs/spec.md §7.

Each scenario prints its orders' timelines (event, who emitted it, who consumed it, ms since the
order was placed) and the balances and stock before and after; the demo ends with the invariant
checker (tools.check) over the whole system. Exits non-zero if a scenario did not end as expected,
or if the checker found a violation. `--scenario NAME` plays one.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from rich import box
from rich.table import Table

from tools import check, services, trace
from tools.client import Shop
from tools.scenarios import ORDER_TIMEOUT_S, SCENARIOS, Demo, DemoTimeout
from tools.tokens import Tokens

console = trace.console()


def play(names: list[str]) -> list[tuple[str, bool, float, str]]:
    """Play the scenarios in turn; returns (name, ended as expected, seconds, note) for each."""
    results = []
    with Shop(tokens=Tokens.from_env()) as shop:
        for number, name in enumerate(names, start=1):
            scenario = SCENARIOS[name]
            console.rule(f"[bold]{number}/{len(names)}  {name}[/]: {scenario.title}")
            demo = Demo(shop, console)
            started = time.monotonic()
            note = ""
            try:
                scenario.play(demo)
                demo.figures()
            except DemoTimeout as exc:
                note = f"timed out waiting for {exc}"
            except Exception as exc:
                console.print(traceback.format_exc(), style="dim", markup=False, highlight=False)
                note = f"{type(exc).__name__}: {exc}"
            ok = demo.ok and not note
            if not demo.ok:
                note = note or "; ".join(e.what for e in demo.expectations if not e.ok)
            results.append((name, ok, time.monotonic() - started, note))
            verdict = "[green]ended as expected[/]" if ok else f"[bold red]FAILED[/]: {note}"
            console.print(f"  {name}: {verdict}\n")
    return results


def invariants() -> bool:
    """docs/spec.md §7 over everything the services hold, not only this run's orders."""
    console.rule("[bold]invariants[/]: docs/spec.md §7, checked over the whole system")
    try:
        with console.status("checking…"):
            report = check.check(wait=30, tokens=Tokens.from_env())
    except check.Unreachable as exc:
        console.print(f"[red]cannot check[/]: {exc}")
        return False
    check.show(report, console)
    return report.ok


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    parser.add_argument(
        "--scenario", choices=list(SCENARIOS), help="play one scenario (default: all, in order)"
    )
    args = parser.parse_args()
    names = [args.scenario] if args.scenario else list(SCENARIOS)
    down = [service for service in services.SERVICES if not services.process(service).ready()]
    if down:
        sys.exit(f"not ready: {', '.join(down)}. `make demo` starts them (or `make up`)")
    console.print(
        f"[bold]order-saga demo[/]: {len(names)} scenario(s) against the services on :8000-8003;"
        f" order deadline ORDER_TIMEOUT_S={ORDER_TIMEOUT_S:g} s."
        " Trace any order again with `make trace ORDER=<id>`."
    )
    console.print(f"[dim]Timelines: {trace.LEGEND}[/]\n")
    started = time.monotonic()
    results = play(names)
    checked = invariants()

    summary = Table(title="demo", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("scenario", "ended as expected", "seconds", "note"):
        summary.add_column(column)
    for name, ok, seconds, note in results:
        summary.add_row(name, "[green]yes[/]" if ok else "[bold red]no[/]", f"{seconds:.1f}", note)
    summary.add_row("invariants", "[green]yes[/]" if checked else "[bold red]no[/]", "", "")
    console.print(summary)
    console.print(f"demo took {time.monotonic() - started:.0f} s")
    sys.exit(0 if checked and all(ok for _, ok, _, _ in results) else 1)


if __name__ == "__main__":
    main()
