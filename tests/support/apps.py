"""The four services' apps in the test process, each in Litestar's test client (its own event
loop, in a thread) on a fresh database, all on one fresh broker vhost: a saga placed through them
completes, and whatever the process configured (a tracer provider) sees all four."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from litestar import Litestar
from litestar.testing import TestClient

from harness.databases import create_database, drop_database
from harness.rabbitmq import Vhost
from harness.servers import Servers
from harness.wait import eventually_sync
from inventory_service.app import create_app as inventory_app
from inventory_service.settings import Settings as InventorySettings
from notification_service.app import create_app as notification_app
from notification_service.settings import Settings as NotificationSettings
from order_service.app import create_app as order_app
from order_service.settings import Settings as OrderSettings
from payment_service.app import create_app as payment_app
from payment_service.settings import Settings as PaymentSettings
from tools.tokens import Tokens, new_secret
from web import ServiceSettings

SERVICES: dict[str, tuple[Callable[[Any], Litestar], type[ServiceSettings]]] = {
    "order": (order_app, OrderSettings),
    "inventory": (inventory_app, InventorySettings),
    "payment": (payment_app, PaymentSettings),
    "notification": (notification_app, NotificationSettings),
}

#: The key the apps verify with; `TOKENS` mints what they accept.
SECRET = new_secret()
TOKENS = Tokens.hs256(SECRET)


@contextlib.contextmanager
def running_apps(
    servers: Servers, order_timeout_s: float, **settings: Any
) -> Iterator[dict[str, TestClient[Litestar]]]:
    """The four apps, started (migrations, consumers, relay) and ready, by short name ("order");
    `settings` apply to all four. They verify tokens with `SECRET`; each client sends an
    operator's (`TOKENS.operator()`) unless a request says otherwise."""
    vhost = Vhost.create(servers)
    databases: list[str] = []
    try:
        with contextlib.ExitStack() as running:
            clients: dict[str, TestClient[Litestar]] = {}
            for name, (create_app, settings_class) in SERVICES.items():
                databases.append(create_database(servers.postgres_admin_url, f"{name}_service"))
                extra = {"order_timeout_s": order_timeout_s} if name == "order" else {}
                app = create_app(
                    settings_class(
                        database_url=databases[-1],
                        amqp_url=vhost.amqp_url,
                        relay_sweep_interval_s=0.2,
                        # PostgreSQL's 100 connections are shared with whatever else runs.
                        db_pool_size=5,
                        auth_secret=SECRET,
                        **{**extra, **settings},
                    )
                )
                clients[name] = running.enter_context(TestClient(app, timeout=30))
                clients[name].headers.update(TOKENS.operator())
            for client in clients.values():
                eventually_sync(
                    lambda client=client: client.get("/health/ready").status_code == 200,
                    timeout=30,
                )
            yield clients
    finally:
        for url in databases:
            drop_database(servers.postgres_admin_url, url)
        vhost.delete()
