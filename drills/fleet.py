"""The drill's clients, by node: through every node's HAProxy one long-lived writer, one that
connects afresh for every write and one with no socket timeout, beside them a redis-py Sentinel
client (drills/client_kinds.py), and the questions the figures ask of them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from drills.client_kinds import (
    CLIENT_KINDS,
    SentinelWriter,
    writer_kind,
)
from drills.clients import BoundedWriter

__all__ = ["WriterFleet"]

# The HAProxy clients with a socket timeout: the kinds the per-HAProxy recovery figures are read from.
TIMEOUT_KINDS = ("haproxy", "haproxy-new-conn")


class WriterFleet:
    """The writers of every node's HAProxy (HST Server's clients in the drills)."""

    def __init__(self, haproxy_endpoints: list[tuple[str, int]], password: str, tag: str, *,
                 writer_seconds: float, socket_timeout: float,
                 sentinel_endpoints: list[tuple[str, int]], master_name: str, sentinel_password: str,
                 writer_type: Callable[..., BoundedWriter] = BoundedWriter, tls_ca_file: str | None = None) -> None:
        self.tls_ca_file = tls_ca_file  # the Sentinel-aware writers reach the nodes' ports directly
        self.haproxy_endpoints = haproxy_endpoints
        self.sentinel_endpoints = sentinel_endpoints
        self.master_name = master_name
        self.sentinel_password = sentinel_password
        self.writer_type = writer_type  # the node target's writers enter their node's namespace first
        self.password = password
        self.tag = tag
        self.writer_seconds = writer_seconds
        self.socket_timeout = socket_timeout
        self.writers: list[BoundedWriter] = []
        for i in range(self.nodes):
            self.add_node(i, start=False)

    @property
    def nodes(self) -> int:
        return len(self.haproxy_endpoints)

    def add_node(self, index: int, start: bool = True) -> None:
        """Node `index`'s clients, through its HAProxy: one long-lived connection writing flat out
        (HST Server's Hiredis connection), one new connection every 20 ms (the clients that
        HAProxy routes afresh) and one long-lived connection with no socket timeout (hiredis's
        default); and a redis-py Sentinel client asking the node's own Sentinel first. A node's
        later clients (a new instance's) get a generation tag."""
        endpoint = self.haproxy_endpoints[index]
        generation = len(self.of_node(index, CLIENT_KINDS)) // len(CLIENT_KINDS)
        tag = f"{self.tag}:{index + 1}" + (f"g{generation}" if generation else "")
        pair = [
            self.writer_type(endpoint, self.password, tag, max_seconds=self.writer_seconds,
                          socket_timeout=self.socket_timeout),
            self.writer_type(endpoint, self.password, f"{tag}n", max_seconds=self.writer_seconds,
                          socket_timeout=self.socket_timeout, connection_per_write=True, pace_s=0.02),
            # No socket timeout: hiredis's default, which waits as long as HAProxy holds the connection.
            self.writer_type(endpoint, self.password, f"{tag}b", max_seconds=self.writer_seconds, socket_timeout=None),
            SentinelWriter(self.sentinel_endpoints[index:] + self.sentinel_endpoints[:index], self.master_name,
                           self.password, f"{tag}s", sentinel_password=self.sentinel_password,
                           max_seconds=self.writer_seconds,
                           socket_timeout=self.socket_timeout, tls_ca_file=self.tls_ca_file),
        ]
        for writer in pair:
            writer.node = index
            self.writers.append(writer)
            if start:
                writer.start()

    def start(self) -> None:
        for writer in self.writers:
            writer.start()

    def of_node(self, index: int, kinds: Iterable[str] = TIMEOUT_KINDS) -> list[BoundedWriter]:
        """The writers of node `index` of these kinds (by default the two the HAProxy recovery
        figures have always been read from: through its HAProxy, with a socket timeout)."""
        chosen = set(kinds)
        return [w for w in self.writers if w.node == index and writer_kind(w) in chosen]

    def stop_node(self, index: int) -> None:
        for writer in self.of_node(index, CLIENT_KINDS):
            writer.stop()
        for writer in self.of_node(index, CLIENT_KINDS):
            writer.join(5.0)

    def stop_all(self) -> None:
        for writer in self.writers:
            writer.stop()
        for writer in self.writers:
            writer.join(5.0)

    def first_ack_via(self, index: int, after: float, kinds: Iterable[str] = TIMEOUT_KINDS) -> float | None:
        """When the first write sent after `after` by node `index`'s writers of `kinds` was acknowledged."""
        firsts = [f[2] for w in self.of_node(index, kinds) if (f := w.first_ack_sent_after(after))]
        return min(firsts) if firsts else None

    def acked_via(self, index: int, start: float, end: float) -> int:
        return sum(w.acked_between(start, end) for w in self.of_node(index))

    def recovered(self, since: float, nodes: Iterable[int] | None = None) -> bool:
        """Every node's HAProxy (or those of `nodes`) acknowledged a write sent after `since`."""
        indices = range(self.nodes) if nodes is None else nodes
        return all(self.first_ack_via(i, since) is not None for i in indices)

    def wait_recovered(self, timeout_s: float, since: float, nodes: Iterable[int] | None = None) -> bool:
        chosen = None if nodes is None else list(nodes)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.recovered(since, chosen):
                return True
            time.sleep(0.02)
        return self.recovered(since, chosen)
