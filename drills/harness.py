"""Fault drills on the local target: a bounded writer, the drills, and the naive comparison baseline.

Every drill starts a fresh `LocalCluster` (the very bundles the AWS target renders, run as processes
on loopback), writes through every node's HAProxy as HST Server does, injects one fault, and returns
a dict of figures:

- `recovery_s`: from the fault to the first acknowledged write, sent after the fault, through EVERY
  node's HAProxy (the slowest HAProxy decides; `recovery_by_haproxy` has each one);
- `acked`, `lost` (acknowledged and missing from the final primary afterwards), `refused` (errors
  the client saw, by kind in `refused_by_kind`);
- `failovers` (promotions Sentinel announced with `+promoted-slave`), `false_failover` (more
  promotions than the fault justifies: any at all for a short pause, a second one after a kill).

The writers are deliberately plain: `SET key value`, no WAIT, redis-py with its own retries off
(redis-py retries by default, which would hide the outage from the figures). Through each node's
HAProxy one writer keeps a long-lived connection and writes flat out, dropping and reopening it on
any connection error as a real client does (HST Server's Hiredis connection); another opens a new
connection for every write, every 20 ms (the clients HAProxy routes afresh, to a stale node if it lets them).

The naive configuration (`naive=True`) is the COMPARISON BASELINE only: the rendered bundle with
the Sentinel-majority guard removed from HAProxy (a plain `role:master` tcp-check with normal
weights, the classic setup) and `min-replicas-to-write 0`. It is made here, by rewriting the rendered
files before the node first boots; the product renderer has no naive mode.

Plain Python, no Pulumi. `scripts/drill.py` prints the figures of N runs as JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry

from components.bundle import GUARD_BACKEND_PREFIX, BundleFile, node_name
from components.local.cluster import DEFAULT_BASE_ADDRESS, LocalCluster, LocalClusterError
from components.runtime.quorum import QuorumError, one_shot_client, server_info
from components.settings import ClusterSettings, parse_settings

__all__ = [
    "DRILLS", "DRILL_ALIASES", "BoundedWriter", "DrillCluster", "SentinelEvents", "haproxy_stat",
    "naive_transform", "pin_source_transform", "run_drill", "summarize",
]

Progress = Callable[[str], None]
Transform = Callable[[int, str, str, str], str]  # (node index, node address, file path, content) -> content

REPO = Path(__file__).resolve().parent.parent
NETNS_ENV = "HST_DRILL_PRIVATE_NETNS"  # set in the child that runs inside its own network namespace

# Redis acknowledges a write and streams it to its replicas in the same event-loop pass, not in
# that order for every client: a primary frozen or killed between the two has acknowledged a write
# no replica ever received. That is asynchronous replication itself, which no configuration closes
# (only WAIT does). Lost writes acknowledged this shortly BEFORE the fault are counted apart as in
# flight; a write acknowledged after the fault, or earlier than this, is a real loss.
IN_FLIGHT_S = 0.1


# --------------------------------------------------------------------------- small clients


def _endpoint(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


# --------------------------------------------------------------------------- the writer


class BoundedWriter:
    """Writes `drill:<tag>:<n>` = n, n = 1, 2, ... through one endpoint, bounded by count and time.

    Records every acknowledged write as (n, sent, acknowledged) and every failed one as
    (n, sent, failed, kind), times from `time.monotonic()`. Retries are off in redis-py: each
    write is exactly one attempt. After a connection error or timeout the connection is dropped
    and the next write connects again; after a refusal (e.g. NOREPLICAS, READONLY) the connection is
    kept, as a real client keeps it. Either way it pauses `error_pause_s` so an outage is not a busy loop.

    With `connection_per_write` it opens a new connection for every write instead (connect, AUTH,
    SET, close) every `pace_s`: the clients that come and go (a transfer session, a restarted
    service), which are the ones HAProxy routes afresh, to a stale node if it lets them.
    """

    def __init__(
        self, endpoint: tuple[str, int], password: str, tag: str, *, max_count: int = 500_000,
        max_seconds: float = 120.0, socket_timeout: float = 0.5, error_pause_s: float = 0.01,
        connection_per_write: bool = False, pace_s: float = 0.0,
    ) -> None:
        self.endpoint = endpoint
        self.node: int | None = None  # index of the node whose HAProxy this writer goes through
        self.connection_per_write = connection_per_write
        self.pace_s = pace_s
        self.password = password
        self.tag = tag
        self.max_count = max_count
        self.max_seconds = max_seconds
        self.socket_timeout = socket_timeout
        self.error_pause_s = error_pause_s
        self.acked: list[tuple[int, float, float]] = []
        self.errors: list[tuple[int, float, float, str]] = []
        self.ended_by = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{tag}", daemon=True)

    def key(self, seq: int) -> str:
        return f"drill:{self.tag}:{seq}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float = 5.0) -> None:
        self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _connect(self) -> redis.Redis:
        host, port = self.endpoint
        return redis.Redis(
            host=host, port=port, password=self.password,
            socket_timeout=self.socket_timeout, socket_connect_timeout=self.socket_timeout,
            retry=Retry(NoBackoff(), 0),  # exactly one attempt per write: the outage shows in the figures
            driver_info=DriverInfo(name=None, lib_version=None),
        )

    def _run(self) -> None:
        client = self._connect()
        deadline = time.monotonic() + self.max_seconds
        seq = 0
        try:
            while True:
                if self._stop.is_set():
                    self.ended_by = "stopped"
                    return
                if seq >= self.max_count:
                    self.ended_by = "count bound"
                    return
                if time.monotonic() >= deadline:
                    self.ended_by = "time bound"
                    return
                seq += 1
                sent = time.monotonic()
                try:
                    client.set(self.key(seq), seq)
                    self.acked.append((seq, sent, time.monotonic()))
                except redis.ResponseError as exc:
                    self.errors.append((seq, sent, time.monotonic(), _error_kind(exc)))
                    self._stop.wait(self.error_pause_s)
                except (redis.RedisError, OSError) as exc:
                    self.errors.append((seq, sent, time.monotonic(), _error_kind(exc)))
                    client.connection_pool.disconnect()
                    self._stop.wait(self.error_pause_s)
                if self.connection_per_write:
                    client.connection_pool.disconnect()
                    self._stop.wait(max(0.0, self.pace_s - (time.monotonic() - sent)))
        finally:
            client.close()

    def first_ack_sent_after(self, t: float) -> tuple[int, float, float] | None:
        for entry in self.acked:  # appended in order
            if entry[1] >= t:
                return entry
        return None

    def acked_between(self, start: float, end: float) -> int:
        return sum(1 for _, _, acked in self.acked if start <= acked < end)


def _error_kind(exc: BaseException) -> str:
    if type(exc) is redis.ResponseError:  # subclasses (ReadOnlyError, ...) are named by their class
        word = str(exc).split(" ", 1)[0]
        return word if word.isupper() else f"ResponseError: {str(exc)[:40]}"
    return type(exc).__name__


def read_back(
    primary: tuple[str, int], password: str, writers: Sequence[BoundedWriter]
) -> list[list[tuple[int, float, float]]]:
    """Per writer, the acknowledged writes (seq, sent, acked) whose key the primary does not hold
    with its value (each value is its own sequence number)."""
    client = one_shot_client(primary, password, 5.0)
    missing: list[list[tuple[int, float, float]]] = []
    try:
        for writer in writers:
            entries, gone = writer.acked, []
            for i in range(0, len(entries), 5000):
                batch = entries[i:i + 5000]
                values = client.mget([writer.key(seq) for seq, _, _ in batch])
                gone += [entry for entry, value in zip(batch, values) if value != str(entry[0])]
            missing.append(gone)
    finally:
        client.close()
    return missing


# --------------------------------------------------------------------------- observers


class SentinelEvents:
    """Every Sentinel's event stream (PSUBSCRIBE *), stamped with our monotonic clock.
    A listener whose Sentinel dies keeps trying to reconnect until `stop()`."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], password: str) -> None:
        self.events: list[tuple[float, str, str, str]] = []  # (t, sentinel host, channel, data)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = [threading.Event() for _ in endpoints]
        self._threads = [
            threading.Thread(target=self._listen, args=(e, password, ready), daemon=True, name=f"events-{e[0]}")
            for e, ready in zip(endpoints, self._ready)
        ]

    def start(self, timeout_s: float = 5.0) -> None:
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + timeout_s
        for ready in self._ready:
            ready.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2.0)

    def _listen(self, endpoint: tuple[str, int], password: str, ready: threading.Event) -> None:
        while not self._stop.is_set():
            client = one_shot_client(endpoint, password, 1.0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe("*")
                ready.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message and message.get("type") == "pmessage":
                        with self._lock:
                            self.events.append((time.monotonic(), endpoint[0], message["channel"], message["data"]))
            except (redis.RedisError, OSError):
                ready.set()
                self._stop.wait(0.2)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except (redis.RedisError, OSError):
                    pass

    def since(self, t: float, channel: str | None = None) -> list[tuple[float, str, str, str]]:
        with self._lock:
            return [e for e in self.events if e[0] >= t and (channel is None or e[2] == channel)]

    def promotions(self, t: float) -> list[tuple[float, str]]:
        """(time, promoted address) of each promotion since t. Only the failover leader announces
        `+promoted-slave`, so each promotion appears once."""
        seen = []
        for when, _, _, data in self.since(t, "+promoted-slave"):
            # "slave 127.0.0.12:31415 127.0.0.12 31415 @ myprimary 127.0.0.11 31415"
            seen.append((when, data.split()[1]))
        return seen


def haproxy_stat(socket_path: str, timeout_s: float = 1.0) -> dict[tuple[str, str], dict[str, str]]:
    """`show stat` from a node's HAProxy admin socket, parsed with the csv module (the check
    description field is quoted and may carry commas and the Sentinel's raw CR LF reply)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(socket_path)
        conn.sendall(b"show stat\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace")
    if text.startswith("# "):
        text = text[2:]
    rows = csv.DictReader(io.StringIO(text, newline=""))
    return {(row["pxname"], row["svname"]): row for row in rows if row.get("pxname")}


class HaproxyWatch:
    """Polls every node's `show stat`; records each server's status changes (for the timelines)."""

    def __init__(self, sockets: Sequence[str], interval_s: float = 0.05) -> None:
        self.sockets = list(sockets)
        self.interval_s = interval_s
        self.changes: list[tuple[float, int, str, str, str]] = []  # (t, node index, backend, server, status)
        self._last: dict[tuple[int, str, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="haproxy-watch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            for index, path in enumerate(self.sockets):
                try:
                    stats = haproxy_stat(path, 0.5)
                except OSError:
                    continue
                now = time.monotonic()
                for (backend, server), row in stats.items():
                    if server in ("FRONTEND", "BACKEND"):
                        continue
                    status = row.get("status", "")
                    key = (index, backend, server)
                    if self._last.get(key) != status:
                        self._last[key] = status
                        self.changes.append((now, index, backend, server, status))
            self._stop.wait(self.interval_s)


# --------------------------------------------------------------------------- bundle transforms


def naive_transform(index: int, address: str, path: str, content: str) -> str:
    """COMPARISON BASELINE, not the product: HAProxy routes to any node whose tcp-check says
    role:master (no Sentinel-majority guard, normal weights), and Redis accepts writes without
    connected replicas (min-replicas-to-write 0)."""
    name = path.rsplit("/", 1)[-1]
    if name == "haproxy.cfg" and "/templates/" in path:
        out, skipping = [], False
        for line in content.splitlines():
            if line.startswith(f"backend {GUARD_BACKEND_PREFIX}"):
                skipping = True
            elif line and not line.startswith(" "):
                skipping = False
            if skipping or line.startswith("    use-server "):
                continue
            if line.startswith("    server node-"):
                line = line.replace(" weight 0", "")
            out.append(line)
        return "\n".join(out).rstrip("\n") + "\n"
    if name == "redis.conf" and "/templates/" in path:
        return "\n".join(
            "min-replicas-to-write 0" if line.startswith("min-replicas-to-write ") else line
            for line in content.splitlines()
        ) + "\n"
    return content


def pin_source_transform(index: int, address: str, path: str, content: str) -> str:
    """For the partition drill only. On a real host every outgoing connection leaves from the
    node's one private IP; on a shared loopback the kernel would pick 127.0.0.1 for all of them, and
    no rule could cut one "host" off. So each daemon's outgoing connections leave from its node's
    address: `bind-source-addr` for Redis and Sentinel, `source` for HAProxy."""
    name = path.rsplit("/", 1)[-1]
    if "/templates/" not in path:
        return content
    if name in ("redis.conf", "sentinel.conf"):
        return content.rstrip("\n") + f"\nbind-source-addr {address}\n"
    if name == "haproxy.cfg":
        return content.replace("\n    mode tcp\n", f"\n    mode tcp\n    source {address}\n", 1)
    return content


class DrillCluster(LocalCluster):
    """A `LocalCluster` whose nodes' rendered files pass through `transforms` before first boot
    (the naive baseline, the partition drill's source pinning). Without transforms it IS the product."""

    def __init__(self, settings: ClusterSettings, state_dir: str | os.PathLike[str], *,
                 transforms: Sequence[Transform] = (), **kwargs: Any) -> None:
        self._transforms = tuple(transforms)  # set before LocalCluster renders the nodes
        super().__init__(settings, state_dir, **kwargs)

    def _render(self, index: int):  # type: ignore[override]
        node = super()._render(index)
        if not self._transforms:
            return node
        files = []
        for item in node.bundle.files:
            content = item.content
            for transform in self._transforms:
                content = transform(index, node.address, item.path, content)
            files.append(BundleFile(item.path, content, item.mode))
        return dataclasses.replace(node, bundle=dataclasses.replace(node.bundle, files=tuple(files)))


# --------------------------------------------------------------------------- one drill run


class Drill:
    """The shared machinery of every drill: cluster, writers, observers, the fault clock, the figures."""

    def __init__(self, name: str, cluster: LocalCluster, naive: bool, progress: Progress,
                 writer_seconds: float, socket_timeout: float) -> None:
        self.name = name
        self.cluster = cluster
        self.settings = cluster.settings
        self.naive = naive
        self.progress = progress
        self.password = cluster.password()
        self.down_after_s = self.settings.down_after_ms / 1000
        self.events = SentinelEvents(cluster.sentinel_endpoints, self.password)
        self.watch = HaproxyWatch([n.layout.haproxy_socket for n in cluster.nodes])
        self.tag = f"{int(time.time() * 1000) % 10**9}"
        self.writer_seconds = writer_seconds
        self.socket_timeout = socket_timeout
        self.nodes = len(cluster.haproxy_endpoints)
        self.writers: list[BoundedWriter] = []
        for i in range(self.nodes):
            self.add_writers(i, start=False)
        self.t_start = time.monotonic()
        self.t_fault: float | None = None  # just before the fault
        self.t_injected: float | None = None  # just after: a write sent later meets the fault
        self.extra: dict[str, Any] = {}
        self.expected_failovers = 1
        self.recovery_from: Sequence[int] | None = None  # nodes whose HAProxy recovery counts (None: all)

    # --- phases

    def start(self, warmup_s: float = 0.5) -> None:
        self.events.start()
        self.wait_haproxy_checked()
        self.watch.start()
        for writer in self.writers:
            writer.start()
        deadline = time.monotonic() + 10.0
        time.sleep(warmup_s)
        while any(not w.acked for w in self.writers):
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"writers could not write through every HAProxy before the fault: "
                    f"{[(w.endpoint, len(w.acked), Counter(e[3] for e in w.errors)) for w in self.writers]}"
                )
            time.sleep(0.02)

    def wait_haproxy_checked(self, timeout_s: float = 10.0) -> None:
        """A fresh HAProxy counts every server UP until its first check; drill only once every
        server of every node's HAProxy has been checked at least once."""
        deadline = time.monotonic() + timeout_s
        sockets = [n.layout.haproxy_socket for n in self.cluster.nodes]
        while time.monotonic() < deadline:
            try:
                rows = [row for path in sockets for (_, server), row in haproxy_stat(path).items()
                        if server not in ("FRONTEND", "BACKEND")]
            except OSError:
                rows = []
            if rows and all(row.get("check_status", "").strip("* ") not in ("", "INI") for row in rows):
                return
            time.sleep(0.05)

    def replication(self) -> dict[str, str]:
        """Each node's role, link and offset, in one line (recorded just before the fault)."""
        out = {}
        for i, endpoint in enumerate(self.cluster.redis_endpoints):
            info = server_info(endpoint, self.password, 0.5) or {}
            if info.get("role") == "slave":
                out[node_name(i)] = (f"replica of {info.get('master_host')} link {info.get('master_link_status')} "
                                     f"sync {info.get('master_sync_in_progress')} offset {info.get('slave_repl_offset')}")
            else:
                out[node_name(i)] = (f"{info.get('role')} replicas {info.get('connected_slaves')} "
                                     f"offset {info.get('master_repl_offset')}")
        return out

    def fault(self, label: str, action: Callable[[], Any]) -> Any:
        self.extra["before_fault"] = self.replication()
        self.progress(f"{self.name}: {label}")
        self.t_fault = time.monotonic()
        result = action()
        self.t_injected = time.monotonic()
        return result

    def since_fault(self) -> float:
        assert self.t_fault is not None
        return time.monotonic() - self.t_fault

    def add_writers(self, index: int, start: bool = True) -> None:
        """Node `index`'s clients, through its HAProxy: one long-lived connection writing flat out
        (HST Server's Hiredis connection) and one new connection every 20 ms (the clients that
        HAProxy routes afresh)."""
        endpoint = self.cluster.haproxy_endpoints[index]
        generation = sum(1 for w in self.writers if w.node == index) // 2
        tag = f"{self.tag}:{index + 1}" + (f"g{generation}" if generation else "")
        pair = [
            BoundedWriter(endpoint, self.password, tag, max_seconds=self.writer_seconds,
                          socket_timeout=self.socket_timeout),
            BoundedWriter(endpoint, self.password, f"{tag}n", max_seconds=self.writer_seconds,
                          socket_timeout=self.socket_timeout, connection_per_write=True, pace_s=0.02),
        ]
        for writer in pair:
            writer.node = index
            self.writers.append(writer)
            if start:
                writer.start()

    def stop_node_writers(self, index: int) -> None:
        for writer in self.node_writers(index):
            writer.stop()
        for writer in self.node_writers(index):
            writer.join(5.0)

    def node_writers(self, index: int) -> list[BoundedWriter]:
        """The writers going through node `index`'s HAProxy."""
        return [w for w in self.writers if w.node == index]

    def first_ack_via(self, index: int, after: float) -> float | None:
        """When the first write sent after `after` through node `index`'s HAProxy was acknowledged."""
        firsts = [f[2] for w in self.node_writers(index) if (f := w.first_ack_sent_after(after))]
        return min(firsts) if firsts else None

    def acked_via(self, index: int, start: float, end: float) -> int:
        return sum(w.acked_between(start, end) for w in self.node_writers(index))

    def recovered(self, nodes: Iterable[int] | None = None, since: float | None = None) -> bool:
        """Every node's HAProxy (or those of `nodes`) acknowledged a write sent after `since`
        (default: just after the fault)."""
        since = self.t_injected if since is None else since
        assert since is not None
        indices = range(self.nodes) if nodes is None else nodes
        return all(self.first_ack_via(i, since) is not None for i in indices)

    def wait_recovered(self, timeout_s: float, nodes: Iterable[int] | None = None, since: float | None = None) -> bool:
        nodes = None if nodes is None else list(nodes)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.recovered(nodes, since):
                return True
            time.sleep(0.02)
        return self.recovered(nodes, since)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> float | None:
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
        return server_info(self.cluster.redis_endpoints[index], self.password, 0.5)

    def stop_writers(self) -> None:
        for writer in self.writers:
            writer.stop()
        for writer in self.writers:
            writer.join(5.0)

    def settle(self, timeout_s: float = 30.0) -> str:
        """The primary a majority of Sentinels name, that says role:master, twice in a row 0.5 s apart."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            primary = self.cluster.current_primary()
            info = server_info(_endpoint(primary), self.password, 0.5) if primary else None
            if primary and info and info.get("role") == "master":
                if primary == last:
                    return primary
                last = primary
            else:
                last = None
            time.sleep(0.5)
        raise LocalClusterError(f"{self.name}: no stable primary {timeout_s:g}s after the drill "
                                f"(Sentinels name {self.cluster.sentinel_primaries()})")

    # --- figures

    def figures(self, primary: str) -> dict[str, Any]:
        missing = read_back(_endpoint(primary), self.password, self.writers)
        t0 = self.t_fault if self.t_fault is not None else self.t_start
        lost = {
            f"{node_name(w.node or 0)} {'new connections' if w.connection_per_write else 'long-lived'}"
            f"{' ' + w.tag if w.tag.count('g') else ''}": {
                "count": len(gone), "seq": [gone[0][0], gone[-1][0]],
                "acked_s": [round(gone[0][2] - t0, 3), round(gone[-1][2] - t0, 3)]}
            for i, (w, gone) in enumerate(zip(self.writers, missing)) if gone
        }
        promotions = self.events.promotions(t0)
        recovery: dict[str, float | None] = {}
        for i in range(self.nodes):
            first = self.first_ack_via(i, self.t_injected) if self.t_injected is not None else None
            recovery[node_name(i)] = round(first - t0, 3) if first is not None else None
        counted = [recovery[node_name(i)] for i in (range(self.nodes) if self.recovery_from is None else self.recovery_from)]
        refused = Counter(e[3] for w in self.writers for e in w.errors)
        figures = {
            "drill": self.name,
            "config": "naive" if self.naive else "ours",
            "down_after_ms": self.settings.down_after_ms,
            "recovery_s": None if None in counted or not counted else max(counted),
            "recovery_by_haproxy": recovery,
            "acked": sum(len(w.acked) for w in self.writers),
            # per node's HAProxy: [long-lived connection, new connection per write]
            "acked_by_haproxy": {node_name(i): [sum(len(w.acked) for w in self.node_writers(i) if w.connection_per_write == per)
                                                for per in (False, True)] for i in range(self.nodes)},
            "lost": sum(len(gone) for gone in missing),
            "lost_in_flight_at_fault": sum(1 for gone in missing for _, _, acked in gone
                                           if t0 - IN_FLIGHT_S <= acked < t0),
            "lost_by_haproxy": lost,  # seq range and acknowledgement times (since the fault) of the lost writes
            "refused": sum(refused.values()),
            "refused_by_kind": dict(refused),
            "failovers": len(promotions),
            "promoted": [address for _, address in promotions],
            "false_failover": len(promotions) > self.expected_failovers,
            "final_primary": primary,
            "timeline": self.timeline(t0),
            "fence": self.fence_log(),
            "writers_ended_by": sorted({w.ended_by for w in self.writers}),
        }
        figures.update(self.extra)
        return figures

    def fence_log(self) -> dict[str, list[str]]:
        """What each node's HAProxy fence did (its warnings in the HAProxy log), by node."""
        out = {}
        for i, node in enumerate(self.cluster.nodes):
            try:
                text = (Path(node.layout.log) / "haproxy.out").read_text(errors="replace")
            except OSError:
                continue
            lines = [line.split("hst-ha fence: ", 1)[1] for line in text.splitlines() if "hst-ha fence: " in line]
            if lines:
                out[node_name(i)] = lines
        return out

    def timeline(self, t0: float) -> list[str]:
        """Key Sentinel events and HAProxy changes after the fault, in seconds since it (for investigation)."""
        keep = {"+sdown", "-sdown", "+odown", "-odown", "+try-failover", "+elected-leader", "+promoted-slave",
                "+switch-master", "+failover-end", "+convert-to-slave", "-failover-abort-no-good-slave",
                "+failover-end-for-timeout", "-failover-abort-not-elected", "+tilt", "-tilt", "+reboot"}
        lines = []
        for when, sentinel, channel, data in self.events.since(t0):
            if channel in keep and not (channel in ("+sdown", "-sdown") and data.startswith("sentinel ")):
                lines.append((when - t0, f"sentinel@{sentinel} {channel} {data}"))
        for when, index, backend, server, status in self.watch.changes:
            if when >= t0 and (backend.startswith(GUARD_BACKEND_PREFIX) or backend == "redis_primary"):
                lines.append((when - t0, f"haproxy@{node_name(index)} {backend}/{server} {status}"))
        return [f"{t:7.3f} {text}" for t, text in sorted(lines)]

    def close(self) -> None:
        self.stop_writers()
        self.watch.stop()
        self.events.stop()


# --------------------------------------------------------------------------- the drills


def _failover_budget(drill: Drill) -> float:
    """Generous bound for a failover plus every HAProxy following it (never asserted as a speed)."""
    return drill.down_after_s + 20.0


def drill_kill_primary(d: Drill, tail_s: float) -> str:
    """1. SIGKILL of the primary's Redis."""
    d.fault("SIGKILL node-1 redis (the primary)", lambda: d.cluster.kill(0, "redis", signal.SIGKILL))
    if not d.wait_recovered(_failover_budget(d)):
        d.extra["not_recovered"] = True
    time.sleep(tail_s)
    d.stop_writers()
    return d.settle()


def drill_zombie_primary(d: Drill, tail_s: float) -> str:
    """2. SIGSTOP of the primary for 2 x downAfterMs but at least downAfterMs + 3 s, then SIGCONT.
    At 1000 ms a 2 s pause often ends before the promotion (detection, the up-to-1 s start desync
    and election, then promotion seen at the next 1 s INFO); the extra 3 s make the old primary
    resume after the failover, as a zombie: it still says role:master until Sentinel demotes it."""
    stop_s = max(2 * d.down_after_s, d.down_after_s + 3.0)
    d.extra["paused_s"] = stop_s
    d.fault(f"SIGSTOP node-1 redis for {stop_s:g}s", lambda: d.cluster.kill(0, "redis", signal.SIGSTOP))
    try:
        time.sleep(stop_s)
    finally:
        d.cluster.kill(0, "redis", signal.SIGCONT)
    resumed = time.monotonic()
    d.extra["resumed_at_s"] = round(resumed - d.t_fault, 3)
    d.extra["failovers_before_resume"] = len(d.events.promotions(d.t_fault))
    return _after_zombie_resumed(d, resumed, tail_s)


def _after_zombie_resumed(d: Drill, resumed: float, tail_s: float) -> str:
    """Both zombie drills end alike: recovery, the old primary's demotion, and which node's
    HAProxy still took writes after it resumed."""
    d.wait_recovered(_failover_budget(d))
    d.extra["old_primary_demoted_s"] = d.wait_for(
        "old primary demoted", lambda: (d.role(0) or {}).get("role") == "slave", _failover_budget(d))
    time.sleep(tail_s)
    d.stop_writers()
    d.extra["acked_after_resume_via"] = {
        node_name(i): d.acked_via(i, resumed, time.monotonic()) for i in range(d.nodes)
    }
    return d.settle()


def drill_zombie_mid_failover(d: Drill, tail_s: float) -> str:
    """2b. The nastiest zombie: SIGSTOP of the primary, SIGCONT the moment the failover leader has
    told a replica to become primary (+failover-state-wait-promotion), i.e. before any Sentinel
    names the new primary. The old primary resumes with its other replica still attached."""
    resumed: list[float] = []

    def stop() -> None:
        d.cluster.kill(0, "redis", signal.SIGSTOP)

    d.fault("SIGSTOP node-1 redis until the failover leader promotes a replica", stop)
    try:
        deadline = time.monotonic() + _failover_budget(d)
        while time.monotonic() < deadline and not d.events.since(d.t_fault, "+failover-state-wait-promotion"):
            time.sleep(0.005)
    finally:
        d.cluster.kill(0, "redis", signal.SIGCONT)
        resumed.append(time.monotonic())
    d.extra["resumed_at_s"] = round(resumed[0] - d.t_fault, 3)
    return _after_zombie_resumed(d, resumed[0], tail_s)


def drill_short_pause(d: Drill, tail_s: float) -> str:
    """3. SIGSTOP of the primary for half of downAfterMs: shorter than detection, so no failover."""
    d.expected_failovers = 0
    pause_s = d.down_after_s / 2
    d.extra["paused_s"] = pause_s
    d.fault(f"SIGSTOP node-1 redis for {pause_s:g}s", lambda: d.cluster.kill(0, "redis", signal.SIGSTOP))
    try:
        time.sleep(pause_s)
    finally:
        d.cluster.kill(0, "redis", signal.SIGCONT)
    d.wait_recovered(_failover_budget(d))
    # Watch long enough for a failover that a pause wrongly started to show: detection + election.
    time.sleep(max(tail_s, d.down_after_s + 3.0))
    d.stop_writers()
    d.extra["sdown_of_primary"] = len([e for e in d.events.since(d.t_fault, "+sdown") if e[3].startswith("master ")])
    return d.settle()


def drill_one_sentinel_down(d: Drill, tail_s: float) -> str:
    """4a. One Sentinel (node-3's) killed, then the primary's Redis: the two left still fail over."""
    d.cluster.kill(2, "sentinel", signal.SIGKILL)
    time.sleep(0.2)
    d.fault("SIGKILL node-1 redis with node-3's Sentinel down", lambda: d.cluster.kill(0, "redis", signal.SIGKILL))
    if not d.wait_recovered(_failover_budget(d)):
        d.extra["not_recovered"] = True
    time.sleep(tail_s)
    d.stop_writers()
    primary = d.settle()
    d.extra["sentinels_naming_new_primary"] = sum(1 for p in d.cluster.sentinel_primaries() if p == primary)
    return primary


def drill_two_sentinels_down(d: Drill, tail_s: float) -> str:
    """4b. Two Sentinels killed (node-1's and node-3's), then the primary's Redis: the one Sentinel
    left (next to a healthy replica) cannot fail over alone, and the quorum verification says so.
    Then everything is restarted; nothing acknowledged may be missing afterwards."""
    d.expected_failovers = 0
    d.recovery_from = ()  # no recovery while the Sentinels are down: recovery_s is None; see restored_s
    d.cluster.kill(0, "sentinel", signal.SIGKILL)
    d.cluster.kill(2, "sentinel", signal.SIGKILL)
    time.sleep(0.2)
    d.fault("SIGKILL node-1 redis with two Sentinels down", lambda: d.cluster.kill(0, "redis", signal.SIGKILL))
    time.sleep(d.down_after_s + 4.0)  # detection, election and promotion would all be over by now
    d.extra["failovers_while_down"] = len(d.events.promotions(d.t_fault))
    try:
        d.cluster.verify(timeout_s=3.0)
        d.extra["quorum_error"] = None
    except QuorumError as exc:
        d.extra["quorum_error"] = str(exc)
    d.extra["acked_while_down"] = sum(d.acked_via(i, d.t_injected, time.monotonic()) for i in range(d.nodes))
    # Restore: Redis first (so the returning Sentinels find the primary alive), then the Sentinels.
    d.cluster.start_step(0, "redis")
    d.cluster.start_step(0, "sentinel")
    d.cluster.start_step(2, "sentinel")
    restored = time.monotonic()
    # Writes may flow again before the last Sentinel is back (two of three already name the
    # primary): wait for writes SENT after the restore, or the figure is read before they come.
    d.wait_recovered(_failover_budget(d), since=restored)
    firsts = [d.first_ack_via(i, restored) for i in range(d.nodes)]
    d.extra["restored_s"] = None if None in firsts else round(max(firsts) - restored, 3)
    time.sleep(tail_s)
    d.stop_writers()
    return d.settle()


def drill_old_primary_rejoins(d: Drill, tail_s: float) -> str:
    """5. SIGKILL of the primary, failover, then the old primary restarted with its old data: it must
    become a replica, and no HAProxy may route a connection to it while it is stale."""
    d.fault("SIGKILL node-1 redis (the primary)", lambda: d.cluster.kill(0, "redis", signal.SIGKILL))
    if not d.wait_recovered(_failover_budget(d)):
        d.extra["not_recovered"] = True
    time.sleep(0.5)
    sockets = [n.layout.haproxy_socket for n in d.cluster.nodes]
    before = [int(haproxy_stat(s)[("redis_primary", "node-1")]["stot"] or 0) for s in sockets]
    restarted = time.monotonic()
    d.cluster.start_step(0, "redis")
    d.extra["restarted_at_s"] = round(d.since_fault(), 3)
    stale_seen: list[float] = []
    sets: list[int] = []  # SET calls the old primary executed, sampled while it still said role:master

    def follows() -> bool:
        info = d.role(0) or {}
        if info.get("role") == "master":
            stale_seen.append(time.monotonic())
            client = one_shot_client(d.cluster.redis_endpoints[0], d.password, 0.5)
            try:
                sets.append(int(client.info("commandstats").get("cmdstat_set", {}).get("calls", 0)))
            finally:
                client.close()
        primary = d.cluster.current_primary()
        return (info.get("role") == "slave" and info.get("master_link_status") == "up"
                and primary is not None and f"{info.get('master_host')}:{info.get('master_port')}" == primary)

    d.extra["old_primary_replica_s"] = d.wait_for("old primary follows the new one", follows, _failover_budget(d), 0.02)
    d.extra["old_primary_said_master_for_s"] = round(stale_seen[-1] - restarted, 3) if stale_seen else 0.0
    time.sleep(tail_s)
    d.stop_writers()
    after = [int(haproxy_stat(s)[("redis_primary", "node-1")]["stot"] or 0) for s in sockets]
    # HAProxy's own count (show stat, stot) of sessions it assigned to the old primary's server. It also
    # counts attempts while the server is still DOWN (assigned, never connected: clients reconnecting
    # during the outage), so the Redis side is the proof: the SETs the old primary itself executed
    # between its restart and its demotion.
    d.extra["haproxy_sessions_assigned_to_old_primary"] = {
        node_name(i): a - b for i, (a, b) in enumerate(zip(after, before))}
    d.extra["writes_executed_by_stale_old_primary"] = (sets[-1] - sets[0]) if sets else 0
    d.extra["old_primary_role"] = (d.role(0) or {}).get("role")
    return d.settle()


def drill_replica_rebuilt(d: Drill, tail_s: float) -> str:
    """6. After a failover (node-2 primary), node-1 (now a replica) is wiped and re-rendered from its
    INITIAL bundle, which names itself as primary: it must follow the current primary instead."""
    d.expected_failovers = 0  # the setup failover happens before the drill's clock starts

    def terminate() -> None:  # the instance goes away, and its clients (HST Server) with it
        d.stop_node_writers(0)
        for step in ("haproxy", "sentinel", "redis"):
            d.cluster.kill(0, step, signal.SIGKILL)

    d.fault("node-1's instance terminated", terminate)
    d.progress("replica-rebuilt: reprovisioning node-1 from its initial bundle (wiped home)")
    failure: list[BaseException] = []

    def reprovision() -> None:
        try:
            d.cluster.wipe_and_reprovision(0)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failure.append(exc)

    worker = threading.Thread(target=reprovision, name="reprovision", daemon=True)
    worker.start()
    redis_answers: list[float] = []

    def follows() -> bool:
        info = d.role(0) or {}
        if info and not redis_answers:
            redis_answers.append(round(d.since_fault(), 3))
        primary = d.cluster.current_primary()
        return (info.get("role") == "slave" and info.get("master_link_status") == "up"
                and primary is not None and f"{info.get('master_host')}:{info.get('master_port')}" == primary)

    d.extra["rebuilt_replica_follows_s"] = d.wait_for("rebuilt node follows the primary", follows, _failover_budget(d), 0.02)
    d.extra["rebuilt_redis_answers_s"] = redis_answers[0] if redis_answers else None
    worker.join(_failover_budget(d) + 60)
    if failure:
        raise failure[0]
    d.extra["reprovisioned_s"] = round(d.since_fault(), 3)  # boot script run and every daemon ready
    d.add_writers(0)  # the new instance's clients
    d.wait_recovered(_failover_budget(d))
    time.sleep(tail_s)
    d.stop_writers()
    primary = d.settle()
    info = d.role(0) or {}
    d.extra["rebuilt_role"] = info.get("role")
    d.extra["rebuilt_master"] = f"{info.get('master_host')}:{info.get('master_port')}"
    try:
        d.cluster.verify(timeout_s=20.0)
        d.extra["quorum_after_rebuild"] = "ok"
    except QuorumError as exc:
        d.extra["quorum_after_rebuild"] = str(exc)
    return primary


def _partition_rules(action: str, isolated: str, others: Sequence[str]) -> None:
    for other in others:
        for src, dst in ((isolated, other), (other, isolated)):
            subprocess.run(["ip", "rule", action, "from", src, "to", dst, "blackhole", "pref", "10"],
                           check=True, capture_output=True)


def drill_partition(d: Drill, tail_s: float, hold_factor: float = 0.0) -> str:
    """7. Network partition: node-1 (the primary) cut off from node-2 and node-3 (packets silently
    dropped both ways; each node's clients still reach their own HAProxy), then healed.
    Runs only inside a private network namespace (see run_drill)."""
    if os.environ.get(NETNS_ENV) != "1":
        raise LocalClusterError("the partition drill changes routing rules; it runs only in a private network namespace")
    isolated = d.cluster.addresses[0]
    others = d.cluster.addresses[1:]
    hold_s = max(hold_factor * d.down_after_s, d.down_after_s + 4.0)
    d.extra["partition_s"] = hold_s
    d.recovery_from = (1, 2)  # the majority side; node-1's clients are cut off with their primary
    d.fault(f"partition node-1 from node-2 and node-3 for {hold_s:g}s",
            lambda: _partition_rules("add", isolated, others))
    try:
        time.sleep(hold_s)
    finally:
        _partition_rules("del", isolated, others)
    healed = time.monotonic()
    d.extra["acked_via_minority_during_partition"] = [w.acked_between(d.t_injected, healed) for w in d.node_writers(0)]
    # When node-1's clients last got an acknowledgement while cut off: the fence's figure.
    minority_acks = [acked for w in d.node_writers(0) for _, _, acked in w.acked if d.t_injected <= acked < healed]
    d.extra["minority_last_ack_s"] = round(max(minority_acks) - d.t_fault, 3) if minority_acks else None
    d.extra["failovers_during_partition"] = len(d.events.promotions(d.t_fault))
    d.extra["old_primary_demoted_s"] = d.wait_for(
        "old primary demoted", lambda: (d.role(0) or {}).get("role") == "slave", _failover_budget(d))
    d.wait_recovered(_failover_budget(d))
    first = d.first_ack_via(0, healed)
    d.extra["minority_recovered_after_heal_s"] = round(first - healed, 3) if first is not None else None
    time.sleep(tail_s)
    d.stop_writers()
    return d.settle()


DRILLS: dict[str, Callable[..., str]] = {
    "kill-primary": drill_kill_primary,
    "zombie-primary": drill_zombie_primary,
    "zombie-mid-failover": drill_zombie_mid_failover,
    "short-pause": drill_short_pause,
    "one-sentinel-down": drill_one_sentinel_down,
    "two-sentinels-down": drill_two_sentinels_down,
    "old-primary-rejoins": drill_old_primary_rejoins,
    "replica-rebuilt": drill_replica_rebuilt,
    "partition": drill_partition,
}
DRILL_ALIASES = {"1": "kill-primary", "2": "zombie-primary", "2b": "zombie-mid-failover", "3": "short-pause", "4a": "one-sentinel-down",
                 "4b": "two-sentinels-down", "5": "old-primary-rejoins", "6": "replica-rebuilt", "7": "partition"}


# --------------------------------------------------------------------------- running


def drill_settings(down_after_ms: int, **overrides: Any) -> ClusterSettings:
    raw = {"downAfterMs": down_after_ms}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return parse_settings(raw)


def run_drill(
    name: str, down_after_ms: int = 1000, *, naive: bool = False, tail_s: float = 1.0,
    base_address: str = DEFAULT_BASE_ADDRESS, private_netns: bool = False, keep_dir: str | None = None,
    progress: Progress | None = None, writer_seconds: float = 120.0, socket_timeout: float = 0.5,
    keep_on_loss: str | None = None,
    settings_overrides: dict[str, Any] | None = None, transforms: Sequence[Transform] = (),
) -> dict[str, Any]:
    """One run of one drill on a fresh cluster; returns its figures. The partition drill (and any
    drill with private_netns=True) runs in a child process inside its own network namespace, so its
    routing rules and its loopback addresses touch nothing outside it."""
    name = DRILL_ALIASES.get(name, name)
    if name not in DRILLS:
        raise ValueError(f"unknown drill {name!r}; known: {', '.join(DRILLS)}")
    progress = progress or (lambda message: None)
    if (name == "partition" or private_netns) and os.environ.get(NETNS_ENV) != "1":
        return _run_in_private_netns(name, down_after_ms, naive=naive, tail_s=tail_s, base_address=base_address,
                                     writer_seconds=writer_seconds, socket_timeout=socket_timeout,
                                     settings_overrides=settings_overrides, keep_on_loss=keep_on_loss,
                                     progress=progress)
    settings = drill_settings(down_after_ms, **(settings_overrides or {}))
    transforms = list(transforms)  # experiments only; in-process runs
    if naive:
        transforms.append(naive_transform)
    if name == "partition":
        transforms.append(pin_source_transform)
    state_dir = tempfile.mkdtemp(prefix=f"hst-drill-{name}-")
    cluster = DrillCluster(settings, state_dir, transforms=transforms, base_address=base_address,
                           progress=lambda m: progress(f"  {m}"))
    started = time.monotonic()
    drill: Drill | None = None
    try:
        cluster.up(timeout_s=60.0)
        if name == "replica-rebuilt":
            cluster.failover(timeout_s=60.0)  # setup: the current primary is no longer the initial one
        drill = Drill(name, cluster, naive, progress, writer_seconds, socket_timeout)
        drill.start()
        primary = DRILLS[name](drill, tail_s)
        figures = drill.figures(primary)
        figures["run_s"] = round(time.monotonic() - started, 1)
        if keep_on_loss and figures["lost"]:
            keep_dir = str(Path(keep_on_loss) / Path(state_dir).name)
            figures["kept_logs"] = keep_dir
        return figures
    finally:
        if drill is not None:
            drill.close()
        if keep_dir:
            cluster.down(keep=True)
            Path(keep_dir).mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", f"{state_dir}/.", keep_dir], check=False)
            subprocess.run(["rm", "-rf", state_dir], check=False)
        else:
            cluster.down()
            # up() may fail before it records the cluster (e.g. a port held by someone else); then
            # down() leaves our empty temporary directory behind.
            subprocess.run(["rm", "-rf", state_dir], check=False)


def _run_in_private_netns(name: str, down_after_ms: int, *, progress: Progress, **options: Any) -> dict[str, Any]:
    """Run one drill in `unshare --net` (a network namespace of its own, gone when the child exits)."""
    request = json.dumps({"name": name, "down_after_ms": down_after_ms, **options})
    env = {**os.environ, NETNS_ENV: "1", "PYTHONPATH": str(REPO)}
    command = ["unshare", "--net", "--", sys.executable, "-m", "drills.harness", "--child", request]
    try:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        return {"drill": name, "skipped": f"cannot start `unshare --net`: {exc}"}
    assert child.stderr is not None
    for line in child.stderr:  # progress lines, passed on as they come
        progress(line.rstrip("\n"))
    out = child.stdout.read() if child.stdout else ""
    code = child.wait()
    if code != 0 and not out.strip():
        reason = "unshare --net refused (needs CAP_SYS_ADMIN)" if code in (1, 126) else f"child exited {code}"
        return {"drill": name, "skipped": reason}
    result = json.loads(out)
    if "error" in result:
        raise LocalClusterError(f"{name} in a private network namespace failed: {result['error']}")
    return result


def _child(request_text: str) -> int:
    """Inside the private namespace: bring loopback up, run the drill, print its figures as JSON."""
    request = json.loads(request_text)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Routing rules are consulted before the `local` table only if that table moves behind them.
    subprocess.run(["ip", "rule", "add", "pref", "100", "lookup", "local"], check=True)
    subprocess.run(["ip", "rule", "del", "pref", "0"], check=True)
    name = request.pop("name")
    down_after_ms = request.pop("down_after_ms")
    try:
        figures = run_drill(name, down_after_ms, progress=lambda m: print(m, file=sys.stderr, flush=True), **request)
        figures["private_netns"] = True
    except Exception as exc:  # noqa: BLE001 - reported to the parent as JSON
        figures = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(figures))
    return 0


