"""Make sure the local PostgreSQL and RabbitMQ answer, starting them if they are installed and stopped,
with RabbitMQ's management and Prometheus plugins enabled.

`python -m tools.servers` is what `make up`, `make test` and CI run first. Where a server is given
by environment variables or runs elsewhere, nothing is started: it is only waited for.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

from harness.wait import eventually_sync


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(name: str, host: str, port: int, timeout: float) -> None:
    try:
        eventually_sync(lambda: answers(host, port), timeout=timeout, interval=0.2)
    except TimeoutError:
        sys.exit(f"{name} does not answer on {host}:{port} after {timeout:.0f}s")


def ensure_postgres() -> None:
    if answers("127.0.0.1", 5432):
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or not shutil.which("pg_ctlcluster"):
        sys.exit("PostgreSQL is not running on 127.0.0.1:5432 and is not installed here")
    print(f"starting PostgreSQL {versions[-1]}")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], check=True
    )
    wait_for("PostgreSQL", "127.0.0.1", 5432, 60)


def rabbitmq_ready() -> bool:
    """The node is up and its AMQP listener accepts connections."""
    return answers("127.0.0.1", 5672)


def ensure_rabbitmq() -> None:
    if not rabbitmq_ready():
        if not shutil.which("rabbitmq-server"):
            sys.exit("RabbitMQ is not running on 127.0.0.1:5672 and is not installed here")
        print("starting RabbitMQ")
        subprocess.run(["rabbitmq-server", "-detached"], check=True)
        subprocess.run(["rabbitmqctl", "await_startup", "--timeout", "120"], check=True)
        wait_for("RabbitMQ", "127.0.0.1", 5672, 120)
    if not answers("127.0.0.1", 15672) and shutil.which("rabbitmq-plugins"):
        print("enabling the RabbitMQ management plugin (UI on http://127.0.0.1:15672)")
        subprocess.run(
            ["rabbitmq-plugins", "enable", "rabbitmq_management"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wait_for("RabbitMQ management", "127.0.0.1", 15672, 60)
    # Online, like the management plugin: the broker keeps running. The dashboard's queue depths
    # come from it (docs/observability.md).
    if not answers("127.0.0.1", 15692) and shutil.which("rabbitmq-plugins"):
        print("enabling the RabbitMQ Prometheus plugin (metrics on http://127.0.0.1:15692)")
        subprocess.run(
            ["rabbitmq-plugins", "enable", "rabbitmq_prometheus"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wait_for("RabbitMQ Prometheus plugin", "127.0.0.1", 15692, 60)


def main() -> None:
    ensure_postgres()
    ensure_rabbitmq()
    print("PostgreSQL :5432 and RabbitMQ :5672 (management :15672, metrics :15692) answer")


if __name__ == "__main__":
    main()
