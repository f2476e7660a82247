"""The HTTP requests of the harness and the tools, all with one TLS context.

httpx gives every client it makes a TLS context of its own, `httpx.get(...)` included, and makes
it by parsing the whole CA bundle: 20-25 ms of CPU on this machine (encode/httpx#2298; OpenSSL 3
is the slow part, python/cpython#95031), although every URL the harness asks is plain http on
127.0.0.1. The harness polls (a starting service's readiness every 50 ms, the management API
every half second), so in `make test` those contexts were a third of the test workers' CPU.

Here the context is made once. Each request still opens a connection of its own, as `httpx.get`
does: a node or a service that went away is never met through a kept-alive connection.
"""

from __future__ import annotations

from typing import Any

import httpx

#: Made as httpx makes it: certifi's bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR` if set.
TLS = httpx.create_ssl_context()


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """`httpx.request(method, url, **kwargs)` with the shared TLS context."""
    return httpx.request(method, url, verify=TLS, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    """`httpx.get(url, **kwargs)` with the shared TLS context."""
    return request("GET", url, **kwargs)


def client(**kwargs: Any) -> httpx.Client:
    """`httpx.Client(**kwargs)` with the shared TLS context (its connections kept alive)."""
    return httpx.Client(verify=TLS, **kwargs)
