"""What payment_service does when an event arrives: charge a reserved order, refund a cancelled one.

Handlers change payments and accounts and stage what they emit in the session they are given; the
consumer owns the transaction. The order's payment row is locked first (`FOR UPDATE`), then the
account, so that events for one order take turns and a balance is never read stale.

The consumer's inbox claim has locked the order before a handler runs, even when it has no
payment row yet, so that its first two events, StockReserved racing OrderCancelled, take turns
rather than both inserting one.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

import outbox
from contracts import (
    OrderCancelled,
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
    StockReserved,
)
from outbox import PoisonMessage
from payment_service.models import ORDER_CANCELLED, Account, Payment


async def charge_payment(session: AsyncSession, event: StockReserved) -> None:
    if event.amount_cents < 0:
        raise PoisonMessage(f"cannot charge a negative amount ({event.amount_cents})")
    payment = await _locked_payment(session, event.order_id)
    if payment is not None:
        # A copy of StockReserved with another id; or the order was cancelled before it came.
        if payment.answer_cancelled(event.amount_cents):
            outbox.add(
                session,
                PaymentFailed(
                    order_id=event.order_id, customer_id=event.customer_id, reason=ORDER_CANCELLED
                ),
            )
        return
    account = await session.get(Account, event.customer_id, with_for_update=True)
    if account is None:
        _refuse(session, event, "no_account")
    elif not account.debit(event.amount_cents):
        _refuse(session, event, "insufficient_funds")
    else:
        payment = Payment.succeeded(event.order_id, event.customer_id, event.amount_cents)
        session.add(payment)
        assert payment.payment_id is not None
        outbox.add(
            session,
            PaymentSucceeded(
                order_id=payment.order_id,
                customer_id=payment.customer_id,
                payment_id=payment.payment_id,
                amount_cents=payment.amount_cents,
            ),
        )


async def refund_payment(session: AsyncSession, event: OrderCancelled) -> None:
    payment = await _locked_payment(session, event.order_id)
    if payment is None:
        # Cancelled before its StockReserved reached us: remember it, so that we never charge it.
        session.add(Payment.cancelled_before_charge(event.order_id, event.customer_id))
        return
    if not payment.refund():
        return  # nothing was taken, or it was already given back
    account = await session.get(Account, payment.customer_id, with_for_update=True)
    if account is None:
        # Accounts are never deleted, so a charged payment without one is corrupt data.
        raise PoisonMessage(f"no account {payment.customer_id!r} to refund order {event.order_id}")
    account.credit(payment.amount_cents)
    assert payment.payment_id is not None
    outbox.add(
        session,
        PaymentRefunded(
            order_id=payment.order_id,
            customer_id=payment.customer_id,
            payment_id=payment.payment_id,
            amount_cents=payment.amount_cents,
        ),
    )


def _refuse(session: AsyncSession, event: StockReserved, reason: str) -> None:
    session.add(Payment.failed(event.order_id, event.customer_id, event.amount_cents, reason))
    outbox.add(
        session,
        PaymentFailed(order_id=event.order_id, customer_id=event.customer_id, reason=reason),  # type: ignore[arg-type]
    )


async def _locked_payment(session: AsyncSession, order_id: uuid.UUID) -> Payment | None:
    """The order's payment, if any, locked (the order itself is locked by the inbox claim)."""
    return await session.get(Payment, order_id, with_for_update=True)
