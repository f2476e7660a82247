"""payment_service's only wiring point: settings in, Litestar app out."""

from __future__ import annotations

from litestar import Litestar

from outbox import Messaging
from payment_service.api import AccountController, DepositController, PaymentController
from payment_service.messaging import MANIFEST
from payment_service.settings import Settings
from web import create_service_app


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    messaging = Messaging(MANIFEST, settings)
    app = create_service_app(
        settings,
        messaging,
        [AccountController, DepositController, PaymentController],
        title="payment_service",
    )
    return app
