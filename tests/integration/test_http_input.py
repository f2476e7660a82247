"""Bad HTTP input gets a clear 4xx, never a 5xx or a stack trace: schemathesis over each service's
OpenAPI, a hand-written list of nasty requests, bodies over the limit, Idempotency-Key rules
under ten concurrent identical requests, and tokens that must not get in (401) or may not do
what they ask (403, or 404 for what is another customer's).

Every request carries an operator's token unless it says otherwise, as the apps verify tokens
(HS256, a secret of this module's).

The four apps run in this process, each in Litestar's test client (its own event loop, in a
thread) on a fresh database, all on one fresh broker vhost: a saga placed through them completes.
`TestClient` rather than `AsyncTestClient`: Litestar 2 runs the app in a thread either way, and
the async client makes a request block the test's loop, so ten requests could never overlap."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
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
from tests.support.apps import SECRET, TOKENS, running_apps
from tools.client import TERMINAL, unique
from tools.tokens import new_secret
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
    latin-1, as `requests` sends them (httpx takes only ASCII text). It carries an operator's
    token; bad tokens have their own tests (`BAD_TOKENS`)."""
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    assert not kwargs.pop("cookies", None), "the services read no cookies"
    if "data" in kwargs:
        kwargs["content"] = kwargs.pop("data")
    # schemathesis fills the bearer scheme with random tokens, which would all stop at the 401:
    # an operator's token instead, so that every route is fuzzed past authentication.
    kwargs["headers"] = {
        name: value.encode("latin-1") if isinstance(value, str) else value
        for name, value in kwargs["headers"].items()
        if name.lower() != "authorization"
    } | TOKENS.operator()
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


# --- who may call, and what ----------------------------------------------------------------


def unsigned(claims: dict[str, Any]) -> str:
    """A token with `alg: none`: a header, the claims, and no signature."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iss": "order-saga", "aud": "order-saga", "exp": now + 600, **changes}


def signed(values: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(values, key, algorithm="HS256")


#: Authorization headers that must not get in: each a 401 with `WWW-Authenticate: Bearer`.
BAD_TOKENS = {
    "another scheme": "Basic YWxpY2U6c2VjcmV0",
    "Bearer and nothing": "Bearer ",
    "a garbled token": "Bearer not-a-token",
    "three garbled segments": "Bearer a.b.c",
    "expired": f"Bearer {signed(claims(exp=int(time.time()) - 120))}",
    "not yet valid": f"Bearer {signed(claims(nbf=int(time.time()) + 600))}",
    "no expiry": f"Bearer {signed({k: v for k, v in claims().items() if k != 'exp'})}",
    "another issuer": f"Bearer {signed(claims(iss='someone-else'))}",
    "no issuer": f"Bearer {signed({k: v for k, v in claims().items() if k != 'iss'})}",
    "another audience": f"Bearer {signed(claims(aud='another-shop'))}",
    "alg none": f"Bearer {unsigned(claims())}",
    "alg none, operator": f"Bearer {unsigned(claims(scope='admin'))}",
    "signed with another key": f"Bearer {signed(claims(scope='admin'), new_secret())}",
    "signed with HS512": f"Bearer {jwt.encode(claims(), SECRET, algorithm='HS512')}",
    "a tampered claim": "Bearer "
    + ".".join(
        [
            (parts := TOKENS.mint("alice").split("."))[0],
            base64.urlsafe_b64encode(json.dumps(claims(scope="admin")).encode())
            .rstrip(b"=")
            .decode(),
            parts[2],
        ]
    ),
    "no subject": f"Bearer {signed({k: v for k, v in claims().items() if k != 'sub'})}",
    "a subject that is no customer id": f"Bearer {signed(claims(sub='a b/../c'))}",
    "a subject that is a number": f"Bearer {signed(claims(sub=7))}",
    "a very long header": "Bearer " + "a" * 8000,
}

#: One guarded route of each service.
GUARDED = {
    "order": ("GET", "/orders"),
    "inventory": ("GET", "/products"),
    "payment": ("GET", "/accounts/alice"),
    "notification": ("GET", "/notifications"),
}


def anonymous(
    client: TestClient[Litestar], method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """A request without the operator's token every other request here carries."""
    token = client.headers.pop("Authorization")
    try:
        return client.request(method, path, **kwargs)
    finally:
        client.headers["Authorization"] = token


