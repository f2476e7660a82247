"""What payment_service does when an event arrives (charge a reserved order, refund a cancelled
one) and when a customer opens an account or pays money in.

Handlers take the payments and accounts their transaction loaded and locked (`Ledger`: the
orders' payments, then their customers' accounts, so that a balance is never read stale), change
them and emit what follows; they never touch the database, and the consumer owns the transaction.

The consumer's inbox claim has locked the order before a handler runs, even when it has no
payment row yet, so that its first two events, StockReserved racing OrderCancelled, take turns
rather than both inserting one.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from contracts import (
    OrderCancelled,
    PaymentFailed,
    PaymentFailReason,
    PaymentRefunded,
    PaymentSucceeded,
    StockReserved,
)
from outbox import PoisonMessage
from payment_service.models import ORDER_CANCELLED, Account, AccountExists, Payment
from payment_service.store import Ledger


async def open_account(session: AsyncSession, customer_id: str, balance_cents: int) -> Account:
    """A new account (`AccountExists` if there is one); the opening balance is its first deposit.
    Of two requests opening one account, the second's insert fails: a 409 too."""
    if await session.get(Account, customer_id) is not None:
        raise AccountExists(customer_id)
    account = Account.open(customer_id)
    session.add(account)
    if balance_cents > 0:
        session.add(account.deposit(balance_cents))
    return account


async def deposit(session: AsyncSession, customer_id: str, amount_cents: int) -> Account | None:
    """Pay money into the account, locked so that a charge never reads its balance stale; None if
    there is no such account."""
    account = await session.get(Account, customer_id, with_for_update=True)
    if account is not None:
        session.add(account.deposit(amount_cents))
    return account


def charge_payment(ledger: Ledger, event: StockReserved) -> None:
    if event.amount_cents < 0:
        raise PoisonMessage(f"cannot charge a negative amount ({event.amount_cents})")
    payment = ledger.payment(event.order_id)
    if payment is not None:
        # A copy of StockReserved with another id; or the order was cancelled before it came.
        if payment.answer_cancelled(event.amount_cents):
            ledger.emit(
                PaymentFailed(
                    order_id=event.order_id, customer_id=event.customer_id, reason=ORDER_CANCELLED
                )
            )
        return
    account = ledger.account(event.customer_id)
    if account is None:
        _refuse(ledger, event, "no_account")
    elif not account.debit(event.amount_cents):
        _refuse(ledger, event, "insufficient_funds")
    else:
        payment = ledger.payments.add(
            Payment.succeeded(event.order_id, event.customer_id, event.amount_cents)
        )
        assert payment.payment_id is not None
        ledger.emit(
            PaymentSucceeded(
                order_id=payment.order_id,
                customer_id=payment.customer_id,
                payment_id=payment.payment_id,
                amount_cents=payment.amount_cents,
            )
        )


def refund_payment(ledger: Ledger, event: OrderCancelled) -> None:
    payment = ledger.payment(event.order_id)
    if payment is None:
        # Cancelled before its StockReserved reached us: remember it, so that we never charge it.
        ledger.payments.add(Payment.cancelled_before_charge(event.order_id, event.customer_id))
        return
    if not payment.refund():
        return  # nothing was taken, or it was already given back
    account = ledger.account(payment.customer_id)
    if account is None:
        # Accounts are never deleted, so a charged payment without one is corrupt data.
        raise PoisonMessage(f"no account {payment.customer_id!r} to refund order {event.order_id}")
    account.credit(payment.amount_cents)
    assert payment.payment_id is not None
    ledger.emit(
        PaymentRefunded(
            order_id=payment.order_id,
            customer_id=payment.customer_id,
            payment_id=payment.payment_id,
            amount_cents=payment.amount_cents,
        )
    )


def _refuse(ledger: Ledger, event: StockReserved, reason: PaymentFailReason) -> None:
    ledger.payments.add(
        Payment.failed(event.order_id, event.customer_id, event.amount_cents, reason)
    )
    ledger.emit(
        PaymentFailed(order_id=event.order_id, customer_id=event.customer_id, reason=reason)
    )
