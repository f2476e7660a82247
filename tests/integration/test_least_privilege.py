"""Each service on its own RabbitMQ user and PostgreSQL role, as `tools.provision` makes them: it can
do its own work and nothing else. Users and roles are global on a server, so each test makes its
own (with a random prefix) in its own vhost and databases, and deletes them afterwards."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aio_pika
import psycopg
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused
from psycopg import sql
from sqlalchemy.engine import make_url

import outbox
from contracts import (
    Item,
    OrderCreated,
    PaymentSucceeded,
    StockFailed,
    StockReleased,
    StockReserved,
    encode,
)
from harness.databases import create_database, drop_database, migrate
from harness.rabbitmq import Vhost
from harness.servers import Servers
from harness.wait import eventually
from outbox import Manifest, MessagingSettings
from outbox.topology import declare_exchange, declare_queues
from tests.support.audit import audit_deliveries
from tests.support.broker import Broker, message_for
from tools import trace
from tools.bench.hops import hop_times
from tools.postgres import libpq
from tools.provision import (
    MANIFESTS,
    READER,
    amqp_url,
    database_url,
    delete_broker_user,
    drop_role,
    provision_broker,
    provision_database,
    provision_reader,
    reader_url,
)

#: The broker's answer to what a user has no right to do (AMQP 403, which aiormq raises as
#: ChannelAccessRefused), naming the resource.
ACCESS_REFUSED = "ACCESS_REFUSED"


@dataclass(frozen=True)
class Account:
    """A service's own user and role (same name), and the URLs it would be started with."""

    service: str
    name: str
    database: str
    amqp_url: str
    database_url: str

    @property
    def manifest(self) -> Manifest:
        return MANIFESTS[self.service]


Provision = Callable[..., Account]


@pytest.fixture
def provision(servers: Servers, vhost: Vhost) -> Iterator[Provision]:
    """`provision("order_service")`: that service's user in the test's vhost, and its role owning
    a database of its own (`database=` to hand over an existing one)."""
    prefix = f"t{secrets.token_hex(4)}"
    made: list[Account] = []

    def make(service: str, *, database: str | None = None) -> Account:
        name = f"{prefix}_{service}"
        database = database or name
        secret = secrets.token_hex(8)
        account = Account(
            service=service,
            name=name,
            database=database,
            amqp_url=amqp_url(vhost.amqp_url, vhost.name, name, secret),
            database_url=database_url(servers.postgres_admin_url, database, name, secret),
        )
        made.append(account)
        provision_broker(servers.rabbitmq_api, vhost.name, MANIFESTS[service], name, secret)
        provision_database(servers.postgres_admin_url, database, name, secret)
        return account

    yield make
    for account in made:
        delete_broker_user(servers.rabbitmq_api, account.name)
        drop_database(servers.postgres_admin_url, account.database_url)
        drop_role(servers.postgres_admin_url, account.name)


async def _ignore(message: AbstractIncomingMessage) -> None:
    pass


def order_created() -> OrderCreated:
    return OrderCreated(
        order_id=uuid.uuid4(), customer_id="alice", items=(Item(sku="book", quantity=1),)
    )