def assert_unauthorized(response: httpx.Response) -> None:
    assert_clear_client_error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer "), response.headers


@pytest.mark.parametrize("service", list(GUARDED))
def test_a_request_without_a_token_gets_401_with_a_bearer_challenge(apps, service):
    method, path = GUARDED[service]

    response = anonymous(apps[service], method, path)

    assert_unauthorized(response)
    assert response.headers["www-authenticate"] == 'Bearer realm="order-saga"'


@pytest.mark.parametrize("service", list(GUARDED))
@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_a_bad_token_gets_401_never_a_server_error(apps, service, case):
    method, path = GUARDED[service]

    response = apps[service].request(method, path, headers={"Authorization": BAD_TOKENS[case]})

    assert_unauthorized(response)
    # One well-formed challenge (RFC 6750 §3), whatever the library's message quoted.
    assert re.fullmatch(
        r'Bearer realm="order-saga", error="invalid_token", error_description="[ -!#-\[\]-~]+"',
        response.headers["www-authenticate"],
    ), response.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("order", "/health"),
        ("inventory", "/health/ready"),
        ("payment", "/metrics"),
        ("notification", "/schema/openapi.json"),
    ],
)
def test_health_readiness_metrics_and_the_openapi_document_need_no_token(apps, service, path):
    assert anonymous(apps[service], "GET", path).status_code == 200


