"""Fault drills on the node target: the program's user data booted in systemd-nspawn nodes
(components.node), joined by the latency switch (cross-zone latency, with jitter).

The drills' own machinery is reused as is: `Drill` (the fault clock, the observers), the writers
(`WriterFleet` of `BoundedWriter`s, plain SETs, retries off), `figures` (lost, in flight, recovery
through every node's HAProxy, promotions). What differs is where things are:

- this process runs in the cluster's hub namespace (`in_hub`), from which every node address
  is reachable: the Sentinel event streams, the read-back, the role questions;
- each writer thread enters its node's namespace before its first connection (`NodeWriter`): a
  node's HAProxy listens on 127.0.0.1:31414 there only, as on EC2;
- faults land on the node's own processes, signalled from the host by pid (systemd inside the node
  reacts as it would on EC2: a killed Redis is restarted 1 s later), on the switch (a partition
  drops every frame to and from the node, silently), or on the whole node (a clean poweroff and
  a boot from the same disk).

A cluster is booted per downAfterMs and shared by that setting's drills: before each run the
SentinelQuorum provider's verification must pass again, and the fault lands on whichever node is
primary then. There is no naive baseline here: it would need other files than the user data
renders, and this target boots the user data byte for byte (`benchmarks/results/drills.md` has it
side by side on the local target).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from components.aws.cloud_config import AWS_HOME
from components.bundle.model import NodeLayout
from components.bundle.users import HST, MONITOR, OPERATOR
from components.local.cluster import LocalCluster
from components.local.observe import ClusterView
from components.node.cluster import NodeCluster, NodeRecord, NodeTargetError
from components.node.latency import setns
from drills.clients import BoundedWriter
from drills.drill import Drill, Progress
from drills.figures import figures as drill_figures
from drills.fleet import WriterFleet

__all__ = ["NODE_DRILLS", "NodeDrill", "NodeTargetView", "guard_flaps", "in_hub", "run_node_drill", "split_vote_trial"]


@contextlib.contextmanager
def in_hub(cluster: NodeCluster) -> Iterator[None]:
    """Run this thread in the cluster's hub namespace (call it from the main thread before starting
    any other: threads started inside inherit the hub), and return to where it was afterwards."""
    assert cluster.record is not None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(f"/run/netns/{cluster.record.hub_netns}")
        try:
            yield
        finally:
            setns(f"/proc/self/fd/{home}")
    finally:
        os.close(home)


class NodeWriter(BoundedWriter):
    """A BoundedWriter that first enters its node's network namespace (setns is per thread)."""

    def __init__(self, *args: Any, netns_of: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.netns_of = netns_of

    def _run(self) -> None:
        assert self.node is not None
        setns(f"/run/netns/{self.netns_of[self.node]}")
        super()._run()


class NodeTargetView:
    """What `Drill` and `figures` ask of a cluster, answered by a running node target."""

    def __init__(self, cluster: NodeCluster) -> None:
        self.target = cluster
        self.settings = cluster.settings
        self._passwords = {key: cluster.password(key) for key in (HST.key, MONITOR.key, OPERATOR.key)}
        # Each node's files as the host sees them (its disk's overlay mount): HAProxy's admin socket.
        # Only paths are read from these layouts; the host never fetches the secret as a node.
        self.nodes = [
            SimpleNamespace(index=n.index, name=n.name, address=n.address,
                            layout=NodeLayout(home=f"{cluster.state_dir / n.name / 'root'}{AWS_HOME}",
                                              secrets_command="false", haproxy_address="127.0.0.1"))
            for n in cluster.nodes
        ]
        # tlsEnabled: the nodes' ports speak TLS, verified against the CA certificate the run made.
        self.tls_ca_file: str | None = cluster.tls_ca_file
        # The role questions (who is primary, INFO) are the operator's, as on the local target.
        self.view = ClusterView(self.settings, cast(Any, self.nodes), lambda: self.password(OPERATOR.key),
                                lambda *_: None, self.tls_ca_file)
        self.addresses = [n.address for n in cluster.nodes]

    def password(self, role_key: str) -> str:
        """A role's password (LocalCluster.password's contract: Drill asks for hst and monitor)."""
        return self._passwords[role_key]

    @property
    def redis_endpoints(self) -> list[tuple[str, int]]:
        return self.view.redis_endpoints

    @property
    def sentinel_endpoints(self) -> list[tuple[str, int]]:
        return self.view.sentinel_endpoints

    @property
    def haproxy_endpoints(self) -> list[tuple[str, int]]:
        return self.view.haproxy_endpoints

    def primary_index(self) -> int:
        primary = self.view.current_primary()
        if primary is None:
            raise NodeTargetError(f"no primary named by a Sentinel majority ({self.view.sentinel_primaries()})")
        return self.addresses.index(primary.rsplit(":", 1)[0])

    def signal_redis(self, index: int, sig: int) -> int:
        """Signal the node's redis-server from the host; how many processes got it."""
        pids = self.target.host_pids(self.target.nodes[index], "redis-server")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)


