"""The harness gives each service a port of its own and knows when the service is the one on it:
two services started at once never share a port, and a port some other server answers on is not
taken for the service being ready (it was how an e2e module once talked to the wrong service)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest

from harness.process import NotReady
from harness.system import free_port, service_process
from tests.support.answering import answering


def test_a_port_handed_out_is_given_to_no_other_bind_while_the_service_starts():
    handed_out = {free_port() for _ in range(200)}
    # What another test worker's free_port, or any other program's bind to port 0, would get:
    # by chance alone about 35 of these would land on one of the 200.
    others = set()
    for _ in range(5000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            others.add(sock.getsockname()[1])
    assert handed_out.isdisjoint(others)
    assert len(handed_out) == 200

    # A server binding the way uvicorn, PostgreSQL and Prometheus do takes one.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", handed_out.pop()))
        server.listen()


@pytest.fixture
def answering_port() -> Iterator[int]:
    """A port on which another server answers 200 to everything, `/health/ready` included."""
    with answering() as port:
        yield port


def test_a_service_whose_port_another_server_holds_is_not_ready_but_exited(
    answering_port, vhost, database_factory, tmp_path
):
    url = database_factory("inventory_service")
    inventory = service_process("inventory_service", url, vhost.amqp_url, tmp_path)
    inventory = dataclasses.replace(
        inventory, port=answering_port, env={**inventory.env, "PORT": str(answering_port)}
    )
    inventory.start()
    try:
        with pytest.raises(NotReady) as raised:
            inventory.wait_ready(timeout=60)
        assert raised.value.reason.startswith("inventory_service exited")
        assert "address already in use" in str(raised.value)
    finally:
        inventory.stop()
