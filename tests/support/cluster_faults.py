"""The faults of a system past one machine (`harness.cluster`): broker nodes that crash, freeze,
are cut off from their peers or restarted one after the other, a memory alarm, and a service's
PostgreSQL server crashing; and a watch on the quorum queues' leaders meanwhile.

Each fault returns once it is over and the cluster is whole again (three nodes running, every
quorum queue with all its members online), so that the next one starts from a healthy cluster.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx

from harness.cluster import NET_TICKTIME_S, LocalCluster, RabbitNode
from harness.rabbitmq import Vhost
from harness.wait import eventually_sync
from tests.support.faults import HEARTBEAT_S, Faults

#: How long a node may take to boot (and its queues' members to come back) on a busy machine.
BOOT_S = 120.0


class LeaderWatch:
    """Polls the vhost's quorum queues every second in a thread: each change of a queue's leader
    seen is an election (a lower bound: two within a second count once)."""

    def __init__(self, vhost: Vhost, interval: float = 1.0) -> None:
        self.vhost = vhost
        self.interval = interval
        self.leaders: dict[str, str] = {}
        self.elections: Counter[str] = Counter()  # queue -> leader changes seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="leader-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def total(self) -> int:
        return sum(self.elections.values())

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                queues = self.vhost.management.queues(self.vhost.name, ["name", "type", "leader"])
            except httpx.HTTPError:
                continue  # the management API of the node haproxy picked is going down
            for queue in queues:
                leader = queue.get("leader")
                if queue.get("type") != "quorum" or not leader:
                    continue
                previous = self.leaders.get(queue["name"])
                if previous is not None and previous != leader:
                    self.elections[queue["name"]] += 1
                self.leaders[queue["name"]] = leader


class ClusterFaults(Faults):
    """The local faults of `Faults`, and those of the cluster under the system."""

    def __init__(self, cluster: LocalCluster, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.cluster = cluster

    # --- looking at the cluster ---

    def quorum_queues(self) -> list[dict]:
        return [
            q
            for q in self.vhost.management.queues(
                self.vhost.name, ["name", "type", "leader", "members", "online"]
            )
            if q.get("type") == "quorum"
        ]

    def leader_counts(self) -> Counter[str]:
        """Node -> how many of the vhost's quorum queues it leads."""
        return Counter(q["leader"] for q in self.quorum_queues() if q.get("leader"))

    def wait_whole(self, timeout: float = BOOT_S) -> None:
        """Three nodes run and serve (each answers its own management API: a node paused in a
        minority does not), every quorum queue has its three members online, every work queue a
        consumer, and every service a broker connection."""

        def whole() -> bool:
            try:
                if len(self.cluster.running_nodes()) != 3:
                    return False
                if not all(node.api.answers() for node in self.cluster.nodes):
                    return False
                queues = self.quorum_queues()
            except httpx.HTTPError:
                return False
            return bool(queues) and all(len(q.get("online") or []) == 3 for q in queues)

        eventually_sync(whole, timeout=timeout, interval=0.5)
        self.wait_all_consumed(timeout)
        self.wait_reconnected(timeout=timeout)

    def _log_since(self, began: float, kind: str, detail: str) -> None:
        """Log a fault that struck at `began` (monotonic), once its figures are known."""
        self.log.entries.append((round(began - self.log.started, 1), kind, detail))

    # --- the faults ---

    def kill_busiest_node(self, down_s: float = 3.0) -> RabbitNode:
        """SIGKILL the node that leads most of the quorum queues; restart it after `down_s`."""
        name, leads = self.leader_counts().most_common(1)[0]
        node = self.cluster.node(name)
        began = time.monotonic()
        node.kill()
        time.sleep(down_s)
        node.start()
        node.wait_booted(BOOT_S)
        self.wait_whole()
        self._log_since(
            began,
            "node sigkill",
            f"{name} (leader of {leads} queues), restarted after {down_s:.0f}s,"
            f" cluster whole at {time.monotonic() - began:.0f}s",
        )
        return node

    def freeze_node(self, node: RabbitNode, seconds: float = 2.5 * HEARTBEAT_S) -> None:
        """SIGSTOP a node for longer than two heartbeats (its clients must give up on it), short
        of the cluster's net tick time (its peers keep it), then SIGCONT."""
        node.pause()
        self.log.add("node sigstop", f"{node.name} for {seconds:.0f}s (heartbeat {HEARTBEAT_S}s)")
        try:
            time.sleep(seconds)
        finally:
            node.resume()
        self.wait_whole()

    def partition(self, node: RabbitNode, seconds: float = 20.0) -> float:
        """Cut `node` off the other two; it must notice it is in the minority and pause itself
        (`pause_minority`); heal after `seconds`. Returns how long the cluster took to notice."""
        cut = time.monotonic()
        self.cluster.partition.cut_off(node)
        try:
            eventually_sync(
                lambda: node.name not in self.cluster.running_nodes(),
                timeout=2 * NET_TICKTIME_S + 5,
                interval=0.5,
            )
            noticed = time.monotonic() - cut
            time.sleep(max(0.0, seconds - (time.monotonic() - cut)))
        finally:
            self.cluster.partition.heal()
        healed = time.monotonic()
        self.wait_whole()
        self._log_since(
            cut,
            "partition",
            f"{node.name} cut off for {seconds:.0f}s, noticed after {noticed:.0f}s,"
            f" cluster whole {time.monotonic() - healed:.0f}s after the heal",
        )
        return noticed

    def rolling_restart(self) -> None:
        """Each node in turn: a clean stop, a start, and the cluster whole again before the next."""
        for node in self.cluster.nodes:
            began = time.monotonic()
            node.stop()
            stopped = time.monotonic() - began
            node.start()
            node.wait_booted(BOOT_S)
            booted = time.monotonic() - began
            self.wait_whole()
            self._log_since(
                began,
                "rolling restart",
                f"{node.name}: stopped in {stopped:.0f}s, booted at {booted:.0f}s,"
                f" cluster whole at {time.monotonic() - began:.0f}s",
            )

    def memory_alarm(self, seconds: float, during: Callable[[], None]) -> None:
        """A memory alarm on one node (the cluster blocks every publisher) for `seconds`; `during`
        runs while it holds (checks of what the system answers meanwhile)."""
        node = self.cluster.nodes[0]
        node.ctl("set_vm_memory_high_watermark", "0.000001")
        self.log.add("memory alarm", f"{node.name} for {seconds:.0f}s")
        began = time.monotonic()
        try:
            during()
            time.sleep(max(0.0, seconds - (time.monotonic() - began)))
        finally:
            node.ctl("set_vm_memory_high_watermark", "0.4")

    def crash_postgres(self, service: str, down_s: float = 6.0) -> None:
        """`pg_ctlcluster … stop -m immediate` on the service's own server (a crash: the server
        recovers from its WAL), and a start after `down_s`."""
        server = self.cluster.postgres[service]
        server.stop("immediate")
        self.log.add("postgresql crash", f"{service}'s server :{server.port} down {down_s:.0f}s")
        time.sleep(down_s)
        server.start()
