"""RabbitMQ's management HTTP API (`ManagementApi`), and a throwaway vhost made with it (`Vhost`).

One client for everything the tests and the tools ask of the management API: vhosts, users and
their rights, queues and their messages, bindings, connections. The URL carries the credentials
(`http://guest:guest@127.0.0.1:15672`). Message counts in the API are statistics refreshed every
few seconds: wait on messages themselves (`peek`) rather than on a queue's `messages` when timing
matters.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from harness import http_client
from harness.wait import eventually_sync

if TYPE_CHECKING:
    from harness.servers import Servers


def _q(segment: str) -> str:
    return quote(segment, safe="")


class ManagementApi:
    """The management API as the user its URL names (an administrator, for most of it)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def call(
        self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request to `path` (`/api/…`); raises on an error status, but 404 if `missing_ok`."""
        response = http_client.request(method, self.url + path, timeout=self.timeout, **kwargs)
        if missing_ok and response.status_code == 404:
            return response
        response.raise_for_status()
        return response

    def get(self, path: str, **params: Any) -> Any:
        """The JSON at `path`, or None if there is nothing there (404)."""
        response = self.call("GET", path, missing_ok=True, params=params or None)
        return None if response.status_code == 404 else response.json()

    # --- the broker ----------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Versions, totals and listeners (`rabbitmq_version`, `message_stats`, …)."""
        return self.get("/api/overview")  # type: ignore[no-any-return]

    def answers(self) -> bool:
        """The API is up (the management plugin starts a little after the node)."""
        try:
            return self.call("GET", "/api/overview").status_code == 200
        except httpx.HTTPError:
            return False

    # --- vhosts, users and their rights --------------------------------------------------------

    def create_vhost(self, vhost: str) -> None:
        self.call("PUT", f"/api/vhosts/{_q(vhost)}")

    def delete_vhost(self, vhost: str) -> None:
        self.call("DELETE", f"/api/vhosts/{_q(vhost)}", missing_ok=True)

    def put_user(self, user: str, password: str, tags: str = "") -> None:
        """Create or update `user`."""
        self.call("PUT", f"/api/users/{_q(user)}", json={"password": password, "tags": tags})

    def delete_user(self, user: str) -> None:
        self.call("DELETE", f"/api/users/{_q(user)}", missing_ok=True)

    def set_permissions(
        self, vhost: str, user: str, *, configure: str, write: str, read: str
    ) -> None:
        """What `user` may do in `vhost` (regular expressions on resource names)."""
        self.call(
            "PUT",
            f"/api/permissions/{_q(vhost)}/{_q(user)}",
            json={"configure": configure, "write": write, "read": read},
        )

    def set_topic_permissions(
        self, vhost: str, user: str, *, exchange: str, write: str, read: str
    ) -> None:
        """The routing keys `user` may publish (`write`) and bind (`read`) on a topic exchange."""
        self.call(
            "PUT",
            f"/api/topic-permissions/{_q(vhost)}/{_q(user)}",
            json={"exchange": exchange, "write": write, "read": read},
        )

    def limit_connections(self, user: str, limit: int | None) -> None:
        """At most `limit` connections for `user` from now on (None: no limit)."""
        path = f"/api/user-limits/{_q(user)}/max-connections"
        if limit is None:
            self.call("DELETE", path, missing_ok=True)
        else:
            self.call("PUT", path, json={"value": limit})

    # --- queues, bindings and messages ---------------------------------------------------------

    def queues(self, vhost: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
        """Every queue of `vhost` with its statistics (only `columns` of each, if given)."""
        params = {"columns": ",".join(columns)} if columns else None
        return self.call("GET", f"/api/queues/{_q(vhost)}", params=params).json()  # type: ignore[no-any-return]

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        """One queue (`messages`, `consumers`, `arguments`, …), or None if it does not exist."""
        return self.get(f"/api/queues/{_q(vhost)}/{_q(name)}")  # type: ignore[no-any-return]

    def delete_queue(self, vhost: str, name: str) -> None:
        self.call("DELETE", f"/api/queues/{_q(vhost)}/{_q(name)}", missing_ok=True)

    def purge(self, vhost: str, name: str) -> None:
        """Drop every ready message of a queue."""
        self.call("DELETE", f"/api/queues/{_q(vhost)}/{_q(name)}/contents", missing_ok=True)

    def peek(self, vhost: str, queue: str, count: int = 100) -> list[dict[str, Any]]:
        """Up to `count` messages from `queue`, put back at once (`ack_requeue_true`): a live look.

        Each has `payload` (text, or base64 with `payload_encoding`), `properties` (`message_id`,
        `type`, `headers` with `x-death` once dead-lettered, …) and `redelivered`."""
        response = self.call(
            "POST",
            f"/api/queues/{_q(vhost)}/{_q(queue)}/get",
            json={
                "count": count,
                "ackmode": "ack_requeue_true",
                "encoding": "auto",
                "truncate": 1_000_000,
            },
        )
        return response.json()  # type: ignore[no-any-return]

    def publish(
        self,
        vhost: str,
        routing_key: str,
        payload: bytes,
        properties: dict[str, Any],
        exchange: str = "amq.default",
    ) -> bool:
        """Publish one message (any bytes); whether it was routed to a queue."""
        response = self.call(
            "POST",
            f"/api/exchanges/{_q(vhost)}/{_q(exchange)}/publish",
            json={
                "routing_key": routing_key,
                "payload": base64.b64encode(payload).decode(),
                "payload_encoding": "base64",
                "properties": properties,
            },
        )
        return bool(response.json().get("routed"))

    def bindings(self, vhost: str, queue: str) -> list[dict[str, Any]]:
        """The queue's bindings from exchanges (not the default exchange's implicit one)."""
        found = self.get(f"/api/queues/{_q(vhost)}/{_q(queue)}/bindings") or []
        return [binding for binding in found if binding["source"]]

    def unbind(self, vhost: str, binding: dict[str, Any]) -> None:
        """Remove a binding, as `bindings` lists it."""
        self.call("DELETE", f"{_binding_path(vhost, binding)}/{_q(binding['properties_key'])}")

    def bind(self, vhost: str, binding: dict[str, Any]) -> None:
        """Add a binding again, as `bindings` listed it."""
        self.call(
            "POST",
            _binding_path(vhost, binding),
            json={"routing_key": binding["routing_key"], "arguments": binding["arguments"]},
        )

    # --- connections ---------------------------------------------------------------------------

    def connections(self, vhost: str) -> list[dict[str, Any]]:
        """Open client connections to `vhost` (`name`, `user`, `client_properties`, …)."""
        return self.call("GET", f"/api/vhosts/{_q(vhost)}/connections").json()  # type: ignore[no-any-return]

    def close_connection(self, name: str, reason: str) -> None:
        """Close a client connection from the broker's side, as a broker restart would."""
        self.call(
            "DELETE",
            f"/api/connections/{_q(name)}",
            headers={"X-Reason": reason},
            missing_ok=True,
        )


def _binding_path(vhost: str, binding: dict[str, Any]) -> str:
    return f"/api/bindings/{_q(vhost)}/e/{_q(binding['source'])}/q/{_q(binding['destination'])}"


@dataclass(frozen=True)
class Vhost:
    """A vhost of its own on a broker; `amqp_url` points services and clients into it.

    Everything declared in it is gone with it (`delete`), so users of two vhosts never share
    exchanges, queues or messages."""

    name: str
    amqp_url: str
    management: ManagementApi
    user: str  # the user of `amqp_url`, given every right in the vhost

    @classmethod
    def create(cls, servers: Servers, name: str | None = None) -> Vhost:
        """A new vhost on `servers`' broker, named `name` (default: `test-<hex>`)."""
        name = name or f"test-{secrets.token_hex(6)}"
        parts = urlsplit(servers.amqp_url)
        vhost = cls(
            name=name,
            amqp_url=urlunsplit(parts._replace(path="/" + _q(name))),
            management=ManagementApi(servers.rabbitmq_api),
            user=parts.username or "guest",
        )
        vhost.management.create_vhost(name)
        vhost.set_permissions()
        return vhost

    @property
    def api(self) -> str:
        """The management API's URL, with its credentials."""
        return self.management.url

    def set_permissions(self, configure: str = ".*", write: str = ".*", read: str = ".*") -> None:
        """What the vhost's user may do in it (regular expressions on resource names)."""
        self.management.set_permissions(
            self.name, self.user, configure=configure, write=write, read=read
        )

    def delete(self) -> None:
        self.management.delete_vhost(self.name)

    def queues(self) -> list[dict[str, Any]]:
        return self.management.queues(self.name)

    def get_messages(self, queue: str, count: int = 100) -> list[dict[str, Any]]:
        """Up to `count` messages of `queue`, left in it (`ManagementApi.peek`)."""
        return self.management.peek(self.name, queue, count)

    def connections(self, connection_name: str | None = None) -> list[dict[str, Any]]:
        """Open client connections to this vhost; those a client named `connection_name` if given."""
        found = self.management.connections(self.name)
        if connection_name is None:
            return found
        return [
            c
            for c in found
            if (c.get("client_properties") or {}).get("connection_name") == connection_name
        ]

    def close_connections(self, connection_name: str, timeout: float = 10.0) -> int:
        """Close from the broker side every connection the client named `connection_name`, as a
        broker restart or a network cut would; waits until at least one is listed."""
        found = eventually_sync(lambda: self.connections(connection_name), timeout=timeout)
        for connection in found:
            self.management.close_connection(connection["name"], "closed by a test")
        return len(found)