# --------------------------------------------------------------------------- summaries


SUMMARY_FIELDS = ("recovery_s", "acked", "lost", "refused", "failovers")


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the figures over the runs, the recovery range, and the worst case of what must be zero."""
    done = [r for r in runs if "skipped" not in r]
    if not done:
        return {"runs": len(runs), "skipped": runs[0].get("skipped") if runs else "no runs"}
    summary: dict[str, Any] = {"drill": done[0]["drill"], "config": done[0]["config"],
                               "down_after_ms": done[0]["down_after_ms"], "runs": len(done)}
    for key in SUMMARY_FIELDS:
        values = [r[key] for r in done if r.get(key) is not None]
        summary[f"{key}_median"] = round(statistics.median(values), 3) if values else None
    recoveries = [r["recovery_s"] for r in done if r.get("recovery_s") is not None]
    summary["recovery_s_range"] = [round(min(recoveries), 3), round(max(recoveries), 3)] if recoveries else None
    summary["runs_without_recovery"] = len(done) - len(recoveries)
    summary["lost_max"] = max(r["lost"] for r in done)
    summary["runs_with_loss"] = sum(1 for r in done if r["lost"])
    summary["lost_in_flight_at_fault_max"] = max(r.get("lost_in_flight_at_fault", 0) for r in done)
    summary["false_failover_runs"] = sum(1 for r in done if r["false_failover"])
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "--child":
        return _child(argv[1])
    print("usage: python scripts/drill.py <drill> [options]  (this module's --child mode is internal)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
