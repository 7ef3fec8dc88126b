"""The drill's clients, by node: through every node's HAProxy one long-lived writer and one that
connects afresh for every write, and the questions the figures ask of them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from drills.clients import BoundedWriter

__all__ = ["WriterFleet"]


class WriterFleet:
    """The writers of every node's HAProxy (HST Server's clients in the drills)."""

    def __init__(self, haproxy_endpoints: list[tuple[str, int]], password: str, tag: str, *,
                 writer_seconds: float, socket_timeout: float,
                 writer_type: Callable[..., BoundedWriter] = BoundedWriter) -> None:
        self.haproxy_endpoints = haproxy_endpoints
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
        (HST Server's Hiredis connection) and one new connection every 20 ms (the clients that
        HAProxy routes afresh). A node's later clients (a new instance's) get a generation tag."""
        endpoint = self.haproxy_endpoints[index]
        generation = len(self.of_node(index)) // 2
        tag = f"{self.tag}:{index + 1}" + (f"g{generation}" if generation else "")
        pair = [
            self.writer_type(endpoint, self.password, tag, max_seconds=self.writer_seconds,
                          socket_timeout=self.socket_timeout),
            self.writer_type(endpoint, self.password, f"{tag}n", max_seconds=self.writer_seconds,
                          socket_timeout=self.socket_timeout, connection_per_write=True, pace_s=0.02),
        ]
        for writer in pair:
            writer.node = index
            self.writers.append(writer)
            if start:
                writer.start()

    def start(self) -> None:
        for writer in self.writers:
            writer.start()

    def of_node(self, index: int) -> list[BoundedWriter]:
        """The writers going through node `index`'s HAProxy."""
        return [w for w in self.writers if w.node == index]

    def stop_node(self, index: int) -> None:
        for writer in self.of_node(index):
            writer.stop()
        for writer in self.of_node(index):
            writer.join(5.0)

    def stop_all(self) -> None:
        for writer in self.writers:
            writer.stop()
        for writer in self.writers:
            writer.join(5.0)

    def first_ack_via(self, index: int, after: float) -> float | None:
        """When the first write sent after `after` through node `index`'s HAProxy was acknowledged."""
        firsts = [f[2] for w in self.of_node(index) if (f := w.first_ack_sent_after(after))]
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
