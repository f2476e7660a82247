"""notifications, and the messaging tables

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
        "notifications",
        sa.Column("notification_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("source_event_id", UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_notifications_order_created", "notifications", ["order_id", "created_at"])
    op.create_index(
        "ix_notifications_customer_created", "notifications", ["customer_id", "created_at"]
    )
    op.create_index("ix_notifications_created", "notifications", ["created_at"])


def downgrade() -> None:
    op.drop_table("notifications")
    drop_messaging_tables()
