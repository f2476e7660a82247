"""orders, and the messaging tables

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

from outbox.migrations import create_messaging_tables, drop_messaging_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables()
    op.create_table(
        "orders",
        sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("customer_id", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("items", JSONB, nullable=False),
        sa.Column("total_cents", sa.BigInteger),
        sa.Column("cancel_reason", sa.String(32)),
        sa.Column("stock_committed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_orders_customer_created", "orders", ["customer_id", "created_at"])
    op.create_index(
        "ix_orders_open_deadline",
        "orders",
        ["deadline_at"],
        postgresql_where=sa.text("status IN ('pending', 'reserved')"),
    )


def downgrade() -> None:
    op.drop_table("orders")
    drop_messaging_tables()
