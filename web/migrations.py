"""Applying a service's alembic history: on start, by `python -m <service> migrate`, from tools."""

from __future__ import annotations

import importlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config

# Any constant will do: one lock per database, so replicas starting together migrate in turn.
_MIGRATION_LOCK = 7_013_001


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
    module = importlib.import_module(package)
    assert module.__file__ is not None
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(module.__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg
