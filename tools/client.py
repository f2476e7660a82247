"""A thin HTTP client for the four services, used by the demo, the checker, the benchmark and tests.

With `tokens`, it acts as a user's client would: as the customer when it places an order, opens
an account or pays money in, and as an operator (scope admin) for the rest.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from harness import http_client
from harness.wait import poll
from tools.tokens import Tokens

TERMINAL = ("completed", "cancelled")


@dataclass(frozen=True)
class Urls:
    order: str = "http://127.0.0.1:8000"
    inventory: str = "http://127.0.0.1:8001"
    payment: str = "http://127.0.0.1:8002"
    notification: str = "http://127.0.0.1:8003"


class Shop:
    """Place orders, stock products, fund accounts and read everything back, over HTTP."""

    def __init__(
        self, urls: Urls | None = None, timeout: float = 10.0, tokens: Tokens | None = None
    ) -> None:
        self.urls = urls or Urls()
        self.tokens = tokens
        self.http = http_client.client(timeout=timeout, auth=tokens.auth() if tokens else None)

    def as_customer(self, customer_id: str) -> Any:
        """`auth=` of a request the customer makes itself."""
        return self.tokens.auth(customer_id) if self.tokens else httpx.USE_CLIENT_DEFAULT

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Shop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # inventory
    def stock(
        self, sku: str, on_hand: int, price_cents: int, name: str | None = None
    ) -> dict[str, Any]:
        response = self.http.put(
            f"{self.urls.inventory}/products/{sku}",
            json={"name": name or sku, "price_cents": price_cents, "on_hand": on_hand},
        )
        response.raise_for_status()
        return response.json()

    def product(self, sku: str) -> dict[str, Any]:
        response = self.http.get(f"{self.urls.inventory}/products/{sku}")
        response.raise_for_status()
        return response.json()

    def products(self) -> list[dict[str, Any]]:
        response = self.http.get(f"{self.urls.inventory}/products")
        response.raise_for_status()
        return response.json()

    def reservation(self, order_id: str) -> dict[str, Any] | None:
        response = self.http.get(f"{self.urls.inventory}/reservations/{order_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    # payment
    def open_account(self, customer_id: str, balance_cents: int = 0) -> dict[str, Any]:
        response = self.http.post(
            f"{self.urls.payment}/accounts",
            json={"customer_id": customer_id, "balance_cents": balance_cents},
            auth=self.as_customer(customer_id),
        )
        response.raise_for_status()
        return response.json()

    def deposit(
        self, customer_id: str, amount_cents: int, key: str | None = None
    ) -> dict[str, Any]:
        response = self.http.post(
            f"{self.urls.payment}/accounts/{customer_id}/deposits",
            json={"amount_cents": amount_cents},
            headers={"Idempotency-Key": key} if key else None,
            auth=self.as_customer(customer_id),
        )
        response.raise_for_status()
        return response.json()

    def balance(self, customer_id: str) -> int:
        response = self.http.get(f"{self.urls.payment}/accounts/{customer_id}")
        response.raise_for_status()
        return int(response.json()["balance_cents"])

    def payment(self, order_id: str) -> dict[str, Any] | None:
        response = self.http.get(f"{self.urls.payment}/payments/{order_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    # orders
    def place(
        self, customer_id: str, items: list[tuple[str, int]], key: str | None = None
    ) -> dict[str, Any]:
        response = self.place_raw(customer_id, items, key)
        response.raise_for_status()
        return response.json()

    def place_raw(
        self, customer_id: str, items: list[tuple[str, int]], key: str | None = None
    ) -> httpx.Response:
        return self.http.post(
            f"{self.urls.order}/orders",
            json={
                "customer_id": customer_id,
                "items": [{"sku": sku, "quantity": quantity} for sku, quantity in items],
            },
            headers={"Idempotency-Key": key} if key else None,
            auth=self.as_customer(customer_id),
        )

    def order(self, order_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.urls.order}/orders/{order_id}")
        response.raise_for_status()
        return response.json()

    def orders(self, customer_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if customer_id:
            params["customer_id"] = customer_id
        response = self.http.get(f"{self.urls.order}/orders", params=params)
        response.raise_for_status()
        return response.json()

    def cancel(self, order_id: str) -> httpx.Response:
        return self.http.post(f"{self.urls.order}/orders/{order_id}/cancel")

    def wait_until_terminal(self, order_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The order once completed or cancelled; as it is after `timeout` if it is neither."""
        return poll(
            lambda: self.order(order_id),
            until=lambda order: order["status"] in TERMINAL,
            timeout=timeout,
            interval=0.02,
        )

    # notifications
    def notifications(
        self, order_id: str | None = None, customer_id: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"order_id": order_id, "customer_id": customer_id}.items() if v}
        response = self.http.get(f"{self.urls.notification}/notifications", params=params)
        response.raise_for_status()
        return response.json()


def unique(prefix: str) -> str:
    """A name no earlier run used: sku and customer ids of demos and tests never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
