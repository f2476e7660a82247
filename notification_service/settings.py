"""notification_service configuration: the shared settings with its own defaults."""

from outbox import local_database_url
from web import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    service: str = "notification_service"
    port: int = 8003
    database_url: str = local_database_url("notification_service")
