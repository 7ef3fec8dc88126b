"""Live on the local target: the exporters across a failover, exactly one +switch-master event through
the nodes' own listener, the collector's view, and the backup/restore round trip.

Run inside a private network namespace (tests/README or the brief): it starts Redis, Sentinel,
HAProxy, redis_exporter and the event listeners on 127.0.0.11-13 and stops them itself.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from components.local.cluster import LocalCluster
from components.runtime import backup as backups
from components.runtime.metrics import collect, parse_prometheus
from components.runtime.nodeenv import node_env
from components.settings import HAPROXY_METRICS_PORT, REDIS_EXPORTER_PORT, SENTINEL_EXPORTER_PORT, parse_settings

pytestmark = pytest.mark.timeout(240)

HAS_EXPORTER = shutil.which("prometheus-redis-exporter") is not None
SETTINGS = {"downAfterMs": 1000, "failoverTimeoutMs": 3000}


def scrape(address: str, port: int, path: str = "/metrics"):
    with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=5) as answer:
        return parse_prometheus(answer.read().decode())


def value(samples, name, **labels):
    return [v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())]


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(parse_settings(SETTINGS), tmp_path / "c")
    c.up()
    yield c
    c.down()


def events(c: LocalCluster) -> list[dict]:
    found = []
    for node in c.nodes:
        path = node.log("events.jsonl")
        if path.exists():
            found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


def wait_for(check, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"not true after {timeout_s}s: {check}")


def test_a_failover_shows_in_every_exporter_and_sends_exactly_one_switch_master_event(cluster):
    old, new = cluster.nodes[0].address, None
    if HAS_EXPORTER:
        assert value(scrape(old, REDIS_EXPORTER_PORT), "redis_instance_info", role="master") == [1.0]
        sentinel = scrape(old, SENTINEL_EXPORTER_PORT)
        assert value(sentinel, "redis_sentinel_master_ok_sentinels", master_name="myprimary") == [3.0]
        assert value(sentinel, "redis_sentinel_master_ckquorum_status", master_name="myprimary") == [1.0]
    haproxy = scrape(cluster.nodes[1].address, HAPROXY_METRICS_PORT)
    assert value(haproxy, "haproxy_server_status", proxy="redis_primary", server="node-1", state="UP") == [1.0]
    fence = scrape(cluster.nodes[1].address, HAPROXY_METRICS_PORT, "/fence")
    assert value(fence, "hst_ha_fence_routable", server="node-1") == [1.0]

    # An open session through node-2's HAProxy: the fence must end it once node-1 is no longer named.
    host, port = cluster.haproxy_endpoints[1]
    held_open = redis.Redis(host, port, password=cluster.password())
    assert held_open.ping()
    result = cluster.failover()
    new = result["to"].rsplit(":", 1)[0]
    assert new != old
    switches = wait_for(lambda: [e for e in events(cluster) if e["type"] == "+switch-master"])
    time.sleep(3)  # the other Sentinels learn the switch too; none of their nodes may send it again
    switches = [e for e in events(cluster) if e["type"] == "+switch-master"]
    assert len(switches) == 1, switches
    (event,) = switches
    assert event["from"] == f"{old}:31415" and event["to"] == f"{new}:31415" and event["master"] == "myprimary"
    assert event["reporter"] == cluster.nodes[[n.address for n in cluster.nodes].index(new)].name

    new_index = [n.address for n in cluster.nodes].index(new)
    if HAS_EXPORTER:
        wait_for(lambda: value(scrape(new, REDIS_EXPORTER_PORT), "redis_instance_info", role="master") == [1.0])
        wait_for(lambda: value(scrape(old, REDIS_EXPORTER_PORT), "redis_instance_info", role="slave") == [1.0])
        for node in cluster.nodes:
            wait_for(
                lambda node=node: (
                    value(
                        scrape(node.address, SENTINEL_EXPORTER_PORT),
                        "redis_sentinel_master_ok_sentinels",
                        master_name="myprimary",
                        master_address=f"{new}:31415",
                    )
                    == [3.0]
                )
            )
    fence = wait_for(
        lambda: (lambda f: f if value(f, "hst_ha_fence_sessions_ended_total", server="node-1") else None)(
            scrape(cluster.nodes[1].address, HAPROXY_METRICS_PORT, "/fence")
        )
    )
    assert value(fence, "hst_ha_fence_sessions_ended_total", server="node-1")[0] >= 1
    assert value(fence, "hst_ha_fence_last_decision_info", decision="ended node-1") == [1.0]
    held_open.close()
    for node in cluster.nodes:
        wait_for(
            lambda node=node: (
                value(
                    scrape(node.address, HAPROXY_METRICS_PORT, "/fence"),
                    "hst_ha_fence_routable",
                    server=f"node-{new_index + 1}",
                )
                == [1.0]
            )
        )
        fence = scrape(node.address, HAPROXY_METRICS_PORT, "/fence")
        assert value(fence, "hst_ha_fence_routable", server="node-1") == [0.0]


@pytest.mark.skipif(
    not HAS_EXPORTER, reason="prometheus-redis-exporter is not installed (scripts/setup.sh installs it)"
)
def test_the_collector_reports_what_the_alarms_read(cluster):
    env = node_env(cluster.nodes[1].layout.node_env)
    whole, node = collect(env, cluster.password("monitor"))
    assert whole == {
        "SentinelsOk": 3.0,
        "CkquorumOk": 1.0,
        "HaproxyRoute": 1.0,
        "PrimaryCount": 1.0,
        "RedisReachable": 3.0,
    }
    assert node == {"RedisUp": 1.0, "IsPrimary": 0.0, "HaproxyRoute": 1.0}
    primary_env = node_env(cluster.nodes[0].layout.node_env)
    whole, node = collect(primary_env, cluster.password("monitor"))
    assert node["IsPrimary"] == 1.0 and "ReplicationLagSeconds" in whole
    cluster.kill(2, "redis")
    whole, _ = collect(env, cluster.password("monitor"))
    assert whole["RedisReachable"] == 2.0  # the redis-down alarm's metric


def test_a_snapshot_restored_into_a_new_cluster_holds_every_acknowledged_write(tmp_path):
    first = LocalCluster(parse_settings(SETTINGS), tmp_path / "first")
    first.up()
    try:
        host, port = first.haproxy_endpoints[0]
        client = redis.Redis(host, port, password=first.password())
        for i in range(500):
            assert client.set(f"key:{i}", f"value:{i}")  # acknowledged
        taken = None
        for node in first.nodes:
            env = {**node_env(node.layout.node_env), "BACKUP_SINK": f"file:{tmp_path / 'backups'}"}
            taken = taken or backups.backup_once(env)
        assert taken is not None and taken["node"] != "node-1"  # a replica, never the primary
    finally:
        first.down()
    snapshot = Path(taken["location"])
    second = LocalCluster(parse_settings(SETTINGS), tmp_path / "second")
    second.state.claim()
    assert backups.restore_into(snapshot, Path(second.nodes[0].layout.data)) == 500
    second.up()
    try:
        for index in range(3):  # through every node's HAProxy, and the replicas hold it too
            host, port = second.haproxy_endpoints[index]
            client = redis.Redis(host, port, password=second.password(), decode_responses=True)
            assert client.dbsize() == 500
            assert client.mget([f"key:{i}" for i in range(500)]) == [f"value:{i}" for i in range(500)]
    finally:
        second.down()


def test_the_replica_elected_for_a_snapshot_is_one_healthy_replica_in_address_order():
    def replica(ip, flags="slave", link="ok"):
        return {"ip": ip, "flags": flags, "master-link-status": link}

    assert backups.elect([replica("10.0.0.12"), replica("10.0.0.11")]) == "10.0.0.11"
    assert backups.elect([replica("10.0.0.9", "slave,s_down"), replica("10.0.0.10")]) == "10.0.0.10"
    assert backups.elect([replica("10.0.0.9", link="err")]) is None


def test_one_node_sends_each_event_the_new_primary_a_switch_and_the_reporter_the_rest():
    from components.runtime.events import parse_message, should_emit

    nodes = ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
    switch: Any = parse_message("+switch-master", "myprimary 10.0.0.10 31415 10.0.0.12 31415")
    assert [n for n in nodes if should_emit(switch, n, nodes, set())] == ["10.0.0.12"]
    odown: Any = parse_message("+odown", "master myprimary 10.0.0.10 31415 #quorum 2/2")
    assert [n for n in nodes if should_emit(odown, n, nodes, set())] == ["10.0.0.11"]
    # The reporter's own Sentinel is down in the others' view: the next one reports.
    assert [n for n in nodes if should_emit(odown, n, nodes, {"10.0.0.11"})] == ["10.0.0.12"]
    assert parse_message("+sdown", "slave 10.0.0.11:31415 10.0.0.11 31415 @ myprimary 10.0.0.10 31415") is None
