"""Password rotation on a live local cluster (the README runbook 'Rotating a Redis password'):
writers running through it lose nothing and never see an authentication error."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.credentials import CredentialProvider

from components.bundle.users import HST, MONITOR, OPERATOR, REPLICATION, ROLE_KEYS, SENTINEL, role
from components.local.cluster import LocalCluster
from components.runtime.nodeenv import tls_kwargs
from tests.live_cluster import running_cluster

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster("hst-ha-rot-") as local:
        yield local


class StoreCredentials(CredentialProvider):
    """What HST Server does with its configured password: here read from the secret at every connect,
    so a writer that reconnects mid-rotation uses whatever the secret holds at that moment."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def get_credentials(self) -> tuple[str]:
        return (self.cluster.password(HST.key),)


class Writer(threading.Thread):
    """Writes through node-1's HAProxy; reconnects every `every` writes (new AUTH each time)."""

    def __init__(self, cluster: LocalCluster, tag: str, every: int = 10) -> None:
        super().__init__(daemon=True)
        self.cluster, self.tag, self.every = cluster, tag, every
        self.stop = threading.Event()
        self.acked: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        host, port = self.cluster.haproxy_endpoints[0]
        seq = 0
        while not self.stop.is_set() and seq < 100_000:
            client = redis.Redis(host, port, credential_provider=StoreCredentials(self.cluster), socket_timeout=5,
                                 single_connection_client=True)
            try:
                for _ in range(self.every):
                    seq += 1
                    client.set(f"{self.tag}:{seq}", seq)
                    self.acked.append(seq)
            except redis.RedisError as exc:
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:60]}")
            finally:
                client.close()


def _refused(endpoint: tuple[str, int], user: str | None, password: str, tls_ca_file: str | None) -> bool:
    client = redis.Redis(*endpoint, username=user, password=password, socket_timeout=2, **tls_kwargs(tls_ca_file))
    try:
        client.ping()
        return False
    except redis.AuthenticationError:
        return True
    finally:
        client.close()


def test_rotating_hst_servers_password_loses_no_write_and_refuses_the_old_one(cluster: LocalCluster) -> None:
    old = cluster.password(HST.key)
    writers = [Writer(cluster, "rot-a", every=1), Writer(cluster, "rot-b", every=25)]
    for w in writers:
        w.start()
    try:
        while sum(len(w.acked) for w in writers) < 200:
            assert all(w.is_alive() for w in writers)
            threading.Event().wait(0.05)
        cluster.rotate_password(HST.key)
        mark = sum(len(w.acked) for w in writers)
        while sum(len(w.acked) for w in writers) < mark + 200:
            threading.Event().wait(0.05)
    finally:
        for w in writers:
            w.stop.set()
            w.join(10)
    assert [w.errors for w in writers] == [[], []]  # no auth error, no lost connection
    new = cluster.password(HST.key)
    assert new != old
    primary = redis.Redis(*cluster.haproxy_endpoints[1], password=new, decode_responses=True)
    try:
        for w in writers:  # every acknowledged write is there
            values = primary.mget([f"{w.tag}:{seq}" for seq in w.acked])
            assert values == [str(seq) for seq in w.acked]
    finally:
        primary.close()
    for endpoint in cluster.redis_endpoints:
        tls = cluster.tls_ca_file
        assert _refused(endpoint, None, old, tls) and not _refused(endpoint, None, new, tls)
    # Persisted: the rewritten redis.conf carries the new password's hash only.
    assert cluster.verify(timeout_s=10).primary


@pytest.mark.parametrize("key", [REPLICATION.key, SENTINEL.key, MONITOR.key, OPERATOR.key])
def test_every_other_role_rotates_and_the_cluster_stays_failover_ready(cluster: LocalCluster, key: str) -> None:
    target = role(key)
    old = cluster.password(key)
    cluster.rotate_password(key)
    new = cluster.password(key)
    assert new != old
    tls = cluster.tls_ca_file
    for endpoint in cluster.redis_endpoints if target.redis_user else ():
        assert _refused(endpoint, target.redis_user, old, tls) and not _refused(endpoint, target.redis_user, new, tls)
    for endpoint in cluster.sentinel_endpoints if target.sentinel_user else ():
        user = target.sentinel_user
        assert _refused(endpoint, user, old, tls) and not _refused(endpoint, user, new, tls)
    for endpoint in [*cluster.redis_endpoints, *cluster.sentinel_endpoints]:
        cluster.view.ask(endpoint, "ACL", "LOG", "RESET")  # forget the refusals this test provoked
    report = cluster.verify(timeout_s=30)
    assert len(report.replicas) == 2 and len(report.haproxy_routes) == 3
    # Sentinel and replication keep working with the new password: a failover completes.
    moved = cluster.failover(timeout_s=60)
    assert moved["to"] != moved["from"]
    # Nothing Sentinel, replication or HAProxy did was refused by an ACL.
    for endpoint in [*cluster.redis_endpoints, *cluster.sentinel_endpoints]:
        entries = cluster.view.ask(endpoint, "ACL", "LOG")
        log = [e if isinstance(e, dict) else dict(zip(e[::2], e[1::2], strict=True)) for e in entries]
        assert [e for e in log if e.get("username") != "default"] == [], endpoint


def test_the_cli_rotates_and_says_nothing_secret(cluster: LocalCluster) -> None:
    before = dict(json.loads(cluster.password_file.read_text()))
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "local_cluster.py"), "rotate-password", "--role", "operator",
         "--state-dir", str(cluster.state_dir)],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    after = json.loads(cluster.password_file.read_text())
    assert sorted(after) == sorted(ROLE_KEYS) and after["operator"] != before["operator"]
    assert {k: v for k, v in after.items() if k != "operator"} == {k: v for k, v in before.items() if k != "operator"}
    assert not any(p in result.stdout + result.stderr for p in (*before.values(), *after.values()))
    assert "rotated the operator password" in result.stderr