class NodeDrill(Drill):
    """A `Drill` on the node target: writers inside each node's namespace."""

    def __init__(self, name: str, view: NodeTargetView, progress: Progress, writer_seconds: float,
                 socket_timeout: float) -> None:
        super().__init__(name, cast(LocalCluster, view), False, progress, writer_seconds, socket_timeout)
        self.view = view
        netns_of = [n.netns for n in view.target.nodes]
        self.writers = WriterFleet(view.haproxy_endpoints, self.password, self.writers.tag,
                                   writer_seconds=writer_seconds, socket_timeout=socket_timeout,
                                   sentinel_endpoints=view.sentinel_endpoints, master_name=self.settings.master_name,
                                   sentinel_password=self.monitor_password,
                                   writer_type=functools.partial(NodeWriter, netns_of=netns_of),
                                   tls_ca_file=view.tls_ca_file)
        self.primary = view.primary_index()
        self.extra["primary_at_fault"] = view.nodes[self.primary].name

    def wait_recovered(self, since: float | None = None) -> bool:
        """As Drill's, but only the nodes whose recovery counts (a node powered off or cut off has
        clients that cannot recover until it is back: waiting for them would only burn the budget)."""
        return self.writers.wait_recovered(self.failover_budget(), self.t_injected if since is None else since,
                                           nodes=self.recovery_from)

    def wait_node_clients(self, index: int, since: float, timeout_s: float) -> float | None:
        """Seconds from the fault until node `index`'s own clients got a write acknowledged that
        they sent after `since` (their HAProxy is back and routes), or None."""
        if not self.writers.wait_recovered(timeout_s, since, nodes=[index]):
            return None
        first = self.writers.first_ack_via(index, since)
        return round(first - self.t_fault, 3) if first is not None else None


def _finish(d: NodeDrill, tail_s: float) -> str:
    time.sleep(tail_s)
    d.writers.stop_all()
    return d.settle(timeout_s=60.0)


def drill_kill(d: NodeDrill, tail_s: float) -> str:
    """SIGKILL of the primary's redis-server inside its node; systemd restarts it (RestartSec 1 s),
    and its start asks the Sentinels first. Below ~3 s of downAfterMs the Sentinels fail over before."""
    p = d.primary
    d.expected_failovers = 1
    d.fault(f"SIGKILL {d.view.nodes[p].name}'s redis-server (the primary)",
            lambda: d.view.signal_redis(p, signal.SIGKILL))
    if not d.wait_recovered():
        d.extra["not_recovered"] = True
    return _finish(d, tail_s)


def drill_zombie(d: NodeDrill, tail_s: float) -> str:
    """SIGSTOP of the primary's redis-server for max(2 x downAfterMs, downAfterMs + 3 s), then SIGCONT:
    it resumes after the failover, still saying role:master until Sentinel demotes it."""
    p = d.primary
    stop_s = max(2 * d.down_after_s, d.down_after_s + 3.0)
    d.extra["paused_s"] = stop_s
    d.fault(f"SIGSTOP {d.view.nodes[p].name}'s redis-server for {stop_s:g}s",
            lambda: d.view.signal_redis(p, signal.SIGSTOP))
    try:
        time.sleep(stop_s)
    finally:
        d.view.signal_redis(p, signal.SIGCONT)
    resumed = time.monotonic()
    d.extra["resumed_at_s"] = round(resumed - d.t_fault, 3)
    d.wait_recovered()
    d.extra["old_primary_demoted_s"] = d.wait_for(
        "old primary demoted", lambda: (d.role(p) or {}).get("role") == "slave", d.failover_budget())
    return _finish(d, tail_s)


