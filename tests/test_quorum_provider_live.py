"""The SentinelQuorum provider against a live local cluster (real redis-server, redis-sentinel, haproxy).

The cluster runs on its own loopback hosts (127.0.5.11-13), apart from the other live tests, so
the suites can run side by side. A test that stops a daemon starts it again before it ends; only
daemons this module's cluster started are ever stopped. Timeouts are short: a failure must be
clear within the time given, not eventually.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from components.aws.providers.sentinel_quorum import SentinelQuorumProvider
from components.local.cluster import LocalCluster
from components.runtime import ssm_probe
from components.runtime.quorum import QuorumError
from tests.live_cluster import running_cluster
from tests.pulumi_harness import outs_of
from tests.test_providers import StubbedSsm, wire

pytestmark = pytest.mark.timeout(120)

BASE = "127.0.5.11"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_cluster("hst-ha-sq-", base_address=BASE) as local:
        yield local


def props(cluster: LocalCluster, **overrides: Any) -> dict[str, Any]:
    """The inputs the local target would give: direct connections, the password file by path."""
    text = lambda endpoints: [f"{h}:{p}" for h, p in endpoints]  # noqa: E731
    values = {
        "sentinels": text(cluster.sentinel_endpoints),
        "servers": text(cluster.redis_endpoints),
        "master_name": cluster.settings.master_name,
        "expected_nodes": cluster.settings.node_count,
        "password": {"kind": "file", "path": str(cluster.password_file)},
        "instance_ids": [],
        "via": "direct",
        "haproxy_endpoints": text(cluster.haproxy_endpoints),
        "sentinel_settings": {"quorum": cluster.settings.sentinel_quorum},
        "allow_missing_sentinels": 0,
        "timeout_s": 10,
        "provider_version": "1",
        "report": None,
        "probe_instance": None,
        # tlsEnabled: the CA this machine verifies the nodes with (absent: plaintext, as before).
        **({"tls_ca_file": cluster.tls_ca_file} if cluster.tls_ca_file else {}),
    }
    return wire({**values, **overrides})


def test_healthy_cluster_is_verified_and_recorded(cluster: LocalCluster) -> None:
    result = SentinelQuorumProvider().create(props(cluster))
    report = outs_of(result)["report"]
    assert report["primary"] == f"{BASE}:31415"
    assert report["replicas"] == ["127.0.5.12:31415", "127.0.5.13:31415"]
    assert report["sentinels_seen"] == ["127.0.5.11:41415", "127.0.5.12:41415", "127.0.5.13:41415"]
    assert report["haproxy_routes"] == ["127.0.5.11:31414", "127.0.5.12:31414", "127.0.5.13:31414"]
    assert report["ckquorum"].startswith("OK 3 usable Sentinels")
    assert cluster.password("monitor") not in repr(result.outs)


def test_one_of_three_sentinels_down_is_still_ready(cluster: LocalCluster) -> None:
    cluster.kill(2, "sentinel")
    try:
        result = SentinelQuorumProvider().create(props(cluster, allow_missing_sentinels=1, timeout_s=15))
        report = outs_of(result)["report"]
        assert report["sentinels_missing"] == ["127.0.5.13:41415"]
        assert len(report["sentinels_seen"]) == 2
    finally:
        cluster.start_step(2, "sentinel")


def test_two_sentinels_down_fail_clearly_within_the_timeout(cluster: LocalCluster) -> None:
    cluster.kill(1, "sentinel")
    cluster.kill(2, "sentinel")
    try:
        started = time.monotonic()
        with pytest.raises(QuorumError) as error:
            SentinelQuorumProvider().create(props(cluster, allow_missing_sentinels=1, timeout_s=3))
        # Bounded by its timeout rather than hanging on the dead Sentinels; not a speed: a loaded
        # 2-core machine stretched the last attempt past 3 s (6.5 s in all, seen).
        assert time.monotonic() - started < 3 + 12
        message = str(error.value)
        assert "was not failover-ready within 3s" in message
        assert "2 of 3 Sentinels unreachable (127.0.5.12:41415, 127.0.5.13:41415); at most 1 may be" in message
        assert "the security group allows the Sentinel port (41415)" in message
        assert cluster.password("monitor") not in message
    finally:
        cluster.start_step(1, "sentinel")
        cluster.start_step(2, "sentinel")


def test_it_waits_for_replicas_to_attach_then_verifies(cluster: LocalCluster) -> None:
    # Both replicas down: the primary has none online. They come back while the provider waits.
    cluster.kill(1, "redis")
    cluster.kill(2, "redis")
    restarted = threading.Timer(1.5, lambda: (cluster.start_step(1, "redis"), cluster.start_step(2, "redis")))
    restarted.start()
    try:
        report = outs_of(SentinelQuorumProvider().create(props(cluster, timeout_s=40)))["report"]
        assert report["attempts"] > 1 and report["elapsed_s"] >= 1.0
        assert report["replicas"] == ["127.0.5.12:31415", "127.0.5.13:31415"]
    finally:
        restarted.join()
        for index in (1, 2):
            cluster.start_step(index, "redis")  # no-op when already running


def test_ssm_path_judges_real_redis_cli_output_captured_on_this_cluster(cluster: LocalCluster, monkeypatch) -> None:
    """What a node would answer over SSM: the rendered probe script, run here for real, its stdout
    handed back through a stubbed SSM client, then judged by the provider."""
    values = props(cluster)
    script = ssm_probe.render_probe_script(
        values["sentinels"], values["servers"], values["master_name"],
        f"cat {cluster.password_file} | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"monitor\"])'",
        values["haproxy_endpoints"][0], cluster.tls_ca_file,
    )
    probe = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert cluster.password("monitor") not in probe.stdout + probe.stderr
    ssm = StubbedSsm(monkeypatch)
    with ssm.stubber:
        ssm.command("i-0local", output=probe.stdout)
        ssm_props = wire({
            **values, "via": "ssm", "region": "eu-west-1", "instance_ids": ["i-0local"],
            "haproxy_endpoints": values["haproxy_endpoints"][:1],
            "password": {
                "kind": "aws", "secret_id": "arn:aws:secretsmanager:eu-west-1:1:secret:x", "region": "eu-west-1"
            },
        })
        report = outs_of(SentinelQuorumProvider().create(ssm_props))["report"]
    assert report["primary"] == f"{BASE}:31415" and report["haproxy_routes"] == [f"{BASE}:31414"]
    assert report["replicas"] == ["127.0.5.12:31415", "127.0.5.13:31415"]
