"""Bad HTTP input gets a clear 4xx, never a 5xx or a stack trace: schemathesis over each service's
OpenAPI, a hand-written list of nasty requests, bodies over the limit, and Idempotency-Key rules
under ten concurrent identical requests.

The four apps run in this process, each in Litestar's test client (its own event loop, in a
thread) on a fresh database, all on one fresh broker vhost: a saga placed through them completes.
`TestClient` rather than `AsyncTestClient`: Litestar 2 runs the app in a thread either way, and
the async client makes a request block the test's loop, so ten requests could never overlap."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from litestar import Litestar
from litestar.testing import TestClient
from schemathesis.checks import not_a_server_error

from harness.servers import Servers
from harness.wait import eventually_sync
from inventory_service.app import create_app as inventory_app
from notification_service.app import create_app as notification_app
from order_service.app import create_app as order_app
from payment_service.app import create_app as payment_app
from tests.support.apps import running_apps
from tools.client import TERMINAL, unique
from web import ServiceSettings

#: A deadline far away: the concurrency tests' orders must complete, not time out.
ORDER_TIMEOUT_S = 300.0
#: Test cases per API operation and phase; enough to find the classic 5xx, small enough for CI.
SCHEMATHESIS_EXAMPLES = 20

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
    "a stock level as a boolean": (
        "inventory",
        "PUT",
        "/products/widget",
        body({**PRODUCT, "on_hand": True}),
        400,
    ),
    "an opening balance as a boolean": (
        "payment",
        "POST",
        "/accounts",
        body({"customer_id": "alice", "balance_cents": True}),
        400,
    ),
    "a deposit as a boolean": (
        "payment",
        "POST",
        "/accounts/alice/deposits",
        body({"amount_cents": True}),
        400,
    ),
    "a customer id as a number": (
        "order",
        "POST",
        "/orders",
        body({**ORDER, "customer_id": 7}),
        400,
    ),
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


@pytest.fixture(scope="module")
def apps(servers: Servers) -> Iterator[dict[str, TestClient[Litestar]]]:
    """The four apps, started (migrations, consumers, relay) and ready, shared by the module."""
    with running_apps(servers, order_timeout_s=ORDER_TIMEOUT_S) as clients:
        yield clients


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


def openapi(create_app: Callable[[], Litestar]) -> schemathesis.BaseSchema:
    """An app's OpenAPI document, as schemathesis reads it; building the app connects nothing."""
    return schemathesis.openapi.from_dict(create_app().openapi_schema.to_schema())


def send(client: TestClient[Litestar], case: schemathesis.Case) -> httpx.Response:
    """A schemathesis case sent through an app's test client. Its arguments are those of
    `requests`, translated: a raw body (`data`) is httpx's `content`, and header values go out as
    latin-1, as `requests` sends them (httpx takes only ASCII text)."""
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    assert not kwargs.pop("cookies", None), "the services read no cookies"
    if "data" in kwargs:
        kwargs["content"] = kwargs.pop("data")
    kwargs["headers"] = {
        name: value.encode("latin-1") if isinstance(value, str) else value
        for name, value in kwargs["headers"].items()
    }
    return client.request(**kwargs)


def assert_no_server_error(client: TestClient[Litestar], case: schemathesis.Case) -> None:
    response = send(client, case)
    # `GET /health/ready` answers 503 when the database or broker does not answer within the
    # timeout asked for: that is its contract, even for a timeout of 1e-300 s. Any other 5xx is a bug.
    if case.path == "/health/ready" and response.status_code == 503:
        return
    case.validate_response(response, checks=[not_a_server_error])


fuzzed = settings(
    max_examples=SCHEMATHESIS_EXAMPLES,
    suppress_health_check=list(HealthCheck),
    database=None,
    deadline=None,
)


@openapi(order_app).parametrize()
@fuzzed
def test_schemathesis_finds_no_server_error_in_order_service(case, apps):
    assert_no_server_error(apps["order"], case)


@openapi(inventory_app).parametrize()
@fuzzed
def test_schemathesis_finds_no_server_error_in_inventory_service(case, apps):
    assert_no_server_error(apps["inventory"], case)


@openapi(payment_app).parametrize()
@fuzzed
def test_schemathesis_finds_no_server_error_in_payment_service(case, apps):
    assert_no_server_error(apps["payment"], case)


@openapi(notification_app).parametrize()
@fuzzed
def test_schemathesis_finds_no_server_error_in_notification_service(case, apps):
    assert_no_server_error(apps["notification"], case)


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_client_error(apps, case):
    service, method, path, kwargs, status = BAD_REQUESTS[case]

    response = apps[service].request(method, path, **kwargs)

    assert_clear_client_error(response, status)


