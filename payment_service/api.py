"""payment_service's HTTP API: open accounts, deposit money, look at payments (docs/spec.md §6).

Deposits and payments can be listed too, so that money can be audited: a balance equals the
account's deposits, minus its charged payments (succeeded or refunded), plus its refunded ones.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath, JSONBody
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service import handlers
from payment_service.models import Account, AccountExists, Deposit, Payment
from web import IdempotencyKeyHeader, Principal, remember, replay, request_hash
from web.params import DEFAULT_PAGE, Limit, Name, NameInPath, Offset, SomeCustomerId

#: Largest amount one request may move: far above any real payment, far below bigint overflow.
MAX_CENTS = 10**12


class OpenAccount(msgspec.Struct, forbid_unknown_fields=True):
    #: The caller's own id if left out; another customer's only with an operator's token.
    customer_id: Name | None = None
    balance_cents: Annotated[int, msgspec.Meta(ge=0, le=MAX_CENTS)] = 0


class MakeDeposit(msgspec.Struct, forbid_unknown_fields=True):
    amount_cents: Annotated[int, msgspec.Meta(gt=0, le=MAX_CENTS)]


class AccountOut(msgspec.Struct):
    customer_id: str
    balance_cents: int

    @classmethod
    def of(cls, account: Account) -> AccountOut:
        return cls(customer_id=account.customer_id, balance_cents=account.balance_cents)


class DepositOut(msgspec.Struct):
    deposit_id: uuid.UUID
    customer_id: str
    amount_cents: int
    created_at: datetime

    @classmethod
    def of(cls, deposit: Deposit) -> DepositOut:
        return cls(
            deposit_id=deposit.deposit_id,
            customer_id=deposit.customer_id,
            amount_cents=deposit.amount_cents,
            created_at=deposit.created_at,
        )


class PaymentOut(msgspec.Struct):
    order_id: uuid.UUID
    customer_id: str
    payment_id: uuid.UUID | None
    status: str
    amount_cents: int
    reason: str | None

    @classmethod
    def of(cls, payment: Payment) -> PaymentOut:
        return cls(
            order_id=payment.order_id,
            customer_id=payment.customer_id,
            payment_id=payment.payment_id,
            status=payment.status,
            amount_cents=payment.amount_cents,
            reason=payment.reason,
        )


class AccountController(Controller):
    path = "/accounts"
    tags = ["accounts"]

    @post("/", status_code=201)
    async def open_account(
        self,
        data: JSONBody[OpenAccount],
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
    ) -> Response[AccountOut]:
        """Open an account (409 if it exists); the opening balance is recorded as a deposit."""
        customer_id = principal.act_for(data.customer_id)
        try:
            account = await handlers.open_account(session, customer_id, data.balance_cents)
        except AccountExists as exc:
            raise ClientException(status_code=409, detail=str(exc)) from exc
        return Response(
            AccountOut.of(account),
            status_code=201,
            headers={"Location": f"/accounts/{account.customer_id}"},
        )

    @get("/")
    async def list_accounts(
        self,
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
        limit: Limit = DEFAULT_PAGE,
        offset: Offset = 0,
    ) -> list[AccountOut]:
        """Every account, by customer id, a page at a time (for audits, by operators)."""
        principal.require_admin()
        query = select(Account).order_by(Account.customer_id).limit(limit).offset(offset)
        return [AccountOut.of(account) for account in await session.scalars(query)]

    @get("/{customer_id:str}")
    async def get_account(
        self,
        customer_id: NameInPath,
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
    ) -> AccountOut:
        account = await session.get(Account, customer_id) if principal.owns(customer_id) else None
        if account is None:
            raise NotFoundException(f"no account {customer_id}")
        return AccountOut.of(account)

    @post("/{customer_id:str}/deposits", status_code=201)
    async def deposit(
        self,
        customer_id: NameInPath,
        data: JSONBody[MakeDeposit],
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[AccountOut] | Response[bytes]:
        """Pay money in (into another's account, as an operator); answers the new balance."""
        principal.act_for(customer_id)
        body_hash = request_hash(data)
        scope = f"deposits:{customer_id}"
        if idempotency_key is not None:
            previous = await replay(session, scope, idempotency_key, body_hash)
            if previous is not None:
                return previous
        account = await handlers.deposit(session, customer_id, data.amount_cents)
        if account is None:
            raise NotFoundException(f"no account {customer_id}")
        body = AccountOut.of(account)
        if idempotency_key is not None:
            remember(session, scope, idempotency_key, body_hash, 201, body)
        return Response(body, status_code=201)


class DepositController(Controller):
    path = "/deposits"
    tags = ["accounts"]

    @get("/")
    async def list_deposits(
        self,
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
        customer_id: SomeCustomerId = None,
        limit: Limit = DEFAULT_PAGE,
        offset: Offset = 0,
    ) -> list[DepositOut]:
        """Deposits, oldest first: the caller's own; an operator's, everyone's or one customer's."""
        customer_id = principal.listing(customer_id)
        query = (
            select(Deposit)
            .order_by(Deposit.created_at, Deposit.deposit_id)
            .limit(limit)
            .offset(offset)
        )
        if customer_id is not None:
            query = query.where(Deposit.customer_id == customer_id)
        return [DepositOut.of(deposit) for deposit in await session.scalars(query)]


class PaymentController(Controller):
    path = "/payments"
    tags = ["payments"]

    @get("/{order_id:uuid}")
    async def get_payment(
        self,
        order_id: FromPath[uuid.UUID],
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
    ) -> PaymentOut:
        """What was done about an order's payment; `payment_id` is null unless it was charged."""
        payment = await session.get(Payment, order_id)
        if payment is None or not principal.owns(payment.customer_id):
            raise NotFoundException(f"no payment for order {order_id}")
        return PaymentOut.of(payment)

    @get("/")
    async def list_payments(
        self,
        session: NamedDependency[AsyncSession],
        principal: NamedDependency[Principal],
        customer_id: SomeCustomerId = None,
        limit: Limit = DEFAULT_PAGE,
        offset: Offset = 0,
    ) -> list[PaymentOut]:
        """Payments, oldest first: the caller's own; an operator's, everyone's or one customer's."""
        customer_id = principal.listing(customer_id)
        query = (
            select(Payment)
            .order_by(Payment.created_at, Payment.order_id)
            .limit(limit)
            .offset(offset)
        )
        if customer_id is not None:
            query = query.where(Payment.customer_id == customer_id)
        return [PaymentOut.of(payment) for payment in await session.scalars(query)]