async def test_a_service_may_publish_the_events_it_emits_and_no_other(
    provision: Provision, broker: Broker
) -> None:
    order = provision("order_service")
    tap = await broker.tap("OrderCreated", "StockReserved")
    created = order_created()
    forged = StockReserved(
        order_id=created.order_id, customer_id="alice", items=created.items, amount_cents=0
    )

    async with await aio_pika.connect(order.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare_exchange(channel)
        await exchange.publish(message_for(created), "OrderCreated")
        with pytest.raises(ChannelAccessRefused, match=f"{ACCESS_REFUSED}.*topic 'StockReserved'"):
            await exchange.publish(message_for(forged), "StockReserved")
    [received] = await tap.wait_for(1)
    assert received.message_id == str(created.event_id)
    assert tap.with_id(forged.event_id) == []  # refused messages never reach the exchange


async def test_a_service_cannot_slip_a_message_into_another_services_queue(
    provision: Provision, broker: Broker
) -> None:
    """The default exchange routes to any queue by name, past the topic permissions on `events`:
    services get no access to it (dead letters go through their own exchange instead)."""
    payment = provision("payment_service")
    order = provision("order_service")
    async with await aio_pika.connect(payment.amqp_url) as connection:
        channel = await connection.channel()
        await declare_queues(channel, payment.manifest, await declare_exchange(channel))
    created = order_created()
    forged = StockReserved(
        order_id=created.order_id, customer_id="alice", items=created.items, amount_cents=0
    )

    async with await aio_pika.connect(order.amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(ChannelAccessRefused, match=ACCESS_REFUSED):
            await channel.default_exchange.publish(
                message_for(forged), "payment_service.StockReserved"
            )
    state = await broker.queue_state("payment_service.StockReserved")
    assert state is not None
    assert state.messages == 0


async def test_a_service_cannot_read_another_services_queue(
    provision: Provision, broker: Broker
) -> None:
    payment = provision("payment_service")
    order = provision("order_service")
    async with await aio_pika.connect(payment.amqp_url) as connection:
        channel = await connection.channel()
        await declare_queues(channel, payment.manifest, await declare_exchange(channel))

    async with await aio_pika.connect(order.amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue("payment_service.StockReserved", ensure=False)
        with pytest.raises(ChannelAccessRefused, match=ACCESS_REFUSED):
            await queue.consume(_ignore)


async def test_a_service_cannot_listen_to_events_it_does_not_consume(
    provision: Provision,
) -> None:
    order = provision("order_service")

    async with await aio_pika.connect(order.amqp_url) as connection:
        channel = await connection.channel()
        exchange = await declare_exchange(channel)
        queue = await channel.declare_queue("order_service.eavesdropping", auto_delete=True)
        with pytest.raises(ChannelAccessRefused, match=ACCESS_REFUSED):
            await queue.bind(exchange, "PaymentRefunded")


def test_a_services_role_cannot_connect_to_another_services_database(
    provision: Provision,
) -> None:
    order = provision("order_service")
    payment = provision("payment_service")
    as_payment_in_orders = payment.database_url.rsplit("/", 1)[0] + f"/{order.database}"

    with psycopg.connect(libpq(order.database_url)) as connection:
        assert connection.execute("SELECT current_user").fetchone() == (order.name,)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(libpq(as_payment_in_orders))


#: One event each service emits, staged through its outbox and published by its relay.
SAMPLE_EMITTED = {
    "order_service": order_created(),
    "inventory_service": StockReleased(order_id=uuid.uuid4(), items=()),
    "payment_service": PaymentSucceeded(
        order_id=uuid.uuid4(), customer_id="alice", payment_id=uuid.uuid4(), amount_cents=100
    ),
    "notification_service": None,  # emits nothing
}


@pytest.mark.parametrize("service", list(MANIFESTS))
async def test_each_service_migrates_declares_its_queues_and_publishes_under_its_own_rights(
    service: str, provision: Provision, broker: Broker, start_service
) -> None:
    account = provision(service)
    event = SAMPLE_EMITTED[service]
    tap = await broker.tap(*(e.__name__ for e in account.manifest.emits))

    await migrate(service, account.database_url)
    messaging = await start_service(
        account.manifest,
        MessagingSettings,
        service=service,
        database_url=account.database_url,
        amqp_url=account.amqp_url,
    )
    if event is not None:
        async with messaging.sessionmaker() as session, session.begin():
            outbox.add(session, event)
        [published] = await tap.wait_for(1, timeout=30)
        assert published.message_id == str(event.event_id)
    for consumed in account.manifest.consumes:
        dead_letters = f"{account.manifest.queue_for(consumed)}.dlq"
        assert await broker.queue_state(dead_letters) is not None


async def test_a_database_the_superuser_created_and_migrated_is_handed_over_to_the_services_role(
    servers: Servers, provision: Provision, broker: Broker, start_service
) -> None:
    """What `make up` finds after an older version ran every service as the superuser."""
    legacy_url = create_database(servers.postgres_admin_url, "order_service")
    try:
        await migrate("order_service", legacy_url)
        database = legacy_url.rsplit("/", 1)[1]
        order = provision("order_service", database=database)
    except BaseException:
        drop_database(servers.postgres_admin_url, legacy_url)
        raise
    tap = await broker.tap("OrderCreated")

    await migrate("order_service", order.database_url)  # as the role: nothing left to do
    messaging = await start_service(
        order.manifest,
        MessagingSettings,
        service="order_service",
        database_url=order.database_url,
        amqp_url=order.amqp_url,
    )
    created = order_created()
    async with messaging.sessionmaker() as session, session.begin():
        outbox.add(session, created)

    [published] = await tap.wait_for(1, timeout=30)
    assert published.message_id == str(created.event_id)
    await eventually(lambda: _all_published(order), timeout=30)
    with psycopg.connect(libpq(order.database_url)) as connection:
        owners = connection.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace"
        ).fetchall()
    assert owners == [(order.name,)]


def _all_published(account: Account) -> bool:
    with psycopg.connect(libpq(account.database_url)) as connection:
        row = connection.execute(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        ).fetchone()
    return row == (0,)


async def _declare_the_old_way(broker: Broker, event: str) -> str:
    """order_service's queue for `event` as versions before its own dead-letter exchange made it."""
    name = f"order_service.{event}"
    channel = await broker.connection.channel()
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{name}.dlq",
        },
    )
    await queue.bind(await declare_exchange(channel), event)
    await channel.close()
    return name


