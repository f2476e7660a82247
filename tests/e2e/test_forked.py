"""The services the tests run are forked from an interpreter that has imported what they share
(`harness.process`), and each is still what `python -m <service>` makes: a process with its own
session, settings and log, that shows its own metrics and no other service's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from harness.process import alive
from harness.system import System
from harness.wait import eventually_sync

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_each_service_is_forked_and_has_its_own_session_port_and_log(
    system: System,
) -> None:
    for name, service in system.services.items():
        assert service.pid is not None, f"{name} runs"
        process = psutil.Process(service.pid)
        assert "forkserver" in " ".join(process.parent().cmdline()), name
        assert os.getsid(service.pid) == service.pid, f"{name} leads a session of its own"
        # Its environment is its own (/proc/<pid>/environ shows the forkserver's, from before
        # the fork): the port it listens on is the one it was given.
        assert service.listening(), f"{name} listens on its port {service.port}"
        logged = [json.loads(line) for line in service.log_path.read_text().splitlines()]
        assert any(f"{name}: consuming" in entry["msg"] for entry in logged), name


def test_each_service_shows_its_own_metrics_and_no_other_services(system: System) -> None:
    """order_service alone counts ended orders: forked from an interpreter that had imported
    order_service too, the other three would show its counter, at 0 (as Prometheus then saw)."""
    shown = {
        name: {family.name for family in service.metrics()}
        for name, service in system.services.items()
    }
    assert all("saga_messages_handled" in names for names in shown.values()), "shared metrics"
    assert "saga_orders_ended" in shown["order_service"]
    assert [name for name, names in shown.items() if "saga_orders_ended" in names] == [
        "order_service"
    ]


def test_a_forked_service_left_running_goes_when_the_process_that_started_it_exits(
    tmp_path: Path,
) -> None:
    """Even one paused (SIGSTOP) and waiting for a database that never answers: multiprocessing
    would wait for it at exit, forever; the test process that started it would never end."""
    script = tmp_path / "leave_one_running.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from pathlib import Path
            from harness.system import service_process
            from harness.wait import eventually_sync

            if __name__ == "__main__":
                unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
                service = service_process(
                    "inventory_service", unreachable, "amqp://127.0.0.1:1/", Path(sys.argv[1])
                )
                service.start()
                eventually_sync(lambda: "database unreachable" in service.log_tail(), timeout=60)
                service.pause()
                print(service.pid, flush=True)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[-1])
    eventually_sync(lambda: not alive(pid), timeout=10)
