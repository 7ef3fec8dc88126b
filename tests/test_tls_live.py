"""tlsEnabled on the local target, with real TLS: Redis and Sentinel serve TLS only on the node
addresses, replication and Sentinel links run over it, HAProxy checks over it, HST Server's side
(HAProxy's frontend on loopback) stays plaintext, and a failover works as without TLS.

Each test stops the servers it started (by pid, in `down`) and every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import stat
import subprocess
import threading
import time
import typing
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from components.bundle import tls
from components.bundle.users import HST, MONITOR, OPERATOR
from components.local.cluster import LocalCluster
from components.runtime import haproxy_admin
from components.runtime.nodeenv import tls_kwargs
from components.runtime.quorum import one_shot_client
from components.settings import REDIS_EXPORTER_PORT
from tests.live_cluster import running_cluster, wait_for


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster("hst-ha-tls-", tlsEnabled=True) as local:
        yield local




def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["redis-cli", *args], capture_output=True, text=True, timeout=10, check=False)


def test_node_ports_refuse_plaintext_and_unverified_tls(cluster: LocalCluster, tmp_path: Path) -> None:
    password = cluster.password(MONITOR.key)
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_text(tls.make_ca("not the cluster's CA").cert_pem)
    for endpoint in [*cluster.redis_endpoints, *cluster.sentinel_endpoints]:
        # Plaintext: the TLS listener drops it (no PONG, no error reply from Redis).
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            one_shot_client(endpoint, password, 1.0).ping()
        host, port = endpoint[0], str(endpoint[1])
        plain = cli("--no-auth-warning", "-h", host, "-p", port, "PING")
        assert "PONG" not in plain.stdout, plain
        # TLS with another CA: the client refuses the node's certificate.
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            one_shot_client(endpoint, password, 2.0, tls_ca_file=str(other_ca)).ping()
        # TLS with the cluster's CA, its certificate verified by IP address, the monitoring user.
        user = MONITOR.redis_user if endpoint[1] == cluster.settings.redis_port else MONITOR.sentinel_user
        assert one_shot_client(endpoint, password, 2.0, user, cluster.tls_ca_file).ping() is True
        verified = cli("--tls", "--cacert", str(cluster.tls_ca_file), "-h", host, "-p", port, "PING")
        assert verified.stdout.strip() in ("PONG", "NOAUTH Authentication required."), verified


def test_no_plaintext_listener_and_links_over_tls(cluster: LocalCluster) -> None:
    operator = cluster.password(OPERATOR.key)
    for endpoint in cluster.redis_endpoints:
        client = one_shot_client(endpoint, operator, 2.0, OPERATOR.redis_user, cluster.tls_ca_file)
        config = client.config_get("port", "tls-port", "tls-replication", "tls-auth-clients")
        # `port 0`: the only listener is TLS, so every replica link below is a TLS connection.
        assert config == {"port": "0", "tls-port": str(endpoint[1]), "tls-replication": "yes",
                          "tls-auth-clients": "optional"}
    report = cluster.verify(timeout_s=20)  # the quorum verification: replicas online, Sentinels agree
    primary = report.primary
    for endpoint in cluster.redis_endpoints:
        if f"{endpoint[0]}:{endpoint[1]}" != primary:
            replica = one_shot_client(endpoint, operator, 2.0, OPERATOR.redis_user, cluster.tls_ca_file)
            info = replica.info("replication")
            assert info["role"] == "slave" and info["master_link_status"] == "up"
    for node, endpoint in zip(cluster.nodes, cluster.sentinel_endpoints, strict=True):
        # Sentinel 7.0 has no CONFIG GET: its own file (it rewrites it) says how it listens.
        lines = Path(node.layout.sentinel_conf).read_text().splitlines()
        assert {"port 0", f"tls-port {endpoint[1]}", "tls-replication yes"} <= set(lines)
        sentinel = one_shot_client(endpoint, operator, 2.0, OPERATOR.sentinel_user, cluster.tls_ca_file)
        # Each other Sentinel known and linked (Sentinel's links to Sentinels are TLS: port 0 everywhere).
        others = typing.cast(list[dict[str, Any]], sentinel.sentinel_sentinels(cluster.settings.master_name))
        assert [o["flags"] for o in others] == ["sentinel"] * (cluster.settings.node_count - 1), others


def test_certificates_on_disk(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        key = Path(node.layout.tls_key_file)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        context = ssl.create_default_context(cafile=cluster.tls_ca_file)
        context.load_cert_chain(node.layout.tls_cert_file, str(key))  # the key is the certificate's
    for secret in (cluster.state.tls_file, cluster.state.tls_ca_file):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    # The nodes' document holds no CA key: a node cannot sign a certificate.
    assert tls.CA_KEY not in json.loads(cluster.state.tls_file.read_text())


def test_haproxy_frontend_is_plaintext_and_exporter_reads_tls(cluster: LocalCluster) -> None:
    for host, port in cluster.haproxy_endpoints:
        assert redis.Redis(host, port, password=cluster.password(HST.key), socket_timeout=2).ping() is True
    address = cluster.nodes[0].address
    if shutil.which("prometheus-redis-exporter"):
        def up() -> bool:
            with urllib.request.urlopen(f"http://{address}:{REDIS_EXPORTER_PORT}/metrics", timeout=5) as answer:
                return "\nredis_up 1\n" in answer.read().decode()
        wait_for("redis_exporter reading Redis over TLS", up, 15)


class Writer(threading.Thread):
    """HST Server's side: SETs through one node's HAProxy, plaintext on loopback, reconnecting on error."""

    def __init__(self, endpoint: tuple[str, int], password: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.password = endpoint, password
        self.acked: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        seq = 0
        client = None
        while not self.stop.is_set():
            try:
                client = client or redis.Redis(*self.endpoint, password=self.password, socket_timeout=1,
                                               socket_connect_timeout=1)
                seq += 1
                client.set(f"tls-writer:{seq}", seq)
                self.acked.append((time.monotonic(), seq))
            except (redis.RedisError, OSError):
                client = None
                time.sleep(0.05)
            time.sleep(0.01)


def test_rotating_replication_and_sentinel_passwords_over_tls(cluster: LocalCluster) -> None:
    # Rotation reconfigures masterauth and Sentinel's auth-pass on every node: over TLS too.
    for key in ("replication", "sentinel"):
        old = cluster.password(key)
        cluster.rotate_password(key)
        assert cluster.password(key) != old
    cluster.verify(timeout_s=30)


def test_failover_over_tls_keeps_the_haproxy_writer(cluster: LocalCluster) -> None:
    before = cluster.verify(timeout_s=20).primary
    index = [f"{h}:{p}" for h, p in cluster.redis_endpoints].index(before)
    writer = Writer(cluster.haproxy_endpoints[(index + 1) % len(cluster.nodes)], cluster.password(HST.key))
    writer.start()
    try:
        wait_for("a first write through HAProxy", lambda: writer.acked, 10)
        killed_at = time.monotonic()
        cluster.kill(index, "redis")
        new = wait_for("a new primary named by every Sentinel and routed by every HAProxy",
                       lambda: (p := cluster.view.sentinel_primaries()) and len(set(p)) == 1 and p[0] != before
                       and all(r == p[0] for r in cluster.view.haproxy_routes()) and p[0], 30)
        wait_for("writes through HAProxy after the failover", lambda: any(t > killed_at for t, _ in writer.acked)
                 and writer.acked[-1][0] > time.monotonic() - 1, 30)
    finally:
        writer.stop.set()
        writer.join(5)
    last = writer.acked[-1][1]
    host, port = str(new).rsplit(":", 1)
    primary = redis.Redis(host, int(port), username=OPERATOR.redis_user, password=cluster.password(OPERATOR.key),
                          socket_timeout=2, **tls_kwargs(cluster.tls_ca_file))
    assert primary.get(f"tls-writer:{last}") == str(last).encode()
    # The old primary rejoins as a replica of the new one, over TLS.
    cluster.start_step(index, "redis")
    report = cluster.verify(timeout_s=40)
    assert report.primary == new


def test_haproxy_verifies_the_nodes_certificates(cluster: LocalCluster) -> None:
    """HAProxy's checks verify against its CA file: given another CA, no check passes (so no server
    and no guard is ever UP), whatever the Redis or Sentinel says."""
    node = cluster.nodes[0]
    ca_file = Path(node.layout.tls_ca_file)
    genuine = ca_file.read_text()

    def states() -> set[str]:
        return {row["state"] for row in haproxy_admin.servers_state(node.layout.haproxy_socket).values()}

    def restart_haproxy() -> None:
        cluster.kill(0, "haproxy", signal.SIGTERM)
        cluster.start_step(0, "haproxy")

    wait_for("node-1's HAProxy with a server UP", lambda: "UP" in states(), 15)
    try:
        ca_file.write_text(tls.make_ca("not the cluster's CA").cert_pem)
        restart_haproxy()
        time.sleep(1.5)  # several check periods (250 ms guards, the role checks' inter)
        assert states() == {"DOWN"}
        assert "SSL handshake failure" in node.log("haproxy.out").read_text()
    finally:
        ca_file.write_text(genuine)
        restart_haproxy()
    wait_for("node-1's HAProxy with a server UP again", lambda: "UP" in states(), 15)
