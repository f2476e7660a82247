"""notification_service's only wiring point: settings in, Litestar app out."""

from __future__ import annotations

from litestar import Litestar

from notification_service.api import NotificationController
from notification_service.messaging import MANIFEST
from notification_service.settings import Settings
from outbox import Messaging
from web import create_service_app


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    messaging = Messaging(MANIFEST, settings)
    app = create_service_app(
        settings, messaging, [NotificationController], title="notification_service"
    )
    return app
