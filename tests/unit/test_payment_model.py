"""An account's balance is its deposits less its charges plus its refunds, never below zero; a
payment is charged once, refunded once, and a cancelled order is never charged."""

import uuid

from payment_service.models import ORDER_CANCELLED, Account, Payment, Status


def test_deposits_add_to_the_balance_and_each_is_recorded():
    account = Account.open("alice")
    assert account.balance_cents == 0
    first = account.deposit(1500)
    second = account.deposit(500)
    assert account.balance_cents == 2000
    assert (first.customer_id, first.amount_cents, second.amount_cents) == ("alice", 1500, 500)
    assert first.deposit_id != second.deposit_id


def test_a_debit_is_refused_when_the_balance_is_short():
    account = Account.open("alice")
    account.deposit(1000)
    assert not account.debit(1001)
    assert account.balance_cents == 1000, "a refused debit takes nothing"
    assert account.debit(1000)
    assert account.balance_cents == 0


def test_a_credit_gives_a_charge_back():
    account = Account.open("alice")
    account.deposit(1000)
    account.debit(700)
    account.credit(700)
    assert account.balance_cents == 1000


def test_a_succeeded_payment_has_an_id_and_is_refunded_once():
    payment = Payment.succeeded(uuid.uuid4(), "alice", 3000)
    assert payment.status == Status.SUCCEEDED
    assert payment.payment_id is not None
    assert payment.refund()
    assert payment.status == Status.REFUNDED
    assert not payment.refund(), "a second OrderCancelled refunds nothing"


def test_a_failed_payment_took_nothing_and_refunds_nothing():
    payment = Payment.failed(uuid.uuid4(), "alice", 3000, "insufficient_funds")
    assert (payment.status, payment.payment_id, payment.reason) == (
        Status.FAILED,
        None,
        "insufficient_funds",
    )
    assert not payment.refund()
    assert not payment.answer_cancelled(3000), "only a tombstone answers order_cancelled"


def test_a_tombstone_answers_its_late_stock_reserved_once_and_is_never_charged():
    tombstone = Payment.cancelled_before_charge(uuid.uuid4(), "alice")
    assert (tombstone.status, tombstone.reason, tombstone.answered) == (
        Status.FAILED,
        ORDER_CANCELLED,
        False,
    )
    assert tombstone.answer_cancelled(3000)
    assert (tombstone.answered, tombstone.amount_cents) == (True, 3000)
    assert not tombstone.answer_cancelled(3000), "a copy of StockReserved is not answered again"
    assert not tombstone.refund(), "nothing was taken"
    assert tombstone.payment_id is None
