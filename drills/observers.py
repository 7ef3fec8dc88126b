"""The drills' observers: every Sentinel's event stream and every HAProxy's server states, stamped
with our monotonic clock, for the figures (promotions) and the timelines; and `MasterWatch`, which
counts the SETs a node ran while it said role:master and no Sentinel majority named it (the
writes some client was routed to a node it should never have reached, whichever path it came by)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry

from components.runtime import haproxy_admin
from components.runtime.nodeenv import tls_kwargs
from components.runtime.quorum import one_shot_client

__all__ = ["HaproxyWatch", "MasterWatch", "SentinelEvents"]

Event = tuple[float, str, str, str]  # (t, sentinel host, channel, data)


class SentinelEvents:
    """Every Sentinel's event stream (PSUBSCRIBE *), stamped with our monotonic clock.
    A listener whose Sentinel dies keeps trying to reconnect until `stop()`."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], password: str, tls_ca_file: str | None = None) -> None:
        self.events: list[Event] = []  # (t, sentinel host, channel, data)
        self.tls_ca_file = tls_ca_file
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = [threading.Event() for _ in endpoints]
        self._threads = [
            threading.Thread(target=self._listen, args=(e, password, ready), daemon=True, name=f"events-{e[0]}")
            for e, ready in zip(endpoints, self._ready, strict=True)
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
            client = one_shot_client(endpoint, password, 1.0, tls_ca_file=self.tls_ca_file)
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

    def since(self, t: float, channel: str | None = None) -> list[Event]:
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
                    stats = haproxy_admin.stat(path, 0.5)
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


class MasterWatch:
    """Every `interval_s`: each Redis's role and SET count, and which node a Sentinel majority names.
    A SET counted between two samples of a node that said role:master in both, while no majority
    named it in either, was executed by an unnamed master."""

    def __init__(self, redis_endpoints: Sequence[tuple[str, int]], sentinel_endpoints: Sequence[tuple[str, int]],
                 master_name: str, password: str, sentinel_password: str, majority: int,
                 interval_s: float = 0.05, tls_ca_file: str | None = None) -> None:
        self.tls_ca_file = tls_ca_file
        self.redis_endpoints = list(redis_endpoints)
        self.sentinel_endpoints = list(sentinel_endpoints)
        self.master_name = master_name
        # Redis's INFO is HST Server's user's (it has +info); the Sentinels answer the monitoring role.
        self.passwords = {**{e: password for e in self.redis_endpoints},
                          **{e: sentinel_password for e in self.sentinel_endpoints}}
        self.majority = majority
        self.interval_s = interval_s
        self.unnamed_sets: Counter[str] = Counter()  # "host:port" -> SETs it executed as an unnamed master
        self.unnamed_since: dict[str, float] = {}  # first time each node was seen as an unnamed master
        self._clients: dict[tuple[str, int], redis.Redis] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="master-watch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3.0)
        for client in self._clients.values():
            client.close()

    def _client(self, endpoint: tuple[str, int]) -> redis.Redis:
        if endpoint not in self._clients:
            self._clients[endpoint] = redis.Redis(
                *endpoint, password=self.passwords[endpoint], socket_timeout=0.3, socket_connect_timeout=0.3,
                retry=Retry(NoBackoff(), 0), driver_info=DriverInfo(name=None, lib_version=None),
                **tls_kwargs(self.tls_ca_file))
        return self._clients[endpoint]

    def _ask(self, endpoint: tuple[str, int], *command: str) -> Any:
        try:
            return self._client(endpoint).execute_command(*command)
        except (redis.RedisError, OSError):
            client = self._clients.pop(endpoint, None)
            if client is not None:
                client.connection_pool.disconnect()
            return None

    def named(self) -> str | None:
        votes: Counter[str] = Counter()
        for endpoint in self.sentinel_endpoints:
            answer = self._ask(endpoint, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
            if isinstance(answer, (list, tuple)) and len(answer) == 2:
                votes[f"{_text(answer[0])}:{_text(answer[1])}"] += 1
        if votes:
            primary, count = votes.most_common(1)[0]
            if count >= self.majority:
                return primary
        return None

    def _sample(self) -> dict[str, tuple[str, int, str]]:
        """{"host:port": (role, SET calls, run id)} of every Redis that answers."""
        out = {}
        for endpoint in self.redis_endpoints:
            info = self._ask(endpoint, "INFO", "ALL")
            if isinstance(info, dict):
                stat = info.get("cmdstat_set")
                calls = int(stat.get("calls", 0)) if isinstance(stat, dict) else 0
                out[f"{endpoint[0]}:{endpoint[1]}"] = (str(info.get("role")), calls, str(info.get("run_id")))
        return out

    def _run(self) -> None:
        before_named, before = self.named(), self._sample()
        while not self._stop.wait(self.interval_s):
            now = self._sample()
            named = self.named()
            for node, (role, calls, run_id) in now.items():
                old = before.get(node)
                if old is None or old[2] != run_id or role != "master" or old[0] != "master":
                    continue
                # Only a positive verdict counts: a Sentinel query that timed out names nobody.
                if named is not None and before_named is not None and node not in (named, before_named):
                    self.unnamed_sets[node] += max(0, calls - old[1])
                    self.unnamed_since.setdefault(node, time.monotonic())
            before_named, before = named, now


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
