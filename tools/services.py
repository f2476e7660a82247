"""`make up` / `make down` / `make status`: the four services as background processes.

`python -m tools.services start|stop|kill|restart <service>` acts on one of them (`kill` is a
SIGKILL: a crash, for the demo's recovery scenarios).

`up` provisions each service's own RabbitMQ user and PostgreSQL role and database (`tools.provision`;
each service runs with those credentials), migrates them (as the services do on start: then the
operator tools' read-only role can be granted their outbox and inbox), starts only the services not
already running, and waits until each one is ready. Logs go to
`.run/logs/<service>.log`, pids to `.run/<service>.pid`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tools.provision import provision, service_env

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / ".run"
LOGS = RUN / "logs"

SERVICES = {
    "order_service": 8000,
    "inventory_service": 8001,
    "payment_service": 8002,
    "notification_service": 8003,
}


def pid_of(service: str) -> int | None:
    pidfile = RUN / f"{service}.pid"
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def ready(port: int) -> bool:
    try:
        return (
            httpx.get(f"http://127.0.0.1:{port}/health/ready?timeout=1", timeout=2).status_code
            == 200
        )
    except httpx.HTTPError:
        return False


def up(timeout: float) -> None:
    RUN.mkdir(exist_ok=True)
    LOGS.mkdir(exist_ok=True)
    provision(migrate=True)  # each service's own user, role and database; the read-only role
    for service in SERVICES:
        if pid_of(service):
            print(f"{service} already running (pid {pid_of(service)})")
            continue
        start(service)
    deadline = time.monotonic() + timeout
    for service, port in SERVICES.items():
        while not ready(port):
            if pid_of(service) is None:
                sys.exit(f"{service} exited; see .run/logs/{service}.log")
            if time.monotonic() > deadline:
                sys.exit(f"{service} not ready after {timeout:.0f}s; see .run/logs/{service}.log")
            time.sleep(0.1)
    print(
        "all four services ready: order :8000, inventory :8001, payment :8002, notification :8003"
    )


def start(service: str) -> int:
    """Start one service in the background (its log and pid file in .run/); returns its pid."""
    RUN.mkdir(exist_ok=True)
    LOGS.mkdir(exist_ok=True)
    port = SERVICES[service]
    env = {**os.environ, **service_env(service), "PORT": str(port), "PYTHONUNBUFFERED": "1"}
    with open(LOGS / f"{service}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", service],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (RUN / f"{service}.pid").write_text(str(proc.pid))
    print(f"started {service} on :{port} (pid {proc.pid}, log .run/logs/{service}.log)")
    return proc.pid


def wait_ready(service: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready(SERVICES[service]):
        if pid_of(service) is None:
            sys.exit(f"{service} exited; see .run/logs/{service}.log")
        if time.monotonic() > deadline:
            sys.exit(f"{service} not ready after {timeout:.0f}s; see .run/logs/{service}.log")
        time.sleep(0.1)


def stop(service: str, sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop one service: SIGTERM lets it finish what it holds; SIGKILL (`kill`) is a crash."""
    pid = pid_of(service)
    if pid is None:
        return
    os.kill(pid, sig)
    for _ in range(100):
        if _reaped(pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    (RUN / f"{service}.pid").unlink(missing_ok=True)
    print(f"{'killed' if sig == signal.SIGKILL else 'stopped'} {service}")


def kill(service: str) -> None:
    stop(service, signal.SIGKILL)


def _reaped(pid: int) -> bool:
    """The process is gone; collected first if it is our child (the demo restarts services)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except OSError:
        return True
    return False


def down() -> None:
    for service in SERVICES:
        stop(service)


def status() -> None:
    for service, port in SERVICES.items():
        pid = pid_of(service)
        state = "ready" if pid and ready(port) else ("running, not ready" if pid else "stopped")
        print(f"{service:22} :{port}  {state}" + (f" (pid {pid})" if pid else ""))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.services")
    parser.add_argument(
        "command", choices=["up", "down", "status", "start", "stop", "kill", "restart"]
    )
    parser.add_argument(
        "service", nargs="?", choices=list(SERVICES), help="for start/stop/kill/restart"
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.command in ("up", "down", "status"):
        {"up": lambda: up(args.timeout), "down": down, "status": status}[args.command]()
        return
    if args.service is None:
        parser.error(f"{args.command} needs a service: {', '.join(SERVICES)}")
    if args.command in ("stop", "restart"):
        stop(args.service)
    if args.command == "kill":
        kill(args.service)
    if args.command in ("start", "restart"):
        if pid_of(args.service) is None:
            start(args.service)
        wait_ready(args.service, args.timeout)


if __name__ == "__main__":
    main()
