"""The client kinds every drill runs beside the HAProxy clients, and the routing observer.

Tried as a new user would, an HA Redis meets three kinds of client, and each fails differently:

- `haproxy` / `haproxy-new-conn`: through the node's HAProxy with a 0.5 s socket timeout, one
  long-lived connection and one new connection per write (drills/harness.py, `BoundedWriter`);
- `haproxy-blocking`: through the node's HAProxy with NO socket timeout, hiredis's default (and so
  HST Server's): it waits as long as HAProxy holds its connection;
- `sentinel`: redis-py's `redis.sentinel.Sentinel(...).master_for(...)`, the Sentinel-aware client
  many applications (and HST Server 4.4's Sentinel mode) use. It asks the first Sentinel that
  answers for the primary and connects to it directly: no HAProxy, no fence, so only what the
  nodes themselves do protects it (min-replicas-to-write, and which node starts as master).

`drills.observers.MasterWatch` counts the SETs run on a master no Sentinel majority names, whichever
path the client came by.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry
from redis.sentinel import Sentinel

from components.runtime.nodeenv import tls_kwargs
from drills.clients import BoundedWriter

__all__ = ["CLIENT_KINDS", "SentinelWriter", "writer_kind"]

CLIENT_KINDS = ("haproxy", "haproxy-new-conn", "haproxy-blocking", "sentinel")


def writer_kind(writer: BoundedWriter) -> str:
    if isinstance(writer, SentinelWriter):
        return "sentinel"
    if writer.connection_per_write:
        return "haproxy-new-conn"
    return "haproxy-blocking" if writer.socket_timeout is None else "haproxy"


class SentinelWriter(BoundedWriter):
    """The same bounded writer, connected through redis-py's Sentinel client: `master_for` with
    the Sentinels listed from the writer's own node first, as an application on that node would."""

    def __init__(self, sentinels: Sequence[tuple[str, int]], master_name: str, password: str, tag: str, *,
                 sentinel_password: str, max_seconds: float, socket_timeout: float = 0.5,
                 tls_ca_file: str | None = None) -> None:
        super().__init__(sentinels[0], password, tag, max_seconds=max_seconds, socket_timeout=socket_timeout)
        self.sentinels = list(sentinels)
        self.master_name = master_name
        # Two credentials, as HST Server's Sentinel-aware mode needs: the Sentinels answer their
        # read-only queries to the monitoring role, the primary takes writes from HST Server's user.
        self.sentinel_password = sentinel_password
        self.tls = tls_kwargs(tls_ca_file)  # Sentinels and primary are the nodes' ports: TLS under tlsEnabled

    def _connect(self) -> redis.Redis:
        sentinel = Sentinel(
            self.sentinels, socket_timeout=self.socket_timeout, socket_connect_timeout=self.socket_timeout,
            sentinel_kwargs={"password": self.sentinel_password, "socket_timeout": self.socket_timeout,
                             "socket_connect_timeout": self.socket_timeout, **self.tls},
            **self.tls,
        )
        return sentinel.master_for(
            self.master_name, password=self.password, socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout, retry=Retry(NoBackoff(), 0),
            driver_info=DriverInfo(name=None, lib_version=None),
        )
