"""Connection strings: the services' SQLAlchemy URLs as the libpq strings psycopg connects with."""

from __future__ import annotations

from sqlalchemy.engine import make_url


def libpq(url: str, database: str | None = None) -> str:
    """`postgresql+psycopg://…` (or a libpq URL) as a libpq URL, optionally for another database."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)
