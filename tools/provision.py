"""`python -m tools.provision`: each service's own RabbitMQ user and PostgreSQL role, and no more rights.

Run by `make up` (through `tools.services up`) and by the `provision` job of compose.yaml; safe to
run again. For each service, named `<service>` on both servers, with password `<service>-dev`
unless `<SERVICE>_PASSWORD` is set (`ORDER_SERVICE_PASSWORD=…`):

- RabbitMQ: configure, write and read only the exchange `events` and the service's own resources
  (`<service>.…`: its queues, their dead-letter queues, its dead-letter exchange); on `events`, publish
  only the routing keys it emits and bind only those it consumes (topic permissions). Everything is
  derived from the service's manifest.
- PostgreSQL: a LOGIN role that owns the service's database and everything in it; CONNECT is
  revoked from PUBLIC, so no other service's role can even connect.

And one read-only PostgreSQL role for the operator tools (`make trace`, the delivery audit, the
benchmark's hop table), `saga_reader` with password `saga_reader-dev` unless
`SAGA_READER_PASSWORD` is set: it may connect to each service's database and SELECT its `outbox`
and `inbox`, nothing else. Those tables exist once the service has migrated, so the grants are
applied after `--migrate` (and again on every run: a migration that recreates a table drops them).

Rights are granted through the management HTTP API and as the PostgreSQL superuser: given by
`RABBITMQ_API` (with credentials) and `POSTGRES_ADMIN_DSN`; the vhost by `RABBITMQ_VHOST`.
`--migrate` then applies each service's migrations as its own role (`make migrate`).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from contracts import event_name
from harness.rabbitmq import ManagementApi
from harness.wait import retry
from inventory_service.messaging import MANIFEST as INVENTORY
from notification_service.messaging import MANIFEST as NOTIFICATION
from order_service.messaging import MANIFEST as ORDER
from outbox import Manifest
from outbox.manifest import dead_letter_queue
from outbox.topology import EXCHANGE, dead_letter_exchange
from payment_service.messaging import MANIFEST as PAYMENT
from tools.postgres import libpq

MANIFESTS: dict[str, Manifest] = {m.service: m for m in (ORDER, INVENTORY, PAYMENT, NOTIFICATION)}

POSTGRES_ADMIN_DSN = os.environ.get(
    "POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_API = os.environ.get("RABBITMQ_API", "http://guest:guest@127.0.0.1:15672")
RABBITMQ_VHOST = os.environ.get("RABBITMQ_VHOST", "/")
#: Where services reach the broker; credentials and vhost are filled in per service.
AMQP_SERVER = os.environ.get("AMQP_SERVER", "amqp://127.0.0.1:5672/")


def password(service: str) -> str:
    """The service's password on both servers: `<SERVICE>_PASSWORD`, else the dev default."""
    return os.environ.get(f"{service.upper()}_PASSWORD", f"{service}-dev")


#: The operator tools' read-only role, and what it may read in each service's database.
READER = "saga_reader"
READER_TABLES = ("outbox", "inbox")


def reader_password() -> str:
    """The read-only role's password: `SAGA_READER_PASSWORD`, else the dev default."""
    return os.environ.get("SAGA_READER_PASSWORD", f"{READER}-dev")


# --- RabbitMQ --------------------------------------------------------------------------------


def _alternatives(names: list[str]) -> str:
    """A regular expression matching exactly these names (and nothing at all if there are none)."""
    return f"^({'|'.join(re.escape(name) for name in names)})$" if names else "(?!)"


def broker_permissions(manifest: Manifest, exchange: str = EXCHANGE) -> dict[str, str]:
    """Vhost permissions: the shared exchange and the service's own `<service>.…` resources.

    Not the default exchange: write access to it would let a service put messages straight into
    any queue, past the topic permissions. Dead letters go through the service's own exchange."""
    own = f"^({re.escape(exchange)}|{re.escape(manifest.service)}\\..*)$"
    return {"configure": own, "write": own, "read": own}


def topic_permissions(manifest: Manifest, exchange: str = EXCHANGE) -> dict[str, str]:
    """On `exchange`: publish only the events the service emits, bind only those it consumes."""
    return {
        "exchange": exchange,
        "write": _alternatives([event_name(event) for event in manifest.emits]),
        "read": _alternatives([event_name(event) for event in manifest.consumes]),
    }


def _q(segment: str) -> str:
    return quote(segment, safe="")


