"""Bad HTTP input gets a clear 4xx, never a 5xx or a stack trace: schemathesis over each service's
OpenAPI, a hand-written list of nasty requests, bodies over the limit, and Idempotency-Key rules
under ten concurrent identical requests."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import pytest

from tools.client import unique
from web import ServiceSettings

pytestmark = pytest.mark.e2e

#: Test cases per API operation and phase; enough to find the classic 5xx, small enough for CI.
#: A deadline far away: on a busy machine an order may take more than the e2e default.
ORDER_TIMEOUT_S = 300.0
SCHEMATHESIS_EXAMPLES = 20

#: `GET /health/ready` answers 503 when the database or broker does not answer within the timeout
#: asked for: that is its contract, even for a timeout of 1e-300 s. Any other 5xx is a bug.
SCHEMATHESIS_CONFIG = """
[[operations]]
include-path = "/health/ready"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""

#: The services' request body limit (they run with the default).
MAX_BODY_BYTES = next(
    f.default for f in msgspec.structs.fields(ServiceSettings) if f.name == "max_body_bytes"
)

JSON = {"content-type": "application/json"}
ORDER = {"customer_id": "alice", "items": [{"sku": "widget", "quantity": 1}]}
PRODUCT = {"name": "A widget", "price_cents": 100, "on_hand": 5}


def body(value: object) -> dict:
    return {"content": json.dumps(value).encode(), "headers": JSON}


def raw(text: str | bytes, content_type: str = "application/json") -> dict:
    content = text.encode() if isinstance(text, str) else text
    return {"content": content, "headers": {"content-type": content_type}}


def order_with(**line: object) -> dict:
    return body({"customer_id": "alice", "items": [{"sku": "widget", "quantity": 1, **line}]})


NESTED_ARRAYS = "[" * 10_000 + "]" * 10_000
NESTED_OBJECTS = '{"a":' * 5_000 + "1" + "}" * 5_000

