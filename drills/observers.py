"""The drills' observers: every Sentinel's event stream and every HAProxy's server states, stamped
with our monotonic clock, for the figures (promotions) and the timelines."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import redis

from components.runtime import haproxy_admin
from components.runtime.quorum import one_shot_client

__all__ = ["HaproxyWatch", "SentinelEvents"]

Event = tuple[float, str, str, str]  # (t, sentinel host, channel, data)


class SentinelEvents:
    """Every Sentinel's event stream (PSUBSCRIBE *), stamped with our monotonic clock.
    A listener whose Sentinel dies keeps trying to reconnect until `stop()`."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], password: str) -> None:
        self.events: list[Event] = []  # (t, sentinel host, channel, data)
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
