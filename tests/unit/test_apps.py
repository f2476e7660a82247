"""Each service's app builds as Litestar 3 will accept it: no deprecated parameter or body style."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
from litestar import Litestar
from litestar.exceptions import LitestarDeprecationWarning

from inventory_service.app import create_app as inventory_app
from notification_service.app import create_app as notification_app
from order_service.app import create_app as order_app
from payment_service.app import create_app as payment_app


@pytest.mark.parametrize(
    "create_app",
    [order_app, inventory_app, payment_app, notification_app],
    ids=["order", "inventory", "payment", "notification"],
)
def test_an_app_builds_without_a_litestar_deprecation_warning(
    create_app: Callable[[], Litestar],
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_app()

    deprecated = [
        str(w.message)
        for w in caught
        if issubclass(w.category, LitestarDeprecationWarning)
        or (issubclass(w.category, DeprecationWarning) and "litestar" in w.filename)
    ]
    assert deprecated == []
