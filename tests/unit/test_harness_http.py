"""The harness polls without paying for a TLS context per request (`harness.http_client`).

httpx makes one for every client, `httpx.get` included, at 20-25 ms of CPU each: polled every
50 ms while a service starts, that was a third of the test workers' CPU in `make test`.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from harness.process import ServiceProcess
from harness.rabbitmq import ManagementApi
from tests.support.answering import answering
from tools.client import Shop, Urls


def test_polling_a_service_and_the_management_api_makes_no_tls_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made: list[object] = []
    real = ssl.create_default_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    with answering(b"{}", "application/json") as port:
        url = f"http://127.0.0.1:{port}"
        service = ServiceProcess("order_service", port, {}, tmp_path / "order_service.log")
        for _ in range(20):
            service.ready()  # answered, but not by a process of its own: not ready
        api = ManagementApi(f"http://guest:guest@127.0.0.1:{port}")
        for _ in range(20):
            assert api.get("/api/overview") == {}
        Shop(Urls(url, url, url, url)).close()
        assert made == [], "a request of the harness or the tools made a TLS context of its own"

        httpx.get(url)  # httpx's own way: one per request
    assert len(made) == 1
