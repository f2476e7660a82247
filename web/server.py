"""`python -m <service>`: serve the HTTP API, consumers and relay in one event loop; or `migrate`."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from litestar import Litestar

from web import migrations, tracing
from web.settings import ServiceSettings


class JsonFormatter(logging.Formatter):
    """One JSON object per line, carrying the order id when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        order_id = getattr(record, "order_id", None)
        if order_id:
            entry["order_id"] = str(order_id)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM or SIGINT that comes while the service starts (waiting
    for its database to apply its migrations) ends the process at once, by that signal. uvicorn
    looks at its exit flag only once started (Kludex/uvicorn#2751): a service that could not
    reach its database ignored `make down`, `docker stop` and Ctrl-C until killed. Nothing is
    served yet, and a start cut short is a crash the service recovers from (the migration it
    was applying rolls back: each runs in a transaction of its own). Once started, a signal is
    uvicorn's graceful shutdown, as before."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.started:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)
        super().handle_exit(sig, frame)


def configure_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger(service).setLevel(level.upper())


def main(settings: ServiceSettings, create_app: Callable[[Any], Litestar]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {settings.service}")
    parser.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve")
    args = parser.parse_args()
    configure_logging(settings.service, settings.log_level)
    if args.command == "migrate":
        migrations.upgrade(settings.service, settings.database_url)
        return
    tracing.configure(settings)
    app = create_app(settings)
    # What the process has built so far (its modules, the app) lives as long as it does: frozen,
    # the cyclic collector skips it. Else each full collection scans those ~130,000 objects, the
    # event loop stalls for 100-200 ms, and every saga in flight waits (docs/performance.md).
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C once serving: it shut down gracefully
        Server(config).run()