def test_the_openapi_document_says_every_route_of_the_service_needs_a_bearer_token(apps):
    document = apps["order"].get("/schema/openapi.json").json()
    assert document["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    assert document["paths"]["/orders"]["post"]["security"] == [{"BearerToken": []}]
    assert "security" not in document["paths"]["/health"]["get"]


def as_customer(customer: str) -> dict[str, str]:
    return TOKENS.bearer(customer)


@pytest.fixture(scope="module")
def two_customers(apps) -> dict[str, Any]:
    """Alice and Bob, each with an account and a completed order; a sku both can buy."""
    sku = unique("mug")
    ok(apps["inventory"].put(f"/products/{sku}", json={**PRODUCT, "on_hand": 100}))
    world: dict[str, Any] = {"sku": sku}
    for name in ("alice", "bob"):
        customer = unique(name)
        ok(
            apps["payment"].post(
                "/accounts", json={"balance_cents": 10_000}, headers=as_customer(customer)
            )
        )
        order = ok(
            apps["order"].post(
                "/orders",
                json={"items": [{"sku": sku, "quantity": 1}]},
                headers=as_customer(customer),
            )
        )
        assert order["customer_id"] == customer, "without customer_id, the order is the caller's"
        until_terminal(apps["order"], order["order_id"])
        eventually_sync(
            lambda order=order: ok(
                apps["notification"].get("/notifications", params={"order_id": order["order_id"]})
            ),
            timeout=30,
        )
        world[name] = {"customer": customer, "order": order["order_id"]}
    return world


def test_a_customer_sees_and_cancels_only_its_own_orders_and_another_customers_is_404(
    apps, two_customers
):
    alice, bob = two_customers["alice"], two_customers["bob"]
    as_bob = as_customer(bob["customer"])
    theirs = alice["order"]

    for service, path in [
        ("order", f"/orders/{theirs}"),
        ("inventory", f"/reservations/{theirs}"),
        ("payment", f"/payments/{theirs}"),
        ("payment", f"/accounts/{alice['customer']}"),
    ]:
        assert_clear_client_error(apps[service].get(path, headers=as_bob), 404)
    assert_clear_client_error(apps["order"].post(f"/orders/{theirs}/cancel", headers=as_bob), 404)
    assert ok(apps["order"].get(f"/orders/{theirs}"))["status"] == "completed", "not cancelled"

    assert ok(apps["order"].get(f"/orders/{bob['order']}", headers=as_bob))["status"] == "completed"
    assert [o["order_id"] for o in ok(apps["order"].get("/orders", headers=as_bob))] == [
        bob["order"]
    ]
    assert ok(apps["payment"].get(f"/payments/{bob['order']}", headers=as_bob))["status"] == (
        "succeeded"
    )
    assert ok(apps["inventory"].get(f"/reservations/{bob['order']}", headers=as_bob))
    assert ok(apps["payment"].get(f"/accounts/{bob['customer']}", headers=as_bob))
    mine = ok(apps["notification"].get("/notifications", headers=as_bob))
    assert {n["order_id"] for n in mine} == {bob["order"]}
    theirs_told = apps["notification"].get(
        "/notifications", params={"order_id": theirs}, headers=as_bob
    )
    assert ok(theirs_told) == []


@pytest.mark.parametrize(
    ("service", "method", "path", "sent"),
    [
        (
            "order",
            "POST",
            "/orders",
            {"customer_id": "{alice}", "items": [{"sku": "x", "quantity": 1}]},
        ),
        ("order", "GET", "/orders?customer_id={alice}", None),
        ("payment", "POST", "/accounts", {"customer_id": "{alice}"}),
        ("payment", "POST", "/accounts/{alice}/deposits", {"amount_cents": 100}),
        ("payment", "GET", "/payments?customer_id={alice}", None),
        ("payment", "GET", "/deposits?customer_id={alice}", None),
        ("notification", "GET", "/notifications?customer_id={alice}", None),
        ("inventory", "PUT", "/products/{sku}", PRODUCT),
        ("inventory", "GET", "/reservations", None),
        ("payment", "GET", "/accounts", None),
    ],
)
def test_what_needs_an_operator_gets_403_with_a_customers_token(
    apps, two_customers, service, method, path, sent
):
    alice = two_customers["alice"]["customer"]
    fill = {"alice": alice, "sku": two_customers["sku"]}
    body = json.loads(json.dumps(sent).replace("{alice}", alice)) if sent else None
    as_bob = as_customer(two_customers["bob"]["customer"])

    response = apps[service].request(method, path.format(**fill), json=body, headers=as_bob)

    assert_clear_client_error(response, 403)
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    # and an operator may
    operator = apps[service].request(method, path.format(**fill), json=body)
    assert operator.status_code in (200, 201, 409), operator.text[:500]


def test_products_are_readable_with_any_customers_token(apps, two_customers):
    as_bob = as_customer(two_customers["bob"]["customer"])
    assert ok(apps["inventory"].get(f"/products/{two_customers['sku']}", headers=as_bob))
    assert ok(apps["inventory"].get("/products", headers=as_bob))


def test_a_customer_opens_and_tops_up_its_own_account(apps):
    carol = unique("carol")

    opened = apps["payment"].post(
        "/accounts", json={"balance_cents": 500}, headers=as_customer(carol)
    )
    topped = apps["payment"].post(
        f"/accounts/{carol}/deposits", json={"amount_cents": 250}, headers=as_customer(carol)
    )

    assert (opened.status_code, opened.json()["customer_id"]) == (201, carol)
    assert (topped.status_code, topped.json()["balance_cents"]) == (201, 750)
    deposits = ok(apps["payment"].get("/deposits", headers=as_customer(carol)))
    assert sorted(d["amount_cents"] for d in deposits) == [250, 500]


def test_one_idempotency_key_of_two_customers_makes_two_orders(apps, two_customers):
    """Keys are each customer's own: Bob's key never replays Alice's order to him."""
    key, sku = unique("key"), two_customers["sku"]
    order = {"items": [{"sku": sku, "quantity": 1}]}
    placed = [
        ok(
            apps["order"].post(
                "/orders",
                json=order,
                headers={"Idempotency-Key": key, **as_customer(two_customers[name]["customer"])},
            )
        )
        for name in ("alice", "bob")
    ]
    assert placed[0]["order_id"] != placed[1]["order_id"]
    assert [p["customer_id"] for p in placed] == [
        two_customers["alice"]["customer"],
        two_customers["bob"]["customer"],
    ]
