"""Throwaway PostgreSQL databases, created and dropped with the admin URL."""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from tools.postgres import libpq


def create_database(admin_url: str, name: str) -> str:
    """Create database `t_<hex>_<name>`; returns its SQLAlchemy URL (same server and role)."""
    database = f"t_{secrets.token_hex(4)}_{name}"[:63]
    with psycopg.connect(libpq(admin_url), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return make_url(admin_url).set(database=database).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    database = make_url(url).database
    with psycopg.connect(libpq(admin_url), autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
