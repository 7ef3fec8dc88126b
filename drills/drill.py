"""One drill run's shared machinery: the cluster, its clients (`WriterFleet`), the observers, and
the fault clock every figure is measured from."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from components.bundle import node_name
from components.bundle.users import HST, MONITOR
from components.local.cluster import LocalCluster, LocalClusterError
from components.runtime import haproxy_admin
from components.runtime.quorum import server_info
from drills.clients import endpoint
from drills.fleet import WriterFleet
from drills.observers import HaproxyWatch, MasterWatch, SentinelEvents

__all__ = ["Drill", "Progress"]

Progress = Callable[[str], None]
T = TypeVar("T")


class Drill:
    """A fresh cluster with writers through every HAProxy, observers, and the fault clock."""

    def __init__(self, name: str, cluster: LocalCluster, naive: bool, progress: Progress,
                 writer_seconds: float, socket_timeout: float) -> None:
        self.name = name
        self.cluster = cluster
        self.settings = cluster.settings
        self.naive = naive
        self.progress = progress
        # The writers are HST Server: its user, through HAProxy. Observing is the monitoring user's.
        self.password = cluster.password(HST.key)
        self.monitor_password = cluster.password(MONITOR.key)
        self.down_after_s = self.settings.down_after_ms / 1000
        self.tls_ca_file = cluster.tls_ca_file  # the nodes' ports under tlsEnabled; HAProxy's stay plaintext
        self.events = SentinelEvents(cluster.sentinel_endpoints, self.monitor_password, self.tls_ca_file)
        self.watch = HaproxyWatch([n.layout.haproxy_socket for n in cluster.nodes])
        self.writers = WriterFleet(cluster.haproxy_endpoints, self.password, f"{int(time.time() * 1000) % 10**9}",
                                   writer_seconds=writer_seconds, socket_timeout=socket_timeout,
                                   sentinel_endpoints=cluster.sentinel_endpoints, master_name=self.settings.master_name,
                                   sentinel_password=self.monitor_password, tls_ca_file=self.tls_ca_file)
        self.masters = MasterWatch(cluster.redis_endpoints, cluster.sentinel_endpoints, self.settings.master_name,
                                   self.password, self.monitor_password, self.settings.sentinel_majority,
                                   tls_ca_file=self.tls_ca_file)
        self.nodes = self.writers.nodes
        self.t_start = time.monotonic()
        self._t_fault: float | None = None  # just before the fault
        self._t_injected: float | None = None  # just after: a write sent later meets the fault
        self.extra: dict[str, Any] = {}
        self.expected_failovers = 1
        self.recovery_from: tuple[int, ...] | None = None  # nodes whose HAProxy recovery counts (None: all)

    # --- phases

    def start(self, warmup_s: float = 0.5) -> None:
        self.events.start()
        self.wait_haproxy_checked()
        self.watch.start()
        self.masters.start()
        self.writers.start()
        deadline = time.monotonic() + 10.0
        time.sleep(warmup_s)
        while any(not w.acked for w in self.writers.writers):
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"writers could not write through every HAProxy before the fault: "
                    f"{[(w.endpoint, len(w.acked), Counter(e[3] for e in w.errors)) for w in self.writers.writers]}"
                )
            time.sleep(0.02)

    def wait_haproxy_checked(self, timeout_s: float = 10.0) -> None:
        """A fresh HAProxy counts every server UP until its first check; drill only once every
        server of every node's HAProxy has been checked at least once."""
        deadline = time.monotonic() + timeout_s
        sockets = [n.layout.haproxy_socket for n in self.cluster.nodes]
        while time.monotonic() < deadline:
            try:
                rows = [row for path in sockets for (_, server), row in haproxy_admin.stat(path).items()
                        if server not in ("FRONTEND", "BACKEND")]
            except OSError:
                rows = []
            if rows and all(row.get("check_status", "").strip("* ") not in ("", "INI") for row in rows):
                return
            time.sleep(0.05)

    def replication(self) -> dict[str, str]:
        """Each node's role, link and offset, in one line (recorded just before the fault)."""
        out = {}
        for i, address in enumerate(self.cluster.redis_endpoints):
            info = server_info(address, self.monitor_password, 0.5, tls_ca_file=self.tls_ca_file) or {}
            if info.get("role") == "slave":
                out[node_name(i)] = (f"replica of {info.get('master_host')} link {info.get('master_link_status')} "
                                     f"sync {info.get('master_sync_in_progress')} "
                                     f"offset {info.get('slave_repl_offset')}")
            else:
                out[node_name(i)] = (f"{info.get('role')} replicas {info.get('connected_slaves')} "
                                     f"offset {info.get('master_repl_offset')}")
        return out

    def fault(self, label: str, action: Callable[[], T]) -> T:
        self.extra["before_fault"] = self.replication()
        self.progress(f"{self.name}: {label}")
        self._t_fault = time.monotonic()
        result = action()
        self._t_injected = time.monotonic()
        return result

    @property
    def faulted(self) -> bool:
        return self._t_fault is not None

    @property
    def t_fault(self) -> float:
        """Just before the fault (the drill's zero)."""
        if self._t_fault is None:
            raise RuntimeError(f"{self.name}: no fault injected yet")
        return self._t_fault

    @property
    def t_injected(self) -> float:
        """Just after the fault: a write sent later meets it."""
        if self._t_injected is None:
            raise RuntimeError(f"{self.name}: no fault injected yet")
        return self._t_injected

    def since_fault(self) -> float:
        return time.monotonic() - self.t_fault

    def failover_budget(self) -> float:
        """Generous bound for a failover plus every HAProxy following it (never asserted as a speed)."""
        return self.down_after_s + 20.0

    def wait_recovered(self, since: float | None = None) -> bool:
        """Every node's HAProxy acknowledged a write sent after `since` (default: just after the
        fault), within the failover budget."""
        return self.writers.wait_recovered(self.failover_budget(), self.t_injected if since is None else since)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float,
                 every_s: float = 0.05) -> float | None:
        """Seconds since the fault until `predicate()` held, or None (recorded in the figures)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return round(self.since_fault(), 3)
            except (redis.RedisError, OSError, LocalClusterError):
                pass
            time.sleep(every_s)
        self.extra.setdefault("timeouts", []).append(what)
        return None

    def role(self, index: int) -> dict[str, Any] | None:
        return server_info(self.cluster.redis_endpoints[index], self.monitor_password, 0.5,
                           tls_ca_file=self.tls_ca_file)

    def follows_primary(self, index: int) -> bool:
        """Node `index`'s Redis is a replica, linked, of the primary a Sentinel majority names."""
        info = self.role(index) or {}
        primary = self.cluster.view.current_primary()
        return (info.get("role") == "slave" and info.get("master_link_status") == "up"
                and primary is not None and f"{info.get('master_host')}:{info.get('master_port')}" == primary)

    def settle(self, timeout_s: float = 30.0) -> str:
        """The primary a majority of Sentinels name, that says role:master, twice in a row 0.5 s apart."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            primary = self.cluster.view.current_primary()
            info = (server_info(endpoint(primary), self.monitor_password, 0.5, tls_ca_file=self.tls_ca_file)
                    if primary else None)
            if primary and info and info.get("role") == "master":
                if primary == last:
                    return primary
                last = primary
            else:
                last = None
            time.sleep(0.5)
        raise LocalClusterError(f"{self.name}: no stable primary {timeout_s:g}s after the drill "
                                f"(Sentinels name {self.cluster.view.sentinel_primaries()})")

    def close(self) -> None:
        self.writers.stop_all()
        self.masters.stop()
        self.watch.stop()
        self.events.stop()
