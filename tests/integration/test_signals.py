"""A service told to stop while it starts, waiting for its database to apply its migrations, stops
at once, by the signal it was sent: `make down`, `docker stop` and Ctrl-C work on a service that
cannot reach its database, not only on one that runs. (uvicorn alone ignores them until it has
started; a service waiting for its broker has started, and stopped gracefully already.)"""

from __future__ import annotations

import signal

import pytest

from harness.system import service_process
from harness.wait import eventually_sync
from tests.support.faults import databases_down

#: Far less than the retries' next attempt (5 s apart, then longer) or a kill after a timeout.
PROMPTLY_S = 3.0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_service_waiting_for_its_database_at_start_stops_when_told_to(
    sig, servers, vhost, database_factory, tmp_path
):
    url = database_factory("inventory_service")
    inventory = service_process("inventory_service", url, vhost.amqp_url, tmp_path)
    with databases_down(servers.postgres_admin_url, [url]):
        inventory.start()
        try:
            eventually_sync(lambda: "database unreachable" in inventory.log_tail(), timeout=60)
            inventory.stop(sig, timeout=PROMPTLY_S)  # else killed (SIGKILL) after that
        finally:
            inventory.kill()
    assert inventory.returncode == -sig, inventory.log_tail()