# (service, method, path, request keyword arguments, expected status)
BAD_REQUESTS = {
    "malformed JSON": ("order", "POST", "/orders", raw('{"customer_id": "alice", "items": ['), 400),
    "not JSON at all": ("order", "POST", "/orders", raw("customer_id=alice"), 400),
    "an empty body": ("order", "POST", "/orders", raw(""), 400),
    "a JSON array for an object": ("order", "POST", "/orders", body([ORDER]), 400),
    "text/plain": ("order", "POST", "/orders", raw(json.dumps(ORDER), "text/plain"), 415),
    "a form": (
        "payment",
        "POST",
        "/accounts",
        raw("customer_id=alice", "application/x-www-form-urlencoded"),
        415,
    ),
    "no content type": ("inventory", "PUT", "/products/widget", raw(json.dumps(PRODUCT), ""), 415),
    "NaN": ("order", "POST", "/orders", raw(json.dumps(ORDER).replace("1}", "NaN}")), 400),
    "Infinity": (
        "order",
        "POST",
        "/orders",
        raw(json.dumps(ORDER).replace("1}", "Infinity}")),
        400,
    ),
    "a number past any float": (
        "order",
        "POST",
        "/orders",
        raw(json.dumps(ORDER).replace("1}", "1e400}")),
        400,
    ),
    "a quantity past any int": ("order", "POST", "/orders", order_with(quantity=10**30), 400),
    "a price past a bigint": (
        "inventory",
        "PUT",
        "/products/widget",
        body({**PRODUCT, "price_cents": 2**63}),
        400,
    ),
    "a deposit past a bigint": (
        "payment",
        "POST",
        "/accounts/alice/deposits",
        body({"amount_cents": 2**64}),
        400,
    ),
    "a negative quantity": ("order", "POST", "/orders", order_with(quantity=-1), 400),
    "a quantity as a boolean": ("order", "POST", "/orders", order_with(quantity=True), 400),
    "a NUL in a customer id": (
        "order",
        "POST",
        "/orders",
        body({**ORDER, "customer_id": "a\0"}),
        400,
    ),
    "a NUL in a product name": (
        "inventory",
        "PUT",
        "/products/widget",
        body({**PRODUCT, "name": "wid\0get"}),
        400,
    ),
    "a NUL in a sku path": ("inventory", "PUT", "/products/wid%00get", body(PRODUCT), 400),
    "a NUL in an account path": ("payment", "GET", "/accounts/al%00ice", {}, 400),
    "a NUL in a deposit path": (
        "payment",
        "POST",
        "/accounts/al%00ice/deposits",
        body({"amount_cents": 1}),
        400,
    ),
    "a NUL in an order query": ("order", "GET", "/orders?customer_id=%00", {}, 400),
    "a NUL in a payments query": ("payment", "GET", "/payments?customer_id=%00", {}, 400),
    "a NUL in a deposits query": ("payment", "GET", "/deposits?customer_id=%00", {}, 400),
    "a NUL in a notifications query": (
        "notification",
        "GET",
        "/notifications?customer_id=%00",
        {},
        400,
    ),
    "a very long customer id": (
        "order",
        "POST",
        "/orders",
        body({**ORDER, "customer_id": "a" * 10_000}),
        400,
    ),
    "a very long sku": ("order", "POST", "/orders", order_with(sku="s" * 10_000), 400),
    "a very long sku path": ("inventory", "GET", "/products/" + "s" * 5_000, {}, 400),
    "a very long account path": ("payment", "GET", "/accounts/" + "a" * 5_000, {}, 400),
    "a very long product name": (
        "inventory",
        "PUT",
        "/products/widget",
        body({**PRODUCT, "name": "n" * 10_000}),
        400,
    ),
    "too many lines": (
        "order",
        "POST",
        "/orders",
        body({"customer_id": "alice", "items": [{"sku": "widget", "quantity": 1}] * 51}),
        400,
    ),
    "deeply nested arrays": ("order", "POST", "/orders", raw(NESTED_ARRAYS), 400),
    "deeply nested objects": ("payment", "POST", "/accounts", raw(NESTED_OBJECTS), 400),
    "an order that sets its status": (
        "order",
        "POST",
        "/orders",
        body({**ORDER, "status": "completed"}),
        400,
    ),
    "an order that sets its total": (
        "order",
        "POST",
        "/orders",
        body({**ORDER, "total_cents": 0}),
        400,
    ),
    "an order that sets its id": (
        "order",
        "POST",
        "/orders",
        body({**ORDER, "order_id": "00000000-0000-0000-0000-000000000000"}),
        400,
    ),
    "a line that sets its price": ("order", "POST", "/orders", order_with(unit_price_cents=0), 400),
    "a product that sets its reserved stock": (
        "inventory",
        "PUT",
        "/products/widget",
        body({**PRODUCT, "reserved": 5}),
        400,
    ),
    "a deposit that sets the balance": (
        "payment",
        "POST",
        "/accounts/alice/deposits",
        body({"amount_cents": 1, "balance_cents": 10**9}),
        400,
    ),
    "a negative opening balance": (
        "payment",
        "POST",
        "/accounts",
        body({"customer_id": "alice", "balance_cents": -1}),
        400,
    ),
    "an Idempotency-Key with a space": (
        "order",
        "POST",
        "/orders",
        {**body(ORDER), "headers": {**JSON, "Idempotency-Key": "a key"}},
        400,
    ),
    "an empty Idempotency-Key": (
        "order",
        "POST",
        "/orders",
        {**body(ORDER), "headers": {**JSON, "Idempotency-Key": ""}},
        400,
    ),
    "a 256-character Idempotency-Key": (
        "payment",
        "POST",
        "/accounts/alice/deposits",
        {**body({"amount_cents": 1}), "headers": {**JSON, "Idempotency-Key": "k" * 256}},
        400,
    ),
    "an offset past a bigint": ("order", "GET", "/orders?offset=9223372036854775808", {}, 400),
    "a limit of zero": ("payment", "GET", "/payments?limit=0", {}, 400),
    "an order id that is no uuid": ("order", "GET", "/orders/not-a-uuid", {}, 404),
    "a readiness timeout that is no number": (
        "order",
        "GET",
        "/health/ready?timeout=soon",
        {},
        400,
    ),
    "a readiness timeout of zero": ("inventory", "GET", "/health/ready?timeout=0", {}, 400),
    "an unknown route": ("notification", "GET", "/nothing/here", {}, 404),
    "an unknown method": ("order", "DELETE", "/orders", {}, 405),
    "cancelling an unknown order": (
        "order",
        "POST",
        "/orders/00000000-0000-0000-0000-000000000000/cancel",
        {},
        404,
    ),
}


