"""What only a real server shows of HTTP input: a body past the limit gets its 413 over the socket,
sent with a length or chunked, while uvicorn is still reading it. Every other input case runs
in-process, against each app: tests/integration/test_http_input.py."""

from __future__ import annotations

import json

import httpx
import msgspec
import pytest

from web import ServiceSettings

pytestmark = pytest.mark.e2e

#: The services' request body limit (they run with the default).
MAX_BODY_BYTES = next(
    f.default for f in msgspec.structs.fields(ServiceSettings) if f.name == "max_body_bytes"
)


@pytest.mark.parametrize("sent", ["with a length", "chunked"])
def test_a_body_over_the_limit_gets_413_over_a_real_socket(system, sent):
    too_big = json.dumps({"customer_id": "a", "padding": "x" * MAX_BODY_BYTES}).encode()
    content = too_big if sent == "with a length" else iter([too_big[:1000], too_big[1000:]])

    response = httpx.post(
        f"{system.order}/orders",
        content=content,
        headers={"content-type": "application/json", **system.tokens.bearer("a")},
        timeout=30,
    )

    assert response.status_code == 413, response.text[:500]
    assert response.json()["status_code"] == 413
