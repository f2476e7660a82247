"""Throwaway PostgreSQL databases: created and dropped with the admin URL, migrated like a service's."""

from __future__ import annotations

import asyncio
import secrets

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from harness.wait import retry
from tools.postgres import libpq
from web.migrations import upgrade


def create_database(admin_url: str, name: str) -> str:
    """Create database `t_<hex>_<name>`; returns its SQLAlchemy URL (same server and role)."""
    database = f"t_{secrets.token_hex(4)}_{name}"[:63]
    with psycopg.connect(libpq(admin_url), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return make_url(admin_url).set(database=database).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str, *, patience: float = 0.0) -> None:
    """Drop the database of `url`, its sessions with it; with `patience`, retry that many seconds
    (on a busy shared server, the admin's connection slot may take a while to free up)."""
    database = make_url(url).database
    assert database, f"no database in {url}"

    def drop() -> None:
        with psycopg.connect(libpq(admin_url), autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )

    retry(drop, on=psycopg.OperationalError, timeout=patience, interval=1.0)


async def migrate(package: str, database_url: str) -> None:
    """Apply `package`'s alembic history (e.g. "order_service") to the database."""
    await asyncio.to_thread(upgrade, package, database_url)