def url_of(system, service: str) -> str:
    return getattr(system, service)


def assert_clear_client_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    answer = response.json()
    assert answer["status_code"] == status
    said = json.dumps(answer)
    assert answer["detail"], said
    assert "Traceback" not in said
    assert 'File "' not in said
    assert "internal server error" not in said.lower()


@pytest.mark.parametrize("service", ["order", "inventory", "payment", "notification"])
def test_schemathesis_finds_no_server_error(system, service, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{url_of(system, service)}/schema/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(SCHEMATHESIS_EXAMPLES),
        "--suppress-health-check",
        "all",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        "--workers",
        "1",
        "--no-color",
    ]

    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)

    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Tested:" in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_client_error(system, case):
    service, method, path, kwargs, status = BAD_REQUESTS[case]

    response = httpx.request(method, url_of(system, service) + path, timeout=30, **kwargs)

    assert_clear_client_error(response, status)


@pytest.mark.parametrize(
    ("service", "method", "path"),
    [
        ("order", "POST", "/orders"),
        ("inventory", "PUT", "/products/widget"),
        ("payment", "POST", "/accounts"),
        ("payment", "POST", "/accounts/alice/deposits"),
    ],
)
@pytest.mark.parametrize("sent", ["with a length", "chunked"])
def test_a_body_over_the_limit_gets_413(system, service, method, path, sent):
    too_big = json.dumps({"customer_id": "a", "padding": "x" * MAX_BODY_BYTES}).encode()
    content = too_big if sent == "with a length" else iter([too_big[:1000], too_big[1000:]])

    response = httpx.request(
        method, url_of(system, service) + path, content=content, headers=JSON, timeout=30
    )

    assert_clear_client_error(response, 413)


def test_a_body_just_under_the_limit_is_read(system):
    text = json.dumps(ORDER)
    text = text[:-1] + " " * (MAX_BODY_BYTES - len(text)) + "}"  # whitespace is valid JSON
    assert len(text) == MAX_BODY_BYTES

    response = httpx.post(f"{system.order}/orders", content=text.encode(), headers=JSON)

    assert response.status_code == 201, response.text[:500]


def concurrently(count: int, send) -> list[httpx.Response]:
    """`count` calls of `send(client)` released at once, each on its own connection."""
    start = threading.Barrier(count)

    def one(_: int) -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            start.wait()
            return send(client)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_ten_concurrent_orders_with_one_idempotency_key_make_one_order(system, shop):
    sku, customer, key = unique("lamp"), unique("gina"), unique("key")
    shop.stock(sku, on_hand=100, price_cents=100)
    shop.open_account(customer, balance_cents=10_000)
    order = {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}

    responses = concurrently(
        10,
        lambda client: client.post(
            f"{system.order}/orders", json=order, headers={"Idempotency-Key": key}
        ),
    )

    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert created, statuses
    assert len({r.json()["order_id"] for r in created}) == 1
    assert len({r.headers["location"] for r in created}) == 1
    for refused in (r for r in responses if r.status_code == 409):
        assert "in flight" in refused.json()["detail"]
    [placed] = shop.orders(customer_id=customer)
    assert placed["order_id"] == created[0].json()["order_id"]
    again = shop.place_raw(customer, [(sku, 1)], key=key)
    assert (again.status_code, again.json()) == (201, created[0].json())
    other = shop.place_raw(customer, [(sku, 2)], key=key)
    assert other.status_code == 422
    assert "different request body" in other.json()["detail"]
    assert len(shop.orders(customer_id=customer)) == 1
    assert shop.wait_until_terminal(placed["order_id"], timeout=60)["status"] == "completed"
    assert shop.balance(customer) == 10_000 - 100


def test_ten_concurrent_deposits_with_one_idempotency_key_pay_in_once(system, shop):
    customer, key = unique("hank"), unique("key")
    shop.open_account(customer, balance_cents=0)

    responses = concurrently(
        10,
        lambda client: client.post(
            f"{system.payment}/accounts/{customer}/deposits",
            json={"amount_cents": 700},
            headers={"Idempotency-Key": key},
        ),
    )

    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert created, statuses
    assert {r.json()["balance_cents"] for r in created} == {700}
    assert shop.balance(customer) == 700
    assert shop.deposit(customer, 700, key=key)["balance_cents"] == 700  # a replay
    assert shop.balance(customer) == 700