def provision_broker(
    api: str, vhost: str, manifest: Manifest, user: str, secret: str, exchange: str = EXCHANGE
) -> None:
    """Create or update `user` with `manifest`'s rights in `vhost` (which must exist)."""
    rabbit = ManagementApi(api)
    rabbit.put_user(user, secret)
    rabbit.set_permissions(vhost, user, **broker_permissions(manifest, exchange))
    rabbit.set_topic_permissions(vhost, user, **topic_permissions(manifest, exchange))
    _retire_stale_queues(rabbit, vhost, manifest)


def _retire_stale_queues(rabbit: ManagementApi, vhost: str, manifest: Manifest) -> None:
    """Delete the service's queues declared before they dead-lettered through its own exchange.

    A queue's arguments cannot change, so the service could not declare such a queue again; and
    quorum queues cannot be deleted "if empty" in one step. So: a queue still consumed (by a
    service started before) is left to the next `make down && make up`; any other is unbound from
    `events` first, so that nothing more reaches it (the emitter's relay gets it back and retries),
    then looked into; empty, it is deleted and its service declares it anew on start; holding
    messages, it is bound again and provisioning stops rather than lose them."""
    dlx = dead_letter_exchange(manifest.service)
    for event in manifest.consumes:
        name = manifest.queue_for(event)
        found = rabbit.queue(vhost, name)
        if found is None or found["arguments"].get("x-dead-letter-exchange") == dlx:
            continue
        if found.get("consumers"):
            print(f"queue {name} is consumed by an older {manifest.service}: make down && make up")
            continue
        bindings = rabbit.bindings(vhost, name)
        for binding in bindings:
            rabbit.unbind(vhost, binding)
        if rabbit.peek(vhost, name, count=1):
            for binding in bindings:
                rabbit.bind(vhost, binding)
            raise SystemExit(
                f"queue {name} was declared by an older version and still holds messages:"
                f" run {manifest.service} from that version until it is empty"
                f" (or move its messages to {dead_letter_queue(name)}), then run this again"
            )
        rabbit.delete_queue(vhost, name)
        print(f"deleted queue {name} (empty; {manifest.service} declares it anew)")


def delete_broker_user(api: str, user: str) -> None:
    ManagementApi(api).delete_user(user)


# --- PostgreSQL ------------------------------------------------------------------------------


# ALTER … OWNER for each kind of relation; tables before sequences, which follow their table.
_OWNED_RELATIONS = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "S": "SEQUENCE",
}


def provision_database(admin_dsn: str, database: str, role: str, secret: str) -> None:
    """Create or update `role` (LOGIN, `secret`) as the owner of `database` and of all it holds.

    A database created earlier by the superuser (an older `make up`) is handed over, tables and
    all; CONNECT is revoked from PUBLIC, so only its owner (and superusers) can connect."""
    with psycopg.connect(libpq(admin_dsn), autocommit=True) as conn:
        role_id, db_id = sql.Identifier(role), sql.Identifier(database)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        conn.execute(
            sql.SQL("{} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), role_id, sql.Literal(secret)
            )
        )
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db_id, role_id))
        else:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db_id, role_id))
            print(f"created database {database}")
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db_id))
    with psycopg.connect(libpq(admin_dsn, database), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(role_id))
        for kind, keyword in _OWNED_RELATIONS.items():
            names = conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind = %s"
                " AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = %s)",
                [kind, role],
            ).fetchall()
            for (name,) in names:
                conn.execute(
                    sql.SQL("ALTER {} public.{} OWNER TO {}").format(
                        sql.SQL(keyword), sql.Identifier(name), role_id
                    )
                )


# Any constant will do: provisioners of the reader on one server (tests run several at once) take
# turns, since concurrent ALTER ROLE or GRANT on one object fail with "tuple concurrently updated".
_READER_LOCK = 7_013_002


