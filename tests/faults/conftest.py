"""Fault tests run one service in-process (the integration fixtures) or all four as processes."""

from tests.integration.conftest import downstream, order_database, order_service  # noqa: F401
