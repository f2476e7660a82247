"""`make prometheus`: a real Prometheus server scraping `make up`'s services and the broker.

Its scrape configuration is written from what runs now: each service of `make up` that has a live
process, on its port, and RabbitMQ's Prometheus plugin (`make servers` enables it) for the queues
of the services' vhost. It listens on :9090 if that is free, else on any free port, keeps its data
in `.run/prometheus/` and runs until Ctrl-C. The dashboard's queries and what each metric means:
docs/observability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
from pathlib import Path

from harness.prometheus import PrometheusUnavailable, running_prometheus, scrape_config
from tools import services
from tools.provision import RABBITMQ_VHOST
from tools.servers import answers

BROKER = ("127.0.0.1", 15692)
DEFAULT_PORT = 9090


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def running_services() -> dict[str, list[str]]:
    """`make up`'s services that run now, each with its `host:port`."""
    return {
        service: [f"127.0.0.1:{port}"]
        for service, port in services.SERVICES.items()
        if services.pid_of(service) is not None
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.prometheus", description=__doc__)
    parser.add_argument("--port", type=int, help=f"default {DEFAULT_PORT} if free, else any")
    parser.add_argument("--interval", type=float, default=5.0, help="scrape interval, seconds")
    parser.add_argument("--data", type=Path, default=services.RUN / "prometheus")
    args = parser.parse_args()

    targets = running_services()
    if not targets:
        sys.exit("no service of `make up` is running: make up first")
    broker = f"{BROKER[0]}:{BROKER[1]}" if answers(*BROKER) else None
    if broker is None:
        print("RabbitMQ's Prometheus plugin does not answer on :15692: no broker queue depths")
    port = args.port or (DEFAULT_PORT if port_free(DEFAULT_PORT) else 0)
    config = scrape_config(targets, broker, vhost=RABBITMQ_VHOST, interval_s=args.interval)
    try:
        with running_prometheus(config, args.data, port=port) as prometheus:
            print(f"Prometheus on {prometheus.url}, graph page {prometheus.url}/graph")
            print(f"scraping {', '.join(targets)}" + (" and RabbitMQ's queues" if broker else ""))
            print(f"config and log in {args.data}; Ctrl-C stops it")
            # Ctrl-C, or a SIGTERM, leaves the block: the server stops with us.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                prometheus.wait()
    except PrometheusUnavailable as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