def provision_reader(
    admin_dsn: str, databases: Iterable[str], role: str = READER, secret: str | None = None
) -> None:
    """Create or update `role` (LOGIN, read-only) and let it CONNECT to each of `databases` and
    SELECT their `outbox` and `inbox`: nothing else, whatever it was granted before.

    Run it after migrating: a table that does not exist yet cannot be granted. The grants are
    made as the superuser, which PostgreSQL records as made by the tables' owner (the service's
    role), so they hold whoever owns the tables and live as long as the tables do."""
    secret = reader_password() if secret is None else secret
    with psycopg.connect(libpq(admin_dsn), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [_READER_LOCK])
        role_id = sql.Identifier(role)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        conn.execute(
            sql.SQL(
                "{} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD {}"
            ).format(sql.SQL("ALTER" if exists else "CREATE"), role_id, sql.Literal(secret))
        )
        for database in databases:
            db_id = sql.Identifier(database)
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db_id, role_id))
            with psycopg.connect(libpq(admin_dsn, database)) as db, db.transaction():
                db.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role_id))
                for kind in ("TABLES", "SEQUENCES"):
                    db.execute(
                        sql.SQL("REVOKE ALL ON ALL {} IN SCHEMA public FROM {}").format(
                            sql.SQL(kind), role_id
                        )
                    )
                present = db.execute(
                    "SELECT tablename FROM pg_tables"
                    " WHERE schemaname = 'public' AND tablename = ANY(%s)",
                    [list(READER_TABLES)],
                ).fetchall()
                for (table,) in present:
                    db.execute(
                        sql.SQL("GRANT SELECT ON public.{} TO {}").format(
                            sql.Identifier(table), role_id
                        )
                    )
                if len(present) < len(READER_TABLES):
                    print(f"{database} is not migrated yet: {role} may read it once it is")


def drop_role(admin_dsn: str, role: str) -> None:
    """Drop `role`, which must own no database any more."""
    with psycopg.connect(libpq(admin_dsn), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# --- What the services are given -------------------------------------------------------------


def database_url(admin_dsn: str, database: str, role: str, secret: str) -> str:
    """The SQLAlchemy URL a service uses: its own role, on the admin's server."""
    url = make_url(admin_dsn).set(
        drivername="postgresql+psycopg", username=role, password=secret, database=database
    )
    return url.render_as_string(hide_password=False)


def reader_url(url: str, role: str = READER, secret: str | None = None) -> str:
    """The URL of the database at `url` (same server and database), as the read-only role."""
    secret = reader_password() if secret is None else secret
    return make_url(url).set(username=role, password=secret).render_as_string(hide_password=False)


def amqp_url(server: str, vhost: str, user: str, secret: str) -> str:
    """The AMQP URL a service uses: its own user and vhost on `server` (any AMQP URL of it)."""
    parts = urlsplit(server)
    netloc = f"{_q(user)}:{_q(secret)}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    path = "/" if vhost == "/" else "/" + _q(vhost)  # the default vhost, as URLs usually write it
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def service_env(service: str) -> dict[str, str]:
    """`DATABASE_URL` and `AMQP_URL` for a service on the local servers, with its own credentials."""
    secret = password(service)
    return {
        "DATABASE_URL": database_url(POSTGRES_ADMIN_DSN, service, service, secret),
        "AMQP_URL": amqp_url(AMQP_SERVER, RABBITMQ_VHOST, service, secret),
    }


T = TypeVar("T")


def _retry(what: str, attempt: Callable[[], T], timeout: float) -> T:
    """`attempt()` until it succeeds: in compose, the broker's management API answers a little
    after the node does."""
    try:
        return retry(attempt, on=(httpx.HTTPError, psycopg.OperationalError), timeout=timeout)
    except (httpx.HTTPError, psycopg.OperationalError) as exc:
        raise SystemExit(f"{what} does not answer after {timeout:.0f}s: {exc}") from exc


def provision(
    manifests: Mapping[str, Manifest] = MANIFESTS, *, timeout: float = 60.0, migrate: bool = False
) -> None:
    """Provision every service on the servers given by the environment; optionally migrate."""
    for service, manifest in manifests.items():
        secret = password(service)
        _retry(
            "the RabbitMQ management API",
            partial(provision_broker, RABBITMQ_API, RABBITMQ_VHOST, manifest, service, secret),
            timeout,
        )
        _retry(
            "PostgreSQL",
            partial(provision_database, POSTGRES_ADMIN_DSN, service, service, secret),
            timeout,
        )
        print(f"provisioned {service}: RabbitMQ user and PostgreSQL role {service!r}")
        if migrate:
            from web.migrations import upgrade

            upgrade(service, database_url(POSTGRES_ADMIN_DSN, service, service, secret))
            print(f"migrated {service}")
    _retry("PostgreSQL", partial(provision_reader, POSTGRES_ADMIN_DSN, list(manifests)), timeout)
    print(f"provisioned {READER}: SELECT on {' and '.join(READER_TABLES)} of each database")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.provision",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--migrate", action="store_true", help="then apply each service's migrations as its role"
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    provision(timeout=args.timeout, migrate=args.migrate)


if __name__ == "__main__":
    main()
