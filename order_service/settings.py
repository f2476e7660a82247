"""order_service configuration: the shared settings, its own defaults, and the order deadline."""

from outbox import local_database_url
from web import ServiceSettings


class Settings(ServiceSettings, kw_only=True, frozen=True):
    service: str = "order_service"
    port: int = 8000
    database_url: str = local_database_url("order_service")
    #: An order still pending or reserved this long after it was placed is cancelled (`timeout`).
    order_timeout_s: float = 30.0
    #: How often the deadline sweeper looks for overdue orders.
    timeout_sweep_interval_s: float = 1.0
