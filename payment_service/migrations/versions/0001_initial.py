"""accounts, deposits, payments, and the messaging tables

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from outbox.migrations import create_messaging_tables, drop_messaging_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables()
    op.create_table(
        "accounts",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("balance_cents", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("balance_cents >= 0", name="ck_accounts_balance_not_negative"),
    )
    op.create_table(
        "deposits",
        sa.Column("deposit_id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "customer_id", sa.String(64), sa.ForeignKey("accounts.customer_id"), nullable=False
        ),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_deposits_customer_created", "deposits", ["customer_id", "created_at"])
    op.create_table(
        "payments",
        sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("customer_id", sa.String(64), nullable=False, index=True),
        sa.Column("payment_id", UUID(as_uuid=True), unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("answered", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("payments")
    op.drop_table("deposits")
    op.drop_table("accounts")
    drop_messaging_tables()
