"""verify_quorum against a real 3-node cluster (redis-server, redis-sentinel, haproxy on 127.0.0.11-13).

One cluster serves the module; a test that stops a daemon starts it again before it ends, and
the next test's first verification proves the cluster is whole again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from components.bundle.users import MONITOR
from components.local.cluster import LocalCluster
from components.runtime.quorum import QuorumError, QuorumReport, verify_quorum
from tests.live_cluster import running_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster("hst-ha-q-") as local:
        yield local


def check(cluster: LocalCluster, timeout_s: float = 10, **kwargs) -> QuorumReport:
    return verify_quorum(
        cluster.sentinel_endpoints, cluster.settings.master_name, cluster.password(MONITOR.key),
        cluster.settings.node_count, timeout_s=timeout_s, tls_ca_file=cluster.tls_ca_file, **kwargs,
    )


def test_a_ready_cluster_is_verified_at_the_first_attempt(cluster: LocalCluster) -> None:
    report = check(cluster, haproxy_endpoints=cluster.haproxy_endpoints)
    assert report.attempts == 1  # passed on the first look, no wait loop (how fast is the host's business)
    assert report.primary == "127.0.0.11:31415"
    assert report.replicas == ("127.0.0.12:31415", "127.0.0.13:31415")
    assert report.sentinels_seen == ("127.0.0.11:41415", "127.0.0.12:41415", "127.0.0.13:41415")
    assert report.sentinels_missing == ()
    assert report.quorum == 2 and report.ckquorum.startswith("OK 3 usable Sentinels")
    assert report.haproxy_routes == ("127.0.0.11:31414", "127.0.0.12:31414", "127.0.0.13:31414")
    as_json = json.dumps(report.to_dict())
    assert cluster.password(MONITOR.key) not in as_json and cluster.password(MONITOR.key) not in repr(report)
    assert json.loads(as_json)["replicas"] == ["127.0.0.12:31415", "127.0.0.13:31415"]


def test_a_wrong_password_is_named_per_sentinel_and_never_shown(cluster: LocalCluster) -> None:
    wrong = "NotTheClusterPassword0123456789"
    started = time.monotonic()
    with pytest.raises(QuorumError) as failure:
        verify_quorum(cluster.sentinel_endpoints, "myprimary", wrong, 3, timeout_s=1, tls_ca_file=cluster.tls_ca_file)
    assert time.monotonic() - started < 3
    message = str(failure.value)
    for host, port in cluster.sentinel_endpoints:
        assert f"Sentinel {host}:{port}: refuses the monitoring user's password" in message
    assert "Redis users secret" in message and "/var/log/cloud-init-output.log" in message
    assert wrong not in message and cluster.password(MONITOR.key) not in message


def test_an_unknown_master_name_is_reported(cluster: LocalCluster) -> None:
    with pytest.raises(QuorumError, match="does not monitor a primary named 'nosuchprimary'"):
        verify_quorum(cluster.sentinel_endpoints, "nosuchprimary", cluster.password(MONITOR.key), 3, timeout_s=0.5,
                      tls_ca_file=cluster.tls_ca_file)


def test_an_endpoint_that_leads_to_a_replica_is_not_a_route_to_the_primary(cluster: LocalCluster) -> None:
    # A replica's own port as the "HAProxy": under tlsEnabled it speaks TLS only, and a route is
    # asked in plaintext (HAProxy's frontend), so it is refused before its role is read.
    found = "unreachable" if cluster.tls_ca_file else "routes to a Redis with role:slave"
    with pytest.raises(QuorumError, match=rf"HAProxy 127\.0\.0\.12:31415: {found}"):
        check(cluster, timeout_s=0.5, haproxy_endpoints=[("127.0.0.12", 31415)])


def test_one_of_three_sentinels_down_is_ready_only_when_allowed(cluster: LocalCluster) -> None:
    cluster.kill(2, "sentinel")
    try:
        with pytest.raises(QuorumError) as failure:
            check(cluster, timeout_s=0.5)
        assert "Sentinel 127.0.0.13:41415: unreachable" in str(failure.value)
        assert "1 of 3 Sentinels unreachable (127.0.0.13:41415); at most 0 may be" in str(failure.value)

        # Once the others have noticed (downAfterMs), it no longer counts towards CKQUORUM either.
        time.sleep(cluster.settings.down_after_ms / 1000 + 0.5)
        report = check(cluster, allow_missing_sentinels=1, haproxy_endpoints=cluster.haproxy_endpoints)
        assert report.sentinels_missing == ("127.0.0.13:41415",)
        assert report.sentinels_seen == ("127.0.0.11:41415", "127.0.0.12:41415")
        assert report.ckquorum.startswith("OK 2 usable Sentinels")
    finally:
        cluster.start_step(2, "sentinel")
    check(cluster)


def test_two_of_three_sentinels_down_fail_clearly_within_the_timeout(cluster: LocalCluster) -> None:
    cluster.kill(1, "sentinel")
    cluster.kill(2, "sentinel")
    try:
        started = time.monotonic()
        with pytest.raises(QuorumError) as failure:
            check(cluster, timeout_s=2, allow_missing_sentinels=1)
        assert time.monotonic() - started < 4
        message = str(failure.value)
        assert "not failover-ready within 2s" in message
        assert "Sentinel 127.0.0.12:41415: unreachable" in message
        assert "Sentinel 127.0.0.13:41415: unreachable" in message
        assert "2 of 3 Sentinels unreachable" in message
        assert "security group allows the Sentinel port (41415)" in message
        with pytest.raises(ValueError, match="fewer than a majority"):
            check(cluster, allow_missing_sentinels=2)
    finally:
        cluster.start_step(1, "sentinel")
        cluster.start_step(2, "sentinel")
    check(cluster)


def test_it_waits_for_a_replica_to_attach_then_verifies(cluster: LocalCluster) -> None:
    cluster.kill(1, "redis")
    restarted = threading.Event()

    def restart_soon() -> None:
        time.sleep(1.0)
        cluster.start_step(1, "redis")
        restarted.set()

    helper = threading.Thread(target=restart_soon)
    progress: list[str] = []
    helper.start()
    try:
        report = check(cluster, timeout_s=30, progress=progress.append, haproxy_endpoints=cluster.haproxy_endpoints)
    finally:
        helper.join(timeout=15)
    assert restarted.is_set()
    assert report.elapsed_s >= 1.0 and report.attempts > 1
    assert report.replicas == ("127.0.0.12:31415", "127.0.0.13:31415")
    assert any("has 1 of 2 replicas online" in line for line in progress), progress
    assert all(cluster.password(MONITOR.key) not in line for line in progress)


def test_bad_arguments_are_refused_before_any_connection() -> None:
    with pytest.raises(ValueError, match="at least one Sentinel"):
        verify_quorum([], "myprimary", "x" * 32, 3)
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        verify_quorum([("127.0.0.11", 41415)], "myprimary", "x" * 32, 3, timeout_s=0)
