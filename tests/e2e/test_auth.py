"""Who may do what, over real processes: a customer's token reaches its own orders only, and a
request without a valid token gets nowhere."""

import httpx
import pytest

from harness.wait import eventually_sync
from tools.client import unique

pytestmark = pytest.mark.e2e


def test_a_customer_cannot_see_cancel_or_follow_another_customers_order(shop, system):
    sku, alice, bob = unique("book"), unique("alice"), unique("bob")
    shop.stock(sku, on_hand=10, price_cents=1500)
    shop.open_account(alice, balance_cents=5000)
    shop.open_account(bob, balance_cents=5000)
    order_id = shop.wait_until_terminal(shop.place(alice, [(sku, 2)])["order_id"])["order_id"]
    eventually_sync(lambda: shop.notifications(order_id=order_id))

    with httpx.Client(timeout=30, headers=system.tokens.bearer(bob)) as as_bob:
        for url in (
            f"{system.order}/orders/{order_id}",
            f"{system.payment}/payments/{order_id}",
            f"{system.inventory}/reservations/{order_id}",
            f"{system.payment}/accounts/{alice}",
        ):
            assert as_bob.get(url).status_code == 404, url
        assert as_bob.post(f"{system.order}/orders/{order_id}/cancel").status_code == 404
        told = as_bob.get(f"{system.notification}/notifications", params={"order_id": order_id})
        assert told.json() == []
        assert as_bob.get(f"{system.order}/orders").json() == []
        listed = as_bob.get(f"{system.order}/orders", params={"customer_id": alice})
        assert listed.status_code == 403

    assert shop.order(order_id)["status"] == "completed", "Bob's cancel changed nothing"
    assert shop.balance(alice) == 5000 - 3000
    with httpx.Client(timeout=30, headers=system.tokens.bearer(alice)) as as_alice:
        assert as_alice.post(f"{system.order}/orders/{order_id}/cancel").status_code == 202
    eventually_sync(lambda: shop.balance(alice) == 5000, timeout=30)


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token"], ids=["none", "garbled"])
def test_every_service_answers_401_without_a_valid_token_and_stays_open_for_health(
    system, authorization
):
    headers = {"Authorization": authorization} if authorization else {}
    for url in (
        f"{system.order}/orders",
        f"{system.inventory}/products",
        f"{system.payment}/accounts",
        f"{system.notification}/notifications",
    ):
        response = httpx.get(url, headers=headers, timeout=30)
        assert response.status_code == 401, url
        assert response.headers["www-authenticate"].startswith("Bearer"), url
        assert httpx.get(url.rsplit("/", 1)[0] + "/health/ready", timeout=30).status_code == 200
