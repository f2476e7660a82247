"""How payment_service keeps its money: the payments and accounts one transaction works on,
loaded and locked together up front, written back together (`outbox.unit`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Self

from sqlalchemy import ARRAY, String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import UUID

from contracts import Event, OrderCancelled, StockReserved
from outbox.transaction import Transaction, compiled
from outbox.unit import Rows, Unit, ids, load_together
from payment_service.models import Account, Payment

_PAYMENTS = Payment.__table__.c
_ACCOUNTS = Account.__table__.c
#: Built once. Payments first (one per order, each order already locked by the inbox claim), then
#: accounts in customer order: every transaction takes its locks in that order, so two of them
#: that charge or refund the same customer take turns instead of deadlocking.
_LOCK_PAYMENTS = compiled(
    select(*_PAYMENTS)
    .where(_PAYMENTS.order_id == any_(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))))
    .order_by(_PAYMENTS.order_id)
    .with_for_update()
)
_LOCK_ACCOUNTS = compiled(
    select(*_ACCOUNTS)
    .where(_ACCOUNTS.customer_id == any_(bindparam("customers", type_=ARRAY(String))))
    .order_by(_ACCOUNTS.customer_id)
    .with_for_update()
)


class Ledger(Unit):
    """The orders' payments and their customers' accounts, each locked."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx)
        self.payments = Rows(Payment)
        self.accounts = Rows(Account)

    @classmethod
    async def load(cls, tx: Transaction, events: Sequence[Event]) -> Self:
        """Every event payment_service consumes names the order's customer: their accounts are
        the ones a charge or a refund may touch. Both statements go out together."""
        ledger = cls(tx)
        customers = {e.customer_id for e in events if isinstance(e, StockReserved | OrderCancelled)}
        await load_together(
            tx,
            (ledger.payments, _LOCK_PAYMENTS, {"ids": ids(events)}),
            (ledger.accounts, _LOCK_ACCOUNTS, {"customers": sorted(customers)}),
        )
        return ledger

    def payment(self, order_id: uuid.UUID) -> Payment | None:
        return self.payments.get(order_id)

    def account(self, customer_id: str) -> Account | None:
        return self.accounts.get(customer_id)
