"""`make up` / `make down` / `make status`: the four services as background processes.

`up` creates each service's database if missing, starts only the services not already running
(migrations are applied by each service on start), and waits until each one is ready. Logs go to
`.run/logs/<service>.log`, pids to `.run/<service>.pid`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / ".run"
LOGS = RUN / "logs"

SERVICES = {
    "order_service": 8000,
    "inventory_service": 8001,
    "payment_service": 8002,
    "notification_service": 8003,
}

ADMIN_DSN = os.environ.get("POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def create_databases(names: list[str], admin_dsn: str = ADMIN_DSN) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in names:
            if name not in existing:
                conn.execute(f'CREATE DATABASE "{name}"')
                print(f"created database {name}")


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
    create_databases(list(SERVICES))
    for service, port in SERVICES.items():
        if pid_of(service):
            print(f"{service} already running (pid {pid_of(service)})")
            continue
        env = {**os.environ, "PORT": str(port), "PYTHONUNBUFFERED": "1"}
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


def down() -> None:
    for service in SERVICES:
        pid = pid_of(service)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if pid_of(service) is None:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        (RUN / f"{service}.pid").unlink(missing_ok=True)
        print(f"stopped {service}")


def status() -> None:
    for service, port in SERVICES.items():
        pid = pid_of(service)
        state = "ready" if pid and ready(port) else ("running, not ready" if pid else "stopped")
        print(f"{service:22} :{port}  {state}" + (f" (pid {pid})" if pid else ""))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.services")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    {"up": lambda: up(args.timeout), "down": down, "status": status}[args.command]()


if __name__ == "__main__":
    main()
