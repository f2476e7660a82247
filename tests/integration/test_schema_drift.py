"""The schema is declared once: each service's migrations build exactly the tables its models
(`<service>/models.py`) and the messaging runtime (`outbox/tables.py`) declare.

Compared by alembic's autogenerate, on a database migrated from scratch: tables, columns, their
types, nullability and server defaults, indexes, unique constraints and foreign keys. (Alembic does
not compare CHECK constraints.) A change to a model needs its migration, and the other way round.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext

from outbox.tables import MessagingBase

SERVICES = ("order_service", "inventory_service", "payment_service", "notification_service")

MigratedDatabase = Callable[[str], Awaitable[str]]


def declared(service: str) -> list[sa.MetaData]:
    """What the service's code declares: its models' tables and the messaging runtime's."""
    models = importlib.import_module(f"{service}.models")
    return [models.Base.metadata, MessagingBase.metadata]


def differences(url: str, metadata: Sequence[sa.MetaData]) -> tuple[list[Any], str]:
    """Alembic's differences between the database at `url` and `metadata` (`compare_metadata`'s),
    and the body of a migration that would bring the database to `metadata`, to show in a failure."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            upgrade = produce_migrations(context, list(metadata)).upgrade_ops
            assert upgrade is not None
            return upgrade.as_diffs(), render_python_code(upgrade, migration_context=context)
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", SERVICES)
async def test_a_database_migrated_from_scratch_is_what_the_services_models_declare(
    service: str, migrated_database: MigratedDatabase
) -> None:
    url = await migrated_database(service)

    found, migration = await asyncio.to_thread(differences, url, declared(service))

    assert found == [], (
        f"{service}'s migrations and models disagree. A migration that would bring the database"
        f" to the models (or change the models instead, where the migration is right):\n"
        f"{migration}"
    )


async def test_the_comparison_sees_a_retyped_column_a_new_column_index_or_default(
    migrated_database: MigratedDatabase,
) -> None:
    """What a model change without its migration looks like: each kind is reported."""
    url = await migrated_database("order_service")
    drifted = sa.MetaData()
    for metadata in declared("order_service"):
        for table in metadata.tables.values():
            table.to_metadata(drifted)
    orders = drifted.tables["orders"]
    orders.c.total_cents.type = sa.Integer()
    orders.append_column(sa.Column("coupon", sa.String(32)))
    sa.Index("ix_orders_status", orders.c.status)
    drifted.tables["outbox"].c.created_at.server_default = None

    found, migration = await asyncio.to_thread(differences, url, [drifted])

    flat = [d for entry in found for d in (entry if isinstance(entry, list) else [entry])]
    kinds = {(d[0], d[3] if d[0].startswith("modify") else None) for d in flat}
    assert kinds == {
        ("modify_type", "total_cents"),
        ("add_column", None),
        ("add_index", None),
        ("modify_default", "created_at"),
    }, found
    assert "op.add_column('orders', sa.Column('coupon'" in migration