async def test_an_empty_queue_declared_by_an_older_version_is_replaced_one_holding_messages_kept(
    provision: Provision, broker: Broker
) -> None:
    """Its arguments name the default exchange for dead letters, so the service could not declare
    it again: provisioning deletes it if that loses nothing (the service declares it anew)."""
    empty = await _declare_the_old_way(broker, "StockReserved")
    holding = await _declare_the_old_way(broker, "StockFailed")
    await broker.publish(message_for(StockFailed(order_id=uuid.uuid4(), reason="out_of_stock")))
    await eventually(lambda: _holds_messages(broker, holding))

    with pytest.raises(SystemExit, match=rf"{re.escape(holding)} .* still holds messages"):
        provision("order_service")

    assert await broker.queue_state(empty) is None
    state = await broker.queue_state(holding)
    assert state is not None
    assert state.messages == 1
    # Still bound, so it still receives (the broker would return an unroutable message).
    await broker.publish(message_for(StockFailed(order_id=uuid.uuid4(), reason="out_of_stock")))
    await eventually(lambda: _holds_messages(broker, holding, 2))


async def _holds_messages(broker: Broker, queue: str, count: int = 1) -> bool:
    state = await broker.queue_state(queue)
    return state is not None and state.messages >= count


# --- the operator tools' read-only role ----------------------------------------------------------
# The tools connect as `saga_reader` itself, so that is the role tested: a standing role like those
# `make up` makes, granted here only this test's databases, whose grants go with them.


async def _migrated(provision: Provision, *services: str) -> dict[str, Account]:
    accounts = {service: provision(service) for service in services}
    for service, account in accounts.items():
        await migrate(service, account.database_url)
    return accounts


def _as_reader(account: Account) -> psycopg.Connection:
    return psycopg.connect(libpq(reader_url(account.database_url)))


