"""Alembic support shared by the four services: the messaging tables and a locked `env.py`."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command, context, op
from alembic.config import Config
from sqlalchemy.dialects.postgresql import UUID

# Any constant will do: one lock per database, so replicas starting together migrate in turn.
_MIGRATION_LOCK = 7_013_001


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


def run_env() -> None:
    """Body of every service's `migrations/env.py`: online migrations under an advisory lock."""
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None, "alembic_config() sets sqlalchemy.url"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
        try:
            context.configure(connection=connection, transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
            connection.commit()
    engine.dispose()


def upgrade(package: str, database_url: str, revision: str = "head") -> None:
    """Apply `package`'s migrations (e.g. "order_service") to `database_url`."""
    command.upgrade(alembic_config(package, database_url), revision)


def alembic_config(package: str, database_url: str) -> Config:
    import importlib

    module = importlib.import_module(package)
    assert module.__file__ is not None
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(module.__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg
