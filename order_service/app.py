"""order_service's only wiring point: settings in, Litestar app out."""

from __future__ import annotations

import asyncio
import logging

from litestar import Litestar

from order_service import handlers
from order_service.api import OrderController
from order_service.messaging import MANIFEST
from order_service.settings import Settings
from outbox import Messaging, transaction
from outbox.unit import session
from web import create_service_app

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    messaging = Messaging(MANIFEST, settings)

    async def sweep_deadlines() -> None:
        while True:
            try:
                async with session(messaging.sessionmaker) as opened:
                    cancelled = await handlers.cancel_overdue(transaction.of(opened))
            except Exception:
                log.warning("deadline sweep failed", exc_info=True)
                cancelled = 0
            if cancelled == 0:
                await asyncio.sleep(settings.timeout_sweep_interval_s)

    app = create_service_app(
        settings, messaging, [OrderController], title="order_service", background=[sweep_deadlines]
    )
    return app
