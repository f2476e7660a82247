"""The messaging tables in alembic: each service's first revision creates them (and drops them)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID


def create_messaging_tables() -> None:
    """Create outbox, inbox and idempotency tables; called from each service's first revision."""
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False, index=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("causation_id", UUID(as_uuid=True)),
        sa.Column("traceparent", sa.String(55), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.clock_timestamp(),
        ),
        sa.Column("published_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "ix_outbox_unpublished", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(128), primary_key=True),
        sa.Column("message_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False, index=True),
        sa.Column("emitted_by", sa.String(64)),
        sa.Column(
            "handled_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.clock_timestamp(),
            index=True,
        ),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response_body", sa.LargeBinary, nullable=False),
        sa.Column("location", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def drop_messaging_tables() -> None:
    for table in ("idempotency_keys", "inbox", "outbox"):
        op.drop_table(table)