def drill_partition(d: NodeDrill, tail_s: float) -> str:
    """The primary's node cut off by the switch (every frame to and from it dropped, silently) for
    downAfterMs + 4 s, then healed. Its own clients still reach its HAProxy (loopback in the node)."""
    p = d.primary
    name = d.view.nodes[p].name
    hold_s = d.down_after_s + 4.0
    d.extra["partition_s"] = hold_s
    d.recovery_from = tuple(i for i in range(d.nodes) if i != p)
    d.fault(f"partition {name} (the primary) for {hold_s:g}s", lambda: d.view.target.cut(name))
    try:
        time.sleep(hold_s)
    finally:
        d.view.target.heal(name)
    healed = time.monotonic()
    minority = [acked for w in d.writers.of_node(p) for _, _, acked in w.acked if d.t_injected <= acked < healed]
    d.extra["acked_via_minority_during_partition"] = len(minority)
    d.extra["minority_last_ack_s"] = round(max(minority) - d.t_fault, 3) if minority else None
    d.extra["failovers_during_partition"] = len(d.events.promotions(d.t_fault))
    d.extra["old_primary_demoted_s"] = d.wait_for(
        "old primary demoted", lambda: (d.role(p) or {}).get("role") == "slave", d.failover_budget())
    d.wait_recovered()
    back = d.wait_node_clients(p, healed, d.failover_budget())
    d.extra["minority_recovered_after_heal_s"] = round(back - (healed - d.t_fault), 3) if back is not None else None
    return _finish(d, tail_s)


def drill_node_restart(d: NodeDrill, tail_s: float) -> str:
    """The primary's whole node powered off cleanly (its disk stays) and booted again: the others fail
    over; the node's units start from the files Sentinel rewrote and it rejoins as a replica."""
    p = d.primary
    name = d.view.nodes[p].name
    d.recovery_from = tuple(i for i in range(d.nodes) if i != p)
    d.fault(f"stop-node {name} (the primary)", lambda: d.view.target.stop_node(name))
    d.extra["stopped_s"] = round(d.since_fault(), 3)
    if not d.wait_recovered():
        d.extra["not_recovered"] = True
    d.view.target.start_node(name)
    started = time.monotonic()
    d.extra["start_node_at_s"] = round(started - d.t_fault, 3)
    d.extra["node_clients_back_s"] = d.wait_node_clients(p, started, 180.0)
    d.extra["rejoined_as_replica_s"] = d.wait_for(
        "restarted node follows the primary", lambda: d.follows_primary(p), 60.0, 0.2)
    return _finish(d, tail_s)


NODE_DRILLS: dict[str, Callable[[NodeDrill, float], str]] = {
    "kill": drill_kill,
    "zombie": drill_zombie,
    "partition": drill_partition,
    "node-restart": drill_node_restart,
}


def run_node_drill(cluster: NodeCluster, view: NodeTargetView, name: str, *, tail_s: float = 1.0,
                   progress: Progress | None = None, writer_seconds: float = 240.0,
                   socket_timeout: float = 0.5) -> dict[str, Any]:
    """One run of one drill on a running node target (this thread in its hub: see in_hub)."""
    progress = progress or (lambda message: None)
    started = time.monotonic()
    report = cluster.verify(timeout_s=180.0)  # a healthy, failover-ready cluster before every fault
    progress(f"{name}: verified, primary {report.primary}")
    drill = NodeDrill(name, view, progress, writer_seconds, socket_timeout)
    try:
        drill.start()
        primary = NODE_DRILLS[name](drill, tail_s)
        result = drill_figures(drill, primary)
    finally:
        drill.close()
    result["run_s"] = round(time.monotonic() - started, 1)
    result["target"] = "node"
    result["switch"] = _switch_stats(cluster)
    return result


def _switch_stats(cluster: NodeCluster) -> dict[str, Any] | None:
    assert cluster.record is not None
    if cluster.record.latency_ms is None:
        return None
    return {"latency_ms": cluster.record.latency_ms, "jitter_ms": cluster.record.jitter_ms}


