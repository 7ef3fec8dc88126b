"""Observing a running local cluster: what the Sentinels name, where each HAProxy routes, what
each HAProxy's admin socket says, and the `status` table. Read-only; it starts and stops nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import redis

from components.bundle import guard_backend, node_name
from components.bundle.users import OPERATOR
from components.local.nodes import DAEMONS, LocalNode
from components.runtime import haproxy_admin
from components.runtime.quorum import one_shot_client, server_info
from components.settings import ClusterSettings

__all__ = ["ClusterView"]

Endpoint = tuple[str, int]


class ClusterView:
    """Questions to a local cluster's daemons, each answered from the daemons themselves, as the
    operator user (`password` gives its password; `ask` also serves `failover`)."""

    def __init__(self, settings: ClusterSettings, nodes: Sequence[LocalNode], password: Callable[[], str],
                 pid: Callable[[int, str], int | None], tls_ca_file: str | None = None) -> None:
        self.settings = settings
        self.nodes = tuple(nodes)
        self._password = password
        self._pid = pid
        self._tls_ca_file = tls_ca_file  # tlsEnabled: the nodes' ports speak TLS, HAProxy's frontends do not

    @property
    def redis_endpoints(self) -> list[Endpoint]:
        return [(n.address, self.settings.redis_port) for n in self.nodes]

    @property
    def sentinel_endpoints(self) -> list[Endpoint]:
        return [(n.address, self.settings.sentinel_port) for n in self.nodes]

    @property
    def haproxy_endpoints(self) -> list[Endpoint]:
        return [(n.layout.haproxy_address, self.settings.haproxy_port) for n in self.nodes]

    def tls_for(self, endpoint: Endpoint) -> str | None:
        """The CA file to reach `endpoint` with, None for plaintext (HAProxy's frontends, or TLS off)."""
        return None if endpoint in self.haproxy_endpoints else self._tls_ca_file

    def ask(self, endpoint: Endpoint, *command: str) -> Any:
        client = one_shot_client(endpoint, self._password(), 1.0, OPERATOR.redis_user, self.tls_for(endpoint))
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def info(self, endpoint: Endpoint) -> dict[str, Any] | None:
        return server_info(endpoint, self._password(), username=OPERATOR.redis_user,
                           tls_ca_file=self.tls_for(endpoint))

    def sentinel_primaries(self) -> list[str | None]:
        """What each Sentinel names as primary (host:port), None where it does not answer."""
        named: list[str | None] = []
        for endpoint in self.sentinel_endpoints:
            try:
                host, port = self.ask(endpoint, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.settings.master_name)
                named.append(f"{host}:{port}")
            except (redis.RedisError, OSError, TypeError, ValueError):
                named.append(None)
        return named

    def current_primary(self) -> str | None:
        """The primary a majority of Sentinels name, or None."""
        votes = Counter(p for p in self.sentinel_primaries() if p)
        if votes:
            primary, count = votes.most_common(1)[0]
            if count >= self.settings.sentinel_majority:
                return primary
        return None

    def haproxy_routes(self) -> list[str | None]:
        """Per node, the Redis (host:port) its HAProxy leads to now, None when it leads nowhere."""
        by_run_id = {}
        for endpoint in self.redis_endpoints:
            info = self.info(endpoint)
            if info:
                by_run_id[info.get("run_id")] = f"{endpoint[0]}:{endpoint[1]}"
        routes: list[str | None] = []
        for endpoint in self.haproxy_endpoints:
            info = self.info(endpoint)
            routes.append(by_run_id.get(info.get("run_id"), "unknown") if info else None)
        return routes

    def haproxy_servers(self, node_index: int) -> dict[str, dict[str, str]]:
        """What a node's HAProxy believes now, from its admin socket (`show servers state`)."""
        return haproxy_admin.servers_state(self.nodes[node_index].layout.haproxy_socket)

    def haproxy_confirms(self, node_index: int, target_index: int) -> bool:
        """Whether node `node_index`'s HAProxy would route to `target_index` if that Redis says role:master:
        a majority of its Sentinel checks for the target are UP."""
        backend = f"{guard_backend(node_name(target_index))}/"
        servers = self.haproxy_servers(node_index)
        up = sum(1 for key, row in servers.items() if key.startswith(backend) and row["state"] == "UP")
        return up >= self.settings.sentinel_majority

    def status(self) -> dict[str, Any]:
        """Primary, replicas with lag, Sentinels and HAProxy routing per node."""
        named = self.sentinel_primaries()
        routes = self.haproxy_routes()
        infos = [self.info(e) for e in self.redis_endpoints]
        primary = self.current_primary()
        acks: dict[str, dict[str, Any]] = {}
        primary_offset = 0
        for (host, port), info in zip(self.redis_endpoints, infos, strict=True):
            if info and f"{host}:{port}" == primary:
                primary_offset = int(info.get("master_repl_offset", 0))
                acks = {
                    f"{v.get('ip')}:{v.get('port')}": v
                    for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                }
        nodes = []
        for node, info, sentinel, route in zip(self.nodes, infos, named, routes, strict=True):
            endpoint = f"{node.address}:{self.settings.redis_port}"
            entry: dict[str, Any] = {
                "node": node.name,
                "address": node.address,
                "pids": {step: self._pid(node.index, step) for step in DAEMONS},
                "role": info.get("role") if info else None,
                "sentinelNames": sentinel,
                "haproxyRoutesTo": route,
            }
            if info and info.get("role") == "slave":
                ack = acks.get(endpoint, {})
                entry["replicaOf"] = f"{info.get('master_host')}:{info.get('master_port')}"
                entry["linkStatus"] = info.get("master_link_status")
                entry["lagBytes"] = primary_offset - int(ack["offset"]) if ack else None
                entry["lagS"] = int(ack["lag"]) if ack else None
            nodes.append(entry)
        return {
            "masterName": self.settings.master_name,
            "primary": primary,
            "sentinelsAnswering": sum(1 for s in named if s),
            "nodes": nodes,
        }
