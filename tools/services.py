"""`make up` / `make down` / `make status`: the four services as background processes.

`python -m tools.services start|stop|kill|restart <service>` acts on one of them (`kill` is a
SIGKILL: a crash, for the demo's recovery scenarios).

`up` provisions each service's own RabbitMQ user and PostgreSQL role and database (`tools.provision`;
each service runs with those credentials), migrates them (as the services do on start: then the
operator tools' read-only role can be granted their outbox and inbox), starts only the services not
already running, and waits until each one is ready. The services verify tokens with the key the
environment names (`AUTH_SECRET`, `AUTH_PUBLIC_KEY`, `AUTH_JWKS_URL`), else with a local secret
made once and kept in `.run/auth_secret`, which `make token` and the tools mint with. Logs go to
`.run/logs/<service>.log`, pids to `.run/<service>.pid`. The processes are run by the harness's
supervisor (`harness.process.ServiceProcess`), as the tests' are, on the fixed ports below.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from harness.process import NotReady, ServiceProcess
from tools.provision import provision, service_env
from tools.tokens import service_auth_env

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / ".run"
LOGS = RUN / "logs"

SERVICES = {
    "order_service": 8000,
    "inventory_service": 8001,
    "payment_service": 8002,
    "notification_service": 8003,
}


def process(service: str) -> ServiceProcess:
    """The service as `make up` runs it: its fixed port, its own credentials, pid file in .run/."""
    port = SERVICES[service]
    return ServiceProcess(
        service,
        port,
        {
            **os.environ,
            **service_env(service),
            **service_auth_env(),
            "PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        },
        LOGS / f"{service}.log",
        pid_file=RUN / f"{service}.pid",
    )


def pid_of(service: str) -> int | None:
    return process(service).pid


def up(timeout: float) -> None:
    provision(migrate=True)  # each service's own user, role and database; the read-only role
    for service in SERVICES:
        if (pid := pid_of(service)) is not None:
            print(f"{service} already running (pid {pid})")
            continue
        start(service)
    for service in SERVICES:
        wait_ready(service, timeout)
    print(
        "all four services ready: order :8000, inventory :8001, payment :8002, notification :8003"
    )


def start(service: str) -> int:
    """Start one service in the background (its log and pid file in .run/); returns its pid."""
    pid = process(service).start()
    print(f"started {service} on :{SERVICES[service]} (pid {pid}, log .run/logs/{service}.log)")
    return pid


def wait_ready(service: str, timeout: float = 60.0) -> None:
    try:
        process(service).wait_ready(timeout)
    except NotReady as exc:
        sys.exit(f"{exc.reason}; see .run/logs/{service}.log")


def stop(service: str, sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop one service: SIGTERM lets it finish what it holds; SIGKILL (`kill`) is a crash."""
    running = process(service)
    if not running.running:
        return
    running.stop(sig)
    print(f"{'killed' if sig == signal.SIGKILL else 'stopped'} {service}")


def kill(service: str) -> None:
    stop(service, signal.SIGKILL)


def down() -> None:
    for service in SERVICES:
        stop(service)


def status() -> None:
    for service, port in SERVICES.items():
        found = process(service)
        pid = found.pid
        state = "ready" if pid and found.ready() else ("running, not ready" if pid else "stopped")
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