def split_vote_trial(cluster: NodeCluster, view: NodeTargetView, progress: Progress,
                     timeout_s: float = 120.0) -> dict[str, Any]:
    """Stop the primary's Redis unit (as `Test a failover` does); count the Sentinels' aborted
    elections (`-failover-abort-not-elected`) and time until a majority names another primary."""
    from drills.observers import SentinelEvents

    cluster.verify(timeout_s=180.0)
    p = view.primary_index()
    node: NodeRecord = cluster.nodes[p]
    old = f"{node.address}:{view.settings.redis_port}"
    events = SentinelEvents(view.sentinel_endpoints, view.password(MONITOR.key))
    events.start()
    try:
        t0 = time.monotonic()
        cluster.exec_in(node, ["systemctl", "stop", "hst-ha-redis"], timeout_s=60)
        new_primary_s = None
        while time.monotonic() - t0 < timeout_s:
            primary = view.view.current_primary()
            if primary is not None and primary != old:
                new_primary_s = round(time.monotonic() - t0, 3)
                break
            time.sleep(0.1)
        aborted = events.since(t0, "-failover-abort-not-elected")
        tries = events.since(t0, "+try-failover")
        leaders = events.since(t0, "+elected-leader")
    finally:
        events.stop()
        cluster.exec_in(node, ["systemctl", "start", "hst-ha-redis"], timeout_s=60)
    result = {"stopped": node.name, "new_primary_s": new_primary_s, "try_failover": len(tries),
              "elected_leader": len(leaders), "abort_not_elected": len(aborted),
              "aborted_at_s": [round(e[0] - t0, 3) for e in aborted]}
    progress(f"split-vote trial: {result}")
    return result


def guard_flaps(cluster: NodeCluster, view: NodeTargetView, seconds: float, busy_loops: int,
                progress: Progress) -> dict[str, Any]:
    """No fault, `busy_loops` CPU-bound loops inside every node for `seconds` (bounded by `timeout`):
    how often a guard check (a Sentinel asked by HAProxy whether it names a node) that passed failed
    (a guard for a node that is not primary fails all the time: only changes count), and how
    often a node's HAProxy saw two of one node's guards down at once (its fence then ends every
    session routed to that node)."""
    from components.bundle import GUARD_BACKEND_PREFIX
    from drills.observers import HaproxyWatch

    cluster.verify(timeout_s=180.0)
    watch = HaproxyWatch([n.layout.haproxy_socket for n in view.nodes])
    loops: list[subprocess.Popen[bytes]] = []
    watch.start()
    try:
        for node in cluster.nodes:
            leader = cluster.leader(node)
            for _ in range(busy_loops):
                loops.append(subprocess.Popen(
                    ["nsenter", f"--target={leader}", "--all", "--", "timeout", str(int(seconds)),
                     "sh", "-c", "while :; do :; done"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(seconds)
    finally:
        for loop in loops:
            if loop.poll() is None:
                loop.kill()
            loop.wait(10)
        watch.stop()
    downs: dict[str, int] = {}
    fenced = 0
    state: dict[tuple[int, str, str], bool] = {}
    for _, index, backend, server, status in watch.changes:
        key = (index, backend, server)
        up = status == "UP"  # "UP 1/2" is a failed check already: the server is going down
        if not backend.startswith(GUARD_BACKEND_PREFIX) or key not in state:  # the first poll: the baseline
            state[key] = up
            continue
        if not up and state[key]:
            downs[f"{view.nodes[index].name}:{backend}"] = downs.get(f"{view.nodes[index].name}:{backend}", 0) + 1
            down_now = sum(1 for (i, b, _), u in state.items() if i == index and b == backend and not u) + 1
            if len(view.nodes) - down_now < view.settings.sentinel_majority:
                fenced += 1
        state[(index, backend, server)] = up
    result = {"seconds": seconds, "busy_loops_per_node": busy_loops, "guard_check_downs": sum(downs.values()),
              "by_guard": downs, "times_a_guard_lost_its_majority": fenced,
              "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    progress(f"guard flaps: {result}")
    return result
