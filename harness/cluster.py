"""A local cluster of real engines: three RabbitMQ nodes behind haproxy, a PostgreSQL server per
service. What a deployment past one machine runs, on one machine, for the cluster fault suite.

- RabbitMQ: nodes `saga-1@localhost` … `saga-3@localhost` from the installed `rabbitmq-server`,
  each with its own ports (AMQP 5681+, management 15681+, distribution 25681+), data directory and
  configuration, sharing an Erlang cookie of their own; the first boots alone and the others join
  it as they first boot (classic peer discovery); partitions are handled with `pause_minority`.
  The machine's own broker (rabbit@localhost, :5672) is not touched: only epmd is shared.
- haproxy in front: AMQP on :5680 (a server counts as up while it answers the AMQP handshake), the
  management API on :5690. The services get one AMQP URL, as behind a production load balancer.
- PostgreSQL: one server per service, made with Debian's `pg_createcluster` on ports 5441+ (trust
  on 127.0.0.1), dropped with `pg_dropcluster` at the end.

`OwnServers` is the smallest such set: one RabbitMQ node on its own and one PostgreSQL server, for
a suite that stops or restarts a whole server (the fault suite) beside tests on the machine's.

`python -m harness.cluster up|down|status` (`make cluster-up`, `make cluster-down`) runs the same
outside a test; its data lives in `.run/cluster/` and is removed by `down`. Missing engines make
`ClusterUnavailable` with what is missing; haproxy and iptables are installed with apt-get if they
are not there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from harness.process import alive
from harness.rabbitmq import ManagementApi
from harness.servers import Servers
from harness.wait import eventually_sync

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
PG_VERSION = os.environ.get("SAGA_CLUSTER_PG_VERSION", "15")
#: Where `make cluster-up` keeps the cluster (nodes' data, configuration, logs, the cookie).
RUN_DIR = Path(".run") / "cluster"

AMQP_PORT, MANAGEMENT_PORT, DIST_PORT = 5681, 15681, 25681
HAPROXY_AMQP_PORT, HAPROXY_MANAGEMENT_PORT = 5680, 5690
POSTGRES_PORT = 5441
FIRST_NODE = "saga-1@localhost"
#: The nodes run as groups 50001-50003 (see `RabbitNode.gid`).
PARTITION_GID = 50000
#: Erlang's net tick time (default 60 s), which bounds how long the nodes take to declare a silent
#: peer down: a partition is noticed within it (10-11 s in the suite's runs).
NET_TICKTIME_S = 20


class ClusterUnavailable(Exception):
    """This machine cannot run the local cluster: what is missing, and how to get it."""


# --- RabbitMQ nodes ----------------------------------------------------------------------------


@dataclass
class RabbitNode:
    """One RabbitMQ node of the cluster, started by us (as root, from the package's own scripts)."""

    index: int
    base: Path  # its data, configuration and logs
    home: Path  # HOME of the node and of its CLI: where the cluster's Erlang cookie is
    #: False: a broker on its own, not joining `FIRST_NODE` (`OwnServers`).
    clustered: bool = True

    @property
    def name(self) -> str:
        return f"saga-{self.index}@localhost"

    @property
    def amqp_port(self) -> int:
        return AMQP_PORT + self.index - 1

    @property
    def management_port(self) -> int:
        return MANAGEMENT_PORT + self.index - 1

    @property
    def dist_port(self) -> int:
        return DIST_PORT + self.index - 1

    @property
    def api(self) -> ManagementApi:
        return ManagementApi(f"http://guest:guest@127.0.0.1:{self.management_port}", timeout=5)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # One scheduler and no busy waiting: three nodes share two cores with everything else.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"
                f" -kernel net_ticktime {NET_TICKTIME_S}"
                " -kernel inet_dist_use_interface {127,0,0,1}"
            ),
        }

    def write_config(self) -> None:
        for folder in ("mnesia", "log"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's (the machine's node)
        (self.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
            f"cluster_partition_handling = {'pause_minority' if self.clustered else 'ignore'}\n"
            "collect_statistics_interval = 1000\n"
            "disk_free_limit.absolute = 50MB\n"
            "log.file.level = info\n"
            "log.console = false\n"
            + (
                # The first node boots alone; the others join it as they first boot.
                "cluster_formation.peer_discovery_backend = classic_config\n"
                f"cluster_formation.classic_config.nodes.1 = {FIRST_NODE}\n"
                if self.clustered
                else ""
            )
        )

    @property
    def gid(self) -> int:
        """The group the node runs as (its user stays root): the owner of its sockets, by which
        `Partition` tells the nodes' traffic apart on the loopback interface."""
        return PARTITION_GID + self.index

    def start(self) -> None:
        """Start the node in the background (its output in `base/log/console.log`)."""
        (self.base / "pid").unlink(missing_ok=True)
        with open(self.base / "log" / "console.log", "ab") as log:
            subprocess.Popen(
                [
                    "setpriv",
                    f"--regid={self.gid}",
                    "--clear-groups",
                    str(RABBITMQ_BIN / "rabbitmq-server"),
                ],
                env=self.env,
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        """`rabbitmqctl -n <node> args…`; its output."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {done.stderr}")
        return done.stdout

    def wait_booted(self, timeout: float = 120) -> None:
        """The node runs the broker and its management API answers."""
        # `wait` first waits for the pid file, which `start` removes: a node just started is
        # not known to epmd yet, and `await_startup` would say it is not running at all.
        self.ctl(
            "wait", str(self.base / "pid"), "--timeout", str(int(timeout)), timeout=timeout + 10
        )
        eventually_sync(self.api.answers, timeout=timeout, interval=0.5)

    @property
    def pid(self) -> int | None:
        """The node's Erlang VM while it runs."""
        try:
            pid = int((self.base / "pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None  # a VM started here is our child: collect it

    def kill(self) -> None:
        """SIGKILL of the Erlang VM: a node that crashed, no goodbye to its peers or clients."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            eventually_sync(lambda: self.pid is None, timeout=30, interval=0.1)

    def pause(self) -> None:
        """SIGSTOP: its sockets stay open, nothing answers (heartbeats included)."""
        os.kill(self._running_pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._running_pid(), signal.SIGCONT)

    def stop(self, timeout: float = 60.0) -> None:
        """A clean shutdown: SIGTERM, on which RabbitMQ stops its listeners, closes its clients'
        connections and its queues and halts (as a service manager stops it; `rabbitmqctl stop`
        does the same, three times slower here). A node not gone after `timeout` is killed."""
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        try:
            eventually_sync(lambda: not alive(pid), timeout=timeout, interval=0.1)
        except TimeoutError:
            self.kill()

    def _running_pid(self) -> int:
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"{self.name} is not running")
        return pid


# --- partitions --------------------------------------------------------------------------------


class Partition:
    """Cut one node off the other two, and heal: iptables rules in a chain of their own, dropping
    on the loopback interface the packets between the nodes' Erlang distribution ports (told
    apart by the group that owns the sending socket). Clients and the CLI still reach the node;
    nothing else on the machine is touched."""

    CHAIN = "SAGA-PARTITION"
    #: Only the nodes' distribution ports pass through the chain: no other traffic is looked at.
    JUMP = (
        "-o", "lo", "-p", "tcp", "-m", "multiport",
        "--dports", f"{DIST_PORT}:{DIST_PORT + 8}", "-j", CHAIN,
    )  # fmt: skip

    def __init__(self, nodes: list[RabbitNode]) -> None:
        self.nodes = nodes

    def cut_off(self, alone: RabbitNode) -> None:
        ensure_package("iptables", "iptables")
        self._iptables("-N", self.CHAIN, check=False)
        if not self._iptables("-C", "OUTPUT", *self.JUMP, check=False):
            self._iptables("-I", "OUTPUT", *self.JUMP)
        for other in self.nodes:
            if other is not alone:
                self._drop(other, alone)
                self._drop(alone, other)

    def heal(self) -> None:
        self._iptables("-F", self.CHAIN, check=False)

    def remove(self) -> None:
        """Heal and take the chain away (at the end)."""
        if shutil.which("iptables") is None:
            return
        self.heal()
        while self._iptables("-D", "OUTPUT", *self.JUMP, check=False):
            pass
        self._iptables("-X", self.CHAIN, check=False)

    def _drop(self, sender: RabbitNode, receiver: RabbitNode) -> None:
        self._iptables(
            "-A", self.CHAIN, "-p", "tcp", "--dport", str(receiver.dist_port),
            "-m", "owner", "--gid-owner", str(sender.gid), "-j", "DROP",
        )  # fmt: skip

    @staticmethod
    def _iptables(*args: str, check: bool = True) -> bool:
        done = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)}: {done.stderr}")
        return done.returncode == 0


# --- PostgreSQL servers ------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A PostgreSQL server of its own, made with `pg_createcluster` (cluster `saga<port>`)."""

    port: int
    datadir: Path

    @property
    def name(self) -> str:
        return f"saga{self.port}"

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create(self) -> None:
        self.drop()  # a leftover of a run that did not clean up
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.datadir.parent, "postgres", "postgres")
        options = ["max_connections=60", "shared_buffers=32MB"]  # listening on localhost
        _run(
            [
                "pg_createcluster",
                PG_VERSION,
                self.name,
                "-p",
                str(self.port),
                "-d",
                str(self.datadir),
            ]
            + [arg for option in options for arg in ("-o", option)]
            + ["--", "--auth-host=trust", "--auth-local=trust"]
        )

    def start(self) -> None:
        self.ctl("start")
        eventually_sync(self.answers, timeout=60, interval=0.2)

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctlcluster … stop -m <mode>`: `immediate` is a crash (recovery from the WAL next)."""
        self.ctl("stop", "-m", mode)

    def ctl(self, action: str, *args: str) -> None:
        _run(["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, self.name, action, *args])

    def answers(self) -> bool:
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={self.port} user=postgres", connect_timeout=2
            ):
                return True
        except psycopg.OperationalError:
            return False

    def drop(self) -> None:
        if Path(f"/etc/postgresql/{PG_VERSION}/{self.name}").exists():
            _run(["pg_dropcluster", "--stop", PG_VERSION, self.name])


# --- haproxy -----------------------------------------------------------------------------------


HAPROXY_CONFIG = """\
global
    maxconn 4000
defaults
    timeout connect 2s
    # AMQP connections live for hours; dead peers are found by the heartbeats, not by haproxy.
    timeout client 3h
    timeout server 3h
    timeout check 2s
frontend amqp
    mode tcp
    bind 127.0.0.1:{amqp}
    default_backend rabbitmq
backend rabbitmq
    mode tcp
    balance roundrobin
    # Up while the node answers the AMQP protocol header with its Connection.Start: a node that
    # is paused, or that paused itself in a minority partition, is taken out within 2-3 s.
    option tcp-check
    tcp-check send-binary 414d515000000901
    tcp-check expect string RabbitMQ
    default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
{amqp_servers}
frontend management
    mode http
    bind 127.0.0.1:{management}
    default_backend management
backend management
    mode http
    option httpchk GET /
    default-server inter 1s fall 2 rise 1
{management_servers}
"""


@dataclass
class Haproxy:
    base: Path
    nodes: list[RabbitNode]

    @property
    def pid_file(self) -> Path:
        return self.base / "haproxy.pid"

    def start(self) -> None:
        ensure_package("haproxy", "haproxy")
        config = self.base / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                amqp=HAPROXY_AMQP_PORT,
                management=HAPROXY_MANAGEMENT_PORT,
                amqp_servers="\n".join(
                    f"    server {n.name.split('@')[0]} 127.0.0.1:{n.amqp_port} check"
                    for n in self.nodes
                ),
                management_servers="\n".join(
                    f"    server {n.name.split('@')[0]} 127.0.0.1:{n.management_port} check"
                    for n in self.nodes
                ),
            )
        )
        _run(["haproxy", "-D", "-f", str(config), "-p", str(self.pid_file)])

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self.pid_file.read_text().split():
                os.kill(int(line), signal.SIGTERM)
        self.pid_file.unlink(missing_ok=True)


def ensure_package(command: str, package: str) -> None:
    """`command` from Debian's `package`, installed if missing (a fresh CI machine has neither
    haproxy nor iptables)."""
    if shutil.which(command):
        return
    if not shutil.which("apt-get"):
        raise ClusterUnavailable(f"{command} is not installed, and there is no apt-get for it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        _run(install, env=env)


# --- the whole cluster -------------------------------------------------------------------------


@dataclass
class LocalCluster:
    """Three clustered RabbitMQ nodes behind haproxy, and a PostgreSQL server per service."""

    base: Path
    services: tuple[str, ...]
    cookie: str = field(default_factory=lambda: secrets.token_hex(16).upper())

    def __post_init__(self) -> None:
        self.base = self.base.resolve()
        home = self.base / "home"
        self.nodes = [RabbitNode(i, self.base / f"saga-{i}", home) for i in (1, 2, 3)]
        self.haproxy = Haproxy(self.base, self.nodes)
        self.partition = Partition(self.nodes)
        self.postgres = {
            service: PostgresServer(
                POSTGRES_PORT + i, self.base / "postgres" / f"saga{POSTGRES_PORT + i}"
            )
            for i, service in enumerate(self.services)
        }

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{HAPROXY_AMQP_PORT}/"

    @property
    def rabbitmq_api(self) -> str:
        return f"http://guest:guest@127.0.0.1:{HAPROXY_MANAGEMENT_PORT}"

    @property
    def servers(self) -> Servers:
        """The cluster as `Servers` (the first service's PostgreSQL as the default server)."""
        first = self.postgres[self.services[0]]
        return Servers(first.admin_url, self.amqp_url, self.rabbitmq_api)

    @property
    def database_servers(self) -> dict[str, str]:
        """Service -> the admin URL of its own PostgreSQL server."""
        return {service: server.admin_url for service, server in self.postgres.items()}

    def node(self, name: str) -> RabbitNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self) -> None:
        check_engines()
        _write_cookie(self.nodes[0].home, self.cookie)
        for node in self.nodes:
            if node.pid is not None:
                raise ClusterUnavailable(f"{node.name} already runs: `make cluster-down` first")
            node.write_config()
        first, *others = self.nodes
        first.start()
        with ThreadPoolExecutor() as pool:  # PostgreSQL servers meanwhile, side by side
            made = [pool.submit(_create_and_start, s) for s in self.postgres.values()]
            first.wait_booted()
            for node in others:
                node.start()
            for node in others:
                node.wait_booted()
            for future in made:
                future.result()
        self.haproxy.start()
        api = ManagementApi(self.rabbitmq_api)
        eventually_sync(lambda: len(self.running_nodes(api)) == 3, timeout=60, interval=0.5)

    def running_nodes(self, api: ManagementApi | None = None) -> list[str]:
        """The cluster's nodes that run, as the management API sees them."""
        try:
            found = (api or ManagementApi(self.rabbitmq_api)).get("/api/nodes") or []
        except httpx.HTTPError:
            return []
        return [node["name"] for node in found if node.get("running")]

    def stop(self) -> None:
        """Stop everything and remove its data; what is already gone is skipped."""
        self.partition.remove()
        self.haproxy.stop()
        for node in self.nodes:
            node.kill()  # its data goes with it: no need for a clean shutdown
        with ThreadPoolExecutor() as pool:
            list(pool.map(PostgresServer.drop, self.postgres.values()))
        shutil.rmtree(self.base, ignore_errors=True)


def _create_and_start(server: PostgresServer) -> None:
    server.create()
    server.start()


def _write_cookie(home: Path, cookie: str) -> None:
    """The Erlang cookie of our nodes and of their CLI (`HOME` of both), not the machine's."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / ".erlang.cookie"
    path.unlink(missing_ok=True)
    path.write_text(cookie)
    path.chmod(0o400)


# --- servers of one's own ----------------------------------------------------------------------

#: `OwnServers`' ports: AMQP 5685, management 15685, distribution 25685; PostgreSQL 5449.
OWN_NODE_INDEX, OWN_POSTGRES_PORT = 5, 5449


@dataclass
class OwnServers:
    """One RabbitMQ node (`saga-5@localhost`) and one PostgreSQL server that nobody else uses:
    for the fault suite, whose global faults (the whole broker stopped, the whole PostgreSQL
    server restarted) must not strike what other tests and processes on the machine use."""

    base: Path
    cookie: str = field(default_factory=lambda: secrets.token_hex(16).upper())

    def __post_init__(self) -> None:
        self.base = self.base.resolve()
        self.node = RabbitNode(
            OWN_NODE_INDEX, self.base / "rabbit", self.base / "home", clustered=False
        )
        self.postgres = PostgresServer(
            OWN_POSTGRES_PORT, self.base / "postgres" / f"saga{OWN_POSTGRES_PORT}"
        )

    @property
    def servers(self) -> Servers:
        return Servers(
            self.postgres.admin_url,
            f"amqp://guest:guest@127.0.0.1:{self.node.amqp_port}/",
            f"http://guest:guest@127.0.0.1:{self.node.management_port}",
        )

    def start(self) -> None:
        check_engines()
        if self.node.pid is not None:
            raise ClusterUnavailable(f"{self.node.name} already runs (pid file in {self.base})")
        _write_cookie(self.node.home, self.cookie)
        self.node.write_config()
        self.node.start()
        with ThreadPoolExecutor() as pool:  # PostgreSQL meanwhile
            made = pool.submit(_create_and_start, self.postgres)
            self.node.wait_booted()
            made.result()

    def stop(self) -> None:
        """Stop both and remove their data; what is already gone is skipped."""
        self.node.kill()
        self.postgres.drop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def own_servers(base: Path) -> Iterator[OwnServers]:
    """Started `OwnServers` for the block, stopped and removed after it (also if starting failed)."""
    started = OwnServers(base)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def check_engines() -> None:
    missing = [
        what
        for what, path in (
            ("rabbitmq-server (apt-get install rabbitmq-server)", RABBITMQ_BIN / "rabbitmq-server"),
            (
                f"PostgreSQL {PG_VERSION} (apt-get install postgresql-{PG_VERSION})",
                Path(f"/usr/lib/postgresql/{PG_VERSION}/bin/postgres"),
            ),
            (
                "pg_createcluster (apt-get install postgresql-common)",
                Path("/usr/bin/pg_createcluster"),
            ),
        )
        if not path.exists()
    ]
    if missing:
        raise ClusterUnavailable("the local cluster needs " + ", ".join(missing))
    if os.geteuid() != 0:
        raise ClusterUnavailable("the local cluster runs its engines as root (pg_createcluster)")


@contextlib.contextmanager
def local_cluster(base: Path, services: tuple[str, ...]) -> Iterator[LocalCluster]:
    """A started cluster for the block, stopped and removed after it (also if starting failed)."""
    cluster = LocalCluster(base, services)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr or done.stdout}")


# --- the command line: make cluster-up / cluster-down ------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from harness.system import SERVICES

    parser = argparse.ArgumentParser(prog="python -m harness.cluster", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    action = parser.parse_args(argv).action
    if action == "up":
        cluster = LocalCluster(RUN_DIR, SERVICES)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        print(f"RabbitMQ cluster {', '.join(cluster.running_nodes())}")
        print(f"  AMQP {cluster.amqp_url} (haproxy), management {cluster.rabbitmq_api}")
        for service, url in cluster.database_servers.items():
            print(f"  {service}: PostgreSQL {url}")
    elif action == "down":
        LocalCluster(RUN_DIR, SERVICES).stop()  # the CLI finds the cookie in the run folder
        print("cluster stopped and removed")
    else:
        running = LocalCluster(RUN_DIR, SERVICES).running_nodes()
        print(f"running nodes: {', '.join(running) or 'none'}")
        sys.exit(0 if running else 1)


if __name__ == "__main__":
    main()
