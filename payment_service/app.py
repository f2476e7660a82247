"""payment_service's only wiring point: settings in, Litestar app out."""

from __future__ import annotations

from litestar import Litestar

from outbox import Messaging
from outbox.http import create_service_app
from payment_service.api import AccountController, DepositController, PaymentController
from payment_service.messaging import MANIFEST
from payment_service.settings import Settings


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    messaging = Messaging(MANIFEST, settings)
    app = create_service_app(
        messaging,
        [AccountController, DepositController, PaymentController],
        title="payment_service",
    )
    app.state.settings = settings
    return app