@pytest.mark.parametrize(
    ("service", "method", "path", "sent", "field"),
    [
        (
            "order",
            "POST",
            "/orders",
            {"customer_id": "alice", "items": [{"sku": "widget", "quantity": "2"}]},
            "items[0].quantity",
        ),
        ("inventory", "PUT", "/products/widget", {**PRODUCT, "price_cents": "100"}, "price_cents"),
        ("inventory", "PUT", "/products/widget", {**PRODUCT, "on_hand": "5"}, "on_hand"),
        (
            "payment",
            "POST",
            "/accounts",
            {"customer_id": "alice", "balance_cents": "100"},
            "balance_cents",
        ),
        ("payment", "POST", "/accounts/alice/deposits", {"amount_cents": "100"}, "amount_cents"),
    ],
)
def test_a_number_sent_as_a_string_is_refused_with_the_field_named(
    apps, service, method, path, sent, field
):
    """The OpenAPI document says integer; a JSON string is not one, whatever it spells."""
    response = apps[service].request(method, path, json=sent)

    assert_clear_client_error(response, 400)
    assert response.json()["extra"] == [
        {"message": "Expected `int`, got `str`", "key": field, "source": "body"}
    ]


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
def test_a_body_over_the_limit_gets_413(apps, service, method, path, sent):
    too_big = json.dumps({"customer_id": "a", "padding": "x" * MAX_BODY_BYTES}).encode()
    content = too_big if sent == "with a length" else iter([too_big[:1000], too_big[1000:]])

    response = apps[service].request(method, path, content=content, headers=JSON)

    assert_clear_client_error(response, 413)


def test_a_body_just_under_the_limit_is_read(apps):
    text = json.dumps(ORDER)
    text = text[:-1] + " " * (MAX_BODY_BYTES - len(text)) + "}"  # whitespace is valid JSON
    assert len(text) == MAX_BODY_BYTES

    response = apps["order"].post("/orders", content=text.encode(), headers=JSON)

    assert response.status_code == 201, response.text[:500]


def concurrently(count: int, send: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """`count` calls of `send()` released at once, each from its own thread."""
    start = threading.Barrier(count)

    def one(_: int) -> httpx.Response:
        start.wait()
        return send()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def ok(response: httpx.Response) -> Any:
    assert response.is_success, response.text[:500]
    return response.json()


def balance(apps: dict[str, TestClient[Litestar]], customer: str) -> int:
    return int(ok(apps["payment"].get(f"/accounts/{customer}"))["balance_cents"])


def until_terminal(order_api: TestClient[Litestar], order_id: str) -> dict[str, Any]:
    def terminal() -> dict[str, Any] | None:
        order: dict[str, Any] = ok(order_api.get(f"/orders/{order_id}"))
        return order if order["status"] in TERMINAL else None

    return eventually_sync(terminal, timeout=60)


def test_ten_concurrent_orders_with_one_idempotency_key_make_one_order(apps):
    order_api, sku, customer, key = apps["order"], unique("lamp"), unique("gina"), unique("key")
    ok(
        apps["inventory"].put(
            f"/products/{sku}", json={"name": sku, "price_cents": 100, "on_hand": 100}
        )
    )
    ok(apps["payment"].post("/accounts", json={"customer_id": customer, "balance_cents": 10_000}))
    order = {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}

    responses = concurrently(
        10, lambda: order_api.post("/orders", json=order, headers={"Idempotency-Key": key})
    )

    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert created, statuses
    assert len({r.json()["order_id"] for r in created}) == 1
    assert len({r.headers["location"] for r in created}) == 1
    for refused in (r for r in responses if r.status_code == 409):
        assert "in flight" in refused.json()["detail"]
    [placed] = ok(order_api.get("/orders", params={"customer_id": customer}))
    assert placed["order_id"] == created[0].json()["order_id"]
    again = order_api.post("/orders", json=order, headers={"Idempotency-Key": key})
    assert (again.status_code, again.json()) == (201, created[0].json())
    other = order_api.post(
        "/orders",
        json={**order, "items": [{"sku": sku, "quantity": 2}]},
        headers={"Idempotency-Key": key},
    )
    assert other.status_code == 422
    assert "different request body" in other.json()["detail"]
    assert len(ok(order_api.get("/orders", params={"customer_id": customer}))) == 1
    assert until_terminal(order_api, placed["order_id"])["status"] == "completed"
    assert balance(apps, customer) == 10_000 - 100


def test_ten_concurrent_deposits_with_one_idempotency_key_pay_in_once(apps):
    payment_api, customer, key = apps["payment"], unique("hank"), unique("key")
    ok(payment_api.post("/accounts", json={"customer_id": customer, "balance_cents": 0}))

    def deposit() -> httpx.Response:
        return payment_api.post(
            f"/accounts/{customer}/deposits",
            json={"amount_cents": 700},
            headers={"Idempotency-Key": key},
        )

    responses = concurrently(10, deposit)

    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in responses if r.status_code == 201]
    assert created, statuses
    assert {r.json()["balance_cents"] for r in created} == {700}
    assert balance(apps, customer) == 700
    assert ok(deposit())["balance_cents"] == 700  # a replay
    assert balance(apps, customer) == 700