async def test_the_operator_tools_role_reads_outboxes_and_inboxes_and_nothing_else(
    servers: Servers, provision: Provision
) -> None:
    accounts = await _migrated(provision, "order_service", "payment_service")
    elsewhere = provision("inventory_service")  # a service database the reader is not given
    databases = [account.database for account in accounts.values()]
    provision_reader(servers.postgres_admin_url, databases)
    with psycopg.connect(libpq(accounts["order_service"].database_url)) as connection:
        # A right given by hand since: provisioning again takes back whatever is not its own.
        connection.execute(sql.SQL("GRANT SELECT ON orders TO {}").format(sql.Identifier(READER)))
    provision_reader(servers.postgres_admin_url, databases)

    for service, business_table in [("order_service", "orders"), ("payment_service", "accounts")]:
        with _as_reader(accounts[service]) as connection:
            assert connection.execute("SELECT current_user").fetchone() == (READER,)
            assert connection.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
            assert connection.execute("SELECT count(*) FROM inbox").fetchone() == (0,)
            for refused in [
                f"SELECT * FROM {business_table}",
                "SELECT * FROM idempotency_keys",
                "INSERT INTO outbox (event_id, event_type, order_id, payload, traceparent)"
                f" VALUES ('{uuid.uuid4()}', 'OrderCreated', '{uuid.uuid4()}', '', '')",
                "UPDATE outbox SET published_at = now()",
                "DELETE FROM inbox",
                "TRUNCATE outbox",
                f"UPDATE {business_table} SET customer_id = customer_id",
            ]:
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                    connection.execute(refused)
                connection.rollback()
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        _as_reader(elsewhere)


async def test_trace_audit_and_hop_table_read_the_services_databases_as_the_read_only_role(
    servers: Servers, provision: Provision
) -> None:
    accounts = await _migrated(provision, *MANIFESTS)
    provision_reader(servers.postgres_admin_url, [a.database for a in accounts.values()])
    created = order_created()
    with psycopg.connect(libpq(accounts["order_service"].database_url)) as connection:
        connection.execute(
            "INSERT INTO outbox (event_id, event_type, order_id, payload, traceparent, published_at)"
            " VALUES (%s, 'OrderCreated', %s, %s, '', now())",
            [created.event_id, created.order_id, encode(created)],
        )
    with psycopg.connect(libpq(accounts["inventory_service"].database_url)) as connection:
        connection.execute(
            "INSERT INTO inbox (consumer, message_id, event_type, order_id, emitted_by)"
            " VALUES ('inventory_service.OrderCreated', %s, 'OrderCreated', %s, 'order_service')",
            [created.event_id, created.order_id],
        )
    # What the tools are given: each service's own URL, or nothing (then the local databases).
    urls = {service: account.database_url for service, account in accounts.items()}

    env = {f"{service.upper()}_DATABASE_URL": url for service, url in urls.items()}
    assert {make_url(url).username for url in trace.database_urls({}).values()} == {READER}
    assert trace.database_urls(env) == urls  # URLs given are used as they are
    as_reader = {service: reader_url(url) for service, url in urls.items()}
    timeline = trace.read_timeline(created.order_id, as_reader)
    assert timeline.unreachable == []
    [hop] = timeline.hops
    assert (hop.event_type, hop.emitted_by, [h.queue for h in hop.handled]) == (
        "OrderCreated",
        "order_service",
        ["inventory_service.OrderCreated"],
    )
    published, undelivered = audit_deliveries(urls)
    assert (published["OrderCreated"], undelivered) == (1, [])
    assert hop_times(urls, [(str(created.order_id), 0.0, 1.0)]) == {}  # not completed: no hops

    # They do read as the reader: without its right to the inventory's inbox, they are refused.
    with psycopg.connect(libpq(accounts["inventory_service"].database_url)) as connection:
        connection.execute(sql.SQL("REVOKE SELECT ON inbox FROM {}").format(sql.Identifier(READER)))
    assert trace.read_timeline(created.order_id, as_reader).unreachable == ["inventory_service"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        audit_deliveries(urls)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        hop_times(urls, [(str(created.order_id), 0.0, 1.0)])
