"""The node target: the program's real user data booted in systemd-nspawn nodes (components/node).

One 3-node cluster is booted for the whole module (about 40 s with a warm image cache, plus the
image build on a cold one), its nodes joined by the latency switch (1 ms +- 0.5 ms one way, as
across availability zones), and the tests run on it in file order, each leaving it verified for
the next: boot, kill -9 of each daemon, a fault drill, a failover, a reboot, a replacement, a node
whose secret cannot be read at first boot. Root, systemd-nspawn and mmdebstrap are needed; elsewhere the module
is skipped with the reason. Marked `node` so the fast inner loop can leave it out (-m "not node").
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.bundle import boot, document
from components.bundle.users import MONITOR, ROLE_KEYS
from components.node.cluster import (
    NodeCluster,
    NodeRecord,
    NodeTargetError,
    check_environment,
)
from components.node.program import seed_bytes
from components.runtime import ssm_apply, ssm_membership
from components.settings import parse_settings
from drills.node_target import NodeTargetView, in_hub, run_node_drill

pytestmark = pytest.mark.node

try:
    check_environment()
    UNAVAILABLE = ""
except NodeTargetError as error:
    UNAVAILABLE = str(error)

ROOT = Path(__file__).resolve().parent.parent
DOWN_AFTER_MS = 5000
LATENCY_MS, JITTER_MS = 1.0, 0.5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if UNAVAILABLE:
        pytest.skip(UNAVAILABLE)
    c = NodeCluster(tmp_path_factory.mktemp("node-cluster") / "state")
    try:
        c.outputs_at_up = c.up({"downAfterMs": DOWN_AFTER_MS}, timeout_s=240,  # type: ignore[attr-defined]
                               latency_ms=LATENCY_MS, jitter_ms=JITTER_MS)
        yield c
    finally:
        c.down()


def sh(c: NodeCluster, node: NodeRecord, script: str, timeout_s: float = 60) -> str:
    result = c.exec_in(node, ["bash", "-c", script], timeout_s=timeout_s)
    assert result.returncode == 0, f"{node.name}: {script!r} exited {result.returncode}: {result.stderr.decode()}"
    return result.stdout.decode()


def cloud_init_status(c: NodeCluster, node: NodeRecord) -> str:
    """cloud-init's final status, once its runcmd is over (bounded)."""
    return sh(c, node, "timeout 200 cloud-init status --wait >/dev/null || true; cloud-init status",
              timeout_s=240).strip()


def redis_cli(c: NodeCluster, node: NodeRecord, port: int, *args: str, address: str | None = None) -> str:
    """redis-cli on `node` as the monitoring role (Sentinel's default user), with the password the
    node's own `hst-ha-secret` fetches through its instance-role stand-in."""
    command = " ".join(shlex.quote(a) for a in args)
    # tlsEnabled (the default): the nodes' Redis and Sentinel ports speak TLS only, verified with the
    # node's CA file; HAProxy's (HST Server's, on loopback) stays plaintext.
    node_port = port != c.settings.haproxy_port
    tls = f"--tls --cacert {c.layout.tls_ca_file} " if c.settings.tls_enabled and node_port else ""
    return sh(c, node, f'export REDISCLI_AUTH="$({c.layout.secret_script} {MONITOR.key})"; '
                       f"redis-cli --no-auth-warning --raw {tls}-h {address or node.address} -p {port} {command}")


PREPARE = "hst-ha-prepare"


def prepare_log(c: NodeCluster, node: NodeRecord, this_boot: bool = False) -> str:
    """The preparation unit's journal (the boot script, the secret's fetch), every boot or this one."""
    return sh(c, node, f"journalctl --no-pager -o cat -u {PREPARE} {'-b' if this_boot else ''}")


def named_primaries(c: NodeCluster) -> list[str]:
    """What each running node's Sentinel names as primary (address only)."""
    names = []
    for node in c.nodes:
        if node.nspawn_pid:
            answer = redis_cli(c, node, c.settings.sentinel_port, "SENTINEL", "get-master-addr-by-name",
                               c.settings.master_name).split()
            names.append(answer[0] if answer else "")
    return names


def config_epoch(c: NodeCluster, node: NodeRecord) -> int:
    fields = redis_cli(c, node, c.settings.sentinel_port, "SENTINEL", "MASTER", c.settings.master_name).split()
    return int(dict(zip(fields[::2], fields[1::2], strict=True))["config-epoch"])


def primary_node(c: NodeCluster) -> NodeRecord:
    report = c.verify(timeout_s=120)
    return c.node(report.primary.rsplit(":", 1)[0])


def main_pid(c: NodeCluster, node: NodeRecord, unit: str) -> int:
    return int(sh(c, node, f"systemctl show -p MainPID --value {unit}").strip())


def test_boots_the_programs_user_data_to_verified(cluster):
    out = cluster.outputs_at_up
    addresses = [n.address for n in cluster.nodes]
    assert out["nodePrivateIps"] == addresses
    assert out["quorum"]["primary"] == f"{addresses[0]}:31415"
    assert sorted(out["quorum"]["replicas"]) == sorted(f"{a}:31415" for a in addresses[1:])
    assert out["quorum"]["ckquorum"].startswith("OK 3 usable Sentinels")
    assert out["quorum"]["haproxy_routes"] == ["127.0.0.1:31414"]
    # Byte for byte what `pulumi up` renders for the same settings.
    rendered = json.loads(subprocess.run(
        [sys.executable, "-m", "components.node.program", json.dumps(cluster.record.config)],
        check=True, capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout)
    for index, node in enumerate(cluster.nodes):
        seeded = cluster.exec_in(node, ["cat", "/var/lib/cloud/seed/nocloud/user-data"]).stdout
        assert hashlib.sha256(seeded).hexdigest() == hashlib.sha256(seed_bytes(rendered, index)).hexdigest()
        assert cloud_init_status(cluster, node) == "status: done"
        units = sh(cluster, node, "systemctl is-active hst-ha-redis hst-ha-sentinel hst-ha-haproxy")
        assert units.split() == ["active"] * 3
        # The units run as the accounts the user data names, not as root.
        users = sh(cluster, node, "ps -o user= -C redis-server,redis-sentinel,haproxy | sort -u")
        assert users.split() == ["haproxy", "redis"]
        # The node fetched its code by digest from S3 and rendered its files from the cluster document
        # it read from SSM (the user data holds neither): the timing it runs with is the document's.
        (document,) = rendered["parameters"].values()
        assert sh(cluster, node, "cat /opt/hst-ha/etc/cluster.json") == document
        assert f"DOWN_AFTER_MS={DOWN_AFTER_MS}\n" in sh(cluster, node, "cat /opt/hst-ha/etc/node.env")
        assert "rendered" in prepare_log(cluster, node) and "from the cluster document" in prepare_log(cluster, node)
        assert sh(cluster, node, "test -f /opt/hst-ha/components/runtime/events.py && echo yes").strip() == "yes"
        assert "DOWN_AFTER_MS" not in seed_bytes(rendered, index).decode()
        # TLS on by default: the node wrote its certificate from the ClusterTls secret it read with its
        # role (the ARN in its identity), and its Redis accepts no plaintext client.
        assert rendered["tlsSecretArn"] in seed_bytes(rendered, index).decode()
        certificates = json.loads((cluster.state_dir / "tls.json").read_text())
        assert sh(cluster, node, f"cat {cluster.layout.tls_cert_file}") == certificates[f"{node.address}.crt"]
        assert sh(cluster, node, f"stat -c %a {cluster.layout.tls_key_file}").strip() == "600"
        plain = cluster.exec_in(node, ["bash", "-c", f"timeout 5 redis-cli -h {node.address} -p 31415 PING"])
        assert b"PONG" not in plain.stdout


def haproxy_workers(c: NodeCluster, node: NodeRecord) -> tuple[int, set[int]]:
    """(the unit's main pid: HAProxy's master, its workers)."""
    main = main_pid(c, node, "hst-ha-haproxy")
    return main, {int(p) for p in sh(c, node, f"pgrep -P {main} || true").split()}


def routes(c: NodeCluster, node: NodeRecord) -> bool:
    """A client of the node's HAProxy reaches a primary (PING answered through it)."""
    answer = redis_cli(c, node, c.settings.haproxy_port, "--user", str(MONITOR.redis_user), "PING", address="127.0.0.1")
    return answer.strip() == "PONG"


# Inside a node: one session through HAProxy, PING, `systemctl reload`, wait, PING on the same session.
KEPT_SESSION = """python3 - <<'PY'
import socket, subprocess, time
password = subprocess.run(["{secret}", "monitor"], capture_output=True, text=True, check=True).stdout.strip()
s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
def ask(words):
    s.sendall(("*%d\\r\\n" % len(words) + "".join("$%d\\r\\n%s\\r\\n" % (len(w), w) for w in words)).encode())
    return s.recv(100).decode().strip()
assert ask(["AUTH", "{user}", password]) == "+OK"
print(ask(["PING"]))
subprocess.run(["systemctl", "reload", "hst-ha-haproxy"], check=True)
time.sleep({wait_s})
print(ask(["PING"]))
PY"""


def test_the_haproxy_unit_reloads_in_place_under_systemd(cluster):
    # Master-worker (`haproxy -Ws`): `systemctl reload` checks the file and signals the master, whose pid
    # stays the unit's; a new worker takes over and routes.
    node = cluster.nodes[1]
    master, workers = haproxy_workers(cluster, node)
    assert len(workers) == 1 and routes(cluster, node)
    sh(cluster, node, "systemctl reload hst-ha-haproxy")
    deadline = time.monotonic() + 30
    while True:
        now, after = haproxy_workers(cluster, node)
        assert now == master, "the reload restarted HAProxy instead of reloading it in place"
        if after - workers and routes(cluster, node):
            break
        assert time.monotonic() < deadline, f"no new worker routing 30 s after the reload: {workers} -> {after}"
        time.sleep(0.5)
    assert sh(cluster, node, "systemctl is-active hst-ha-haproxy").strip() == "active"
    # A session opened before a reload goes on past the former worker's blind bound (downAfterMs + 2 s):
    # the former worker, which runs no check, reads the new worker's verdicts over the stats socket.
    kept = sh(cluster, node, KEPT_SESSION.format(secret=cluster.layout.secret_script, user=MONITOR.redis_user,
                                                 port=cluster.settings.haproxy_port,
                                                 wait_s=(DOWN_AFTER_MS + 2000) / 1000 + 2), timeout_s=60)
    assert kept.split() == ["+PONG", "+PONG"], kept
    # A configuration HAProxy refuses fails the reload (ExecReload checks it first) and the worker stays.
    cfg = "/opt/hst-ha/etc/haproxy.cfg"
    sh(cluster, node, f"cp -p {cfg} {cfg}.keep && echo 'this is not haproxy' >> {cfg}")
    try:
        failed = cluster.exec_in(node, ["systemctl", "reload", "hst-ha-haproxy"])
        assert failed.returncode != 0
    finally:
        sh(cluster, node, f"mv {cfg}.keep {cfg}")
    assert haproxy_workers(cluster, node)[0] == master and routes(cluster, node)


def test_a_changed_document_is_applied_live_on_every_node(cluster):
    # What LiveSettings does after `pulumi up` updated the parameter: every node reads the document,
    # renders node.env and haproxy.cfg from it with the renderer it boots with, sets Sentinel and Redis,
    # reloads HAProxy in place and ends the former worker. No daemon restarts.
    s = cluster.settings
    _, original = cluster.document()
    units = ("hst-ha-redis", "hst-ha-sentinel", "hst-ha-haproxy")
    pids = {n.name: {u: main_pid(cluster, n, u) for u in units} for n in cluster.nodes}
    changed = DOWN_AFTER_MS + 1000
    new = parse_settings({**cluster.record.config, "downAfterMs": changed, "minReplicasMaxLag": 7})
    text = document.dump(document.build(new, [n.address for n in cluster.nodes]))
    passwords = [cluster.password(key) for key in ROLE_KEYS]
    try:
        cluster.put_document(text)
        applied = cluster.apply(new, text)
        for node in cluster.nodes:
            result = applied[node.name]
            assert result["haproxy"] == "reloaded", result  # the checks' timings follow downAfterMs
            assert result["sentinel"]["down-after-milliseconds"] == changed
            assert result["redis"]["min-replicas-max-lag"] == 7
            # Read back independently of the apply's own report.
            fields = redis_cli(cluster, node, s.sentinel_port, "SENTINEL", "MASTER", s.master_name).split()
            assert dict(zip(fields[::2], fields[1::2], strict=True))["down-after-milliseconds"] == str(changed)
            node_env = sh(cluster, node, "cat /opt/hst-ha/etc/node.env")
            assert f"DOWN_AFTER_MS={changed}\n" in node_env
            assert sh(cluster, node, "cat /opt/hst-ha/etc/cluster.json") == text
            assert {u: main_pid(cluster, node, u) for u in units} == pids[node.name]  # nothing restarted
            deadline = time.monotonic() + 30  # a former worker ends with its last session (probes, here)
            while len(haproxy_workers(cluster, node)[1]) > 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert len(haproxy_workers(cluster, node)[1]) == 1, "a former worker outlived its sessions"
            assert routes(cluster, node)
            assert not any(p in result["output"] for p in passwords)
        sent = ssm_apply.render_apply_script(cluster.layout, boot.digest(text))  # what SSM would carry
        assert not any(p in sent for p in passwords) and str(changed) not in sent
        cluster.verify(timeout_s=120)
    finally:
        cluster.put_document(original)
        back = cluster.apply(s, original)
    assert all(r["sentinel"]["down-after-milliseconds"] == DOWN_AFTER_MS for r in back.values())
    assert f"DOWN_AFTER_MS={DOWN_AFTER_MS}\n" in sh(cluster, cluster.nodes[0], "cat /opt/hst-ha/etc/node.env")
    cluster.verify(timeout_s=120)


@pytest.mark.parametrize("unit", ["hst-ha-redis", "hst-ha-sentinel", "hst-ha-haproxy"])
def test_kill_9_is_restarted_by_systemd_without_failover(cluster, unit):
    primary = primary_node(cluster)
    epoch = config_epoch(cluster, primary)
    before = main_pid(cluster, primary, unit)
    sh(cluster, primary, f"kill -9 {before}")
    deadline = time.monotonic() + 30
    while True:
        after = main_pid(cluster, primary, unit)
        if after not in (0, before) and sh(cluster, primary, f"systemctl is-active {unit} || true").strip() == "active":
            break
        assert time.monotonic() < deadline, f"systemd did not restart {unit} within 30 s"
        time.sleep(0.5)
    report = cluster.verify(timeout_s=60)
    assert report.primary.startswith(primary.address + ":"), "an outage shorter than downAfterMs must not fail over"
    assert config_epoch(cluster, primary) == epoch


def test_a_kill_drill_across_zones_loses_no_acknowledged_write(cluster):
    # Writers inside every node (through its own HAProxy, as HST Server), the primary's redis-server
    # SIGKILLed from the host: systemd restarts it, its start asks the Sentinels, every HAProxy
    # routes again. The frames between nodes cross the latency switch (1 ms +- 0.5 ms one way).
    stats = cluster.switch("stats")
    assert stats["delay_ms"] == LATENCY_MS and stats["jitter_ms"] == JITTER_MS
    with in_hub(cluster):
        figures = run_node_drill(cluster, NodeTargetView(cluster), "kill", tail_s=0.5)
    summary = {k: figures.get(k) for k in ("recovery_s", "recovery_by_haproxy", "acked", "lost", "lost_by_haproxy",
                                           "refused_by_kind", "failovers", "timeline")}
    assert figures["acked"] > 0 and all(sum(n) > 0 for n in figures["acked_by_haproxy"].values()), summary
    assert figures["lost"] == 0, summary
    assert figures["recovery_s"] is not None, summary  # every node's clients wrote again after the kill
    assert not figures["false_failover"], summary
    assert cluster.switch("stats")["ports"]["node-1"]["out"] > stats["ports"]["node-1"]["out"]


def test_stopping_the_primarys_redis_fails_over(cluster):
    old = primary_node(cluster)
    started = time.monotonic()
    sh(cluster, old, "systemctl stop hst-ha-redis")
    try:
        deadline = started + 60
        while True:
            names = named_primaries(cluster)
            if len(set(names)) == 1 and names[0] not in ("", old.address):
                break
            assert time.monotonic() < deadline, f"no failover 60 s after stopping {old.name}'s Redis: {names}"
            time.sleep(0.5)
        took = time.monotonic() - started
        assert took > DOWN_AFTER_MS / 1000, "failed over before downAfterMs: not a real detection"
    finally:
        sh(cluster, old, "systemctl start hst-ha-redis")
    report = cluster.verify(timeout_s=120)  # the old primary rejoins as a replica of the new one
    assert not report.primary.startswith(old.address + ":")
    assert f"{old.address}:31415" in report.replicas


def test_a_rebooted_node_re_templates_nothing_and_rejoins(cluster):
    primary = primary_node(cluster)
    node = next(n for n in cluster.nodes if n.address != primary.address)
    files = "/opt/hst-ha/data/redis.conf /opt/hst-ha/etc/haproxy.cfg"
    before = sh(cluster, node, f"sha256sum {files}")
    cluster.stop_node(node.name)
    cluster.start_node(node.name)
    report = cluster.verify(timeout_s=120)
    assert f"{node.address}:31415" in report.replicas
    assert sh(cluster, node, f"sha256sum {files}") == before
    # The preparation unit runs at every boot but renders once per instance: the node's journal is
    # persistent (it holds both boots), and only the first boot rendered anything.
    assert len(sh(cluster, node, "journalctl --list-boots --no-pager -q").splitlines()) >= 2
    assert prepare_log(cluster, node).count("configuration rendered") == 1
    this_boot = prepare_log(cluster, node, this_boot=True)
    assert "configuration was rendered at first boot" in this_boot and "configuration rendered" not in this_boot
    assert sh(cluster, node, f"systemctl is-active {PREPARE}").strip() == "active"


def test_a_replaced_node_joins_the_current_primary(cluster):
    primary = primary_node(cluster)
    initial = cluster.nodes[0]
    # After the failover above the initial primary is a replica: its user data still says it starts
    # as primary, so only asking the Sentinels makes it join the right node.
    assert initial.address != primary.address
    old_instance = initial.instance_id
    cluster.replace_node(initial.name)
    assert initial.instance_id != old_instance
    report = cluster.verify(timeout_s=180)
    assert report.primary.startswith(primary.address + ":")
    assert f"{initial.address}:31415" in report.replicas
    assert f"current primary: {primary.address}" in prepare_log(cluster, initial, this_boot=True)


def restarts(c: NodeCluster, node: NodeRecord, unit: str) -> int:
    return int(sh(c, node, f"systemctl show -p NRestarts --value {unit}").strip() or 0)


def test_a_node_whose_secret_is_unreadable_at_first_boot_recovers_by_itself(cluster):
    # The outage outlasts one whole run of the preparation (its fetch retries for a minute, then it
    # fails): the unit's own restarts, not the fetch's retries, bring the node back.
    primary = primary_node(cluster)
    node = [n for n in cluster.nodes if n.address != primary.address][-1]
    cluster.stop_node(node.name)
    cluster.set_secret_reachable(node, False)
    try:
        cluster.replace_node(node.name)
        deadline = time.monotonic() + 300
        while restarts(cluster, node, PREPARE) < 1:
            assert time.monotonic() < deadline, f"{PREPARE} did not fail and restart within 300 s"
            time.sleep(2)
        log = prepare_log(cluster, node)
        # The fetch gave up by itself (each call bounded), the boot script said so, systemd restarted it.
        assert "secret not readable yet" in log and "hst-ha: giving up after 60 s" in log
        # With TLS (the default) the certificates are the first secret the boot script reads.
        first = "could not write the TLS certificates" if cluster.settings.tls_enabled else \
            "could not read the Redis users' secret"
        assert first in log and "timed out" not in log
        assert "configuration rendered" not in log
        for unit in ("hst-ha-redis", "hst-ha-sentinel", "hst-ha-haproxy"):
            assert sh(cluster, node, f"systemctl is-active {unit} || true").strip() != "active"
        assert sh(cluster, node, "cloud-init status || true").strip() == "status: running"  # runcmd waits
    finally:
        cluster.set_secret_reachable(node, True)
    report = cluster.verify(timeout_s=180)
    assert f"{node.address}:31415" in report.replicas
    assert prepare_log(cluster, node).count("configuration rendered") == 1
    assert cloud_init_status(cluster, node) == "status: done"


def test_a_switchover_and_a_sentinel_reset_run_by_a_node_as_over_ssm(cluster):
    # scripts/aws_switchover.py's and ClusterMembership's node part: the provider's own membership script,
    # `python3 -m components.runtime.membership` from the code archive with Debian's python3-redis, over TLS,
    # the operator password through the node's secret command.
    s = cluster.settings
    old = primary_node(cluster)
    target = next(n for n in cluster.nodes if n.address != old.address)
    runner = next(n for n in cluster.nodes if n.address not in (old.address, target.address))
    sentinels = [f"{n.address}:{s.sentinel_port}" for n in cluster.nodes]
    redis_nodes = [f"{n.address}:{s.redis_port}" for n in cluster.nodes]
    passwords = [cluster.password(key) for key in ROLE_KEYS]
    report, output = cluster.membership_step(runner, "cluster", ssm_membership.cluster_args(
        "switchover", sentinels, redis_nodes, s.master_name, "--to", f"{target.address}:{s.redis_port}"))
    assert report["old_primary"] == f"{old.address}:{s.redis_port}"
    assert report["new_primary"] == f"{target.address}:{s.redis_port}"
    assert report["promoted_at_offset"] == report["offset"] > 0  # took over the whole history: nothing lost
    assert any("writes paused" in line for line in report["log"])
    assert not any(p in output for p in passwords)
    assert set(named_primaries(cluster)) == {target.address}
    assert cluster.verify(timeout_s=120).primary == f"{target.address}:{s.redis_port}"
    # The remaining Sentinels forget what they knew and relearn exactly the cluster, one at a time.
    reset, _ = cluster.membership_step(runner, "cluster", ssm_membership.cluster_args(
        "forget", sentinels, redis_nodes, s.master_name))
    assert [line.split(" reset:")[0] for line in reset["log"]] == [f"Sentinel {e}" for e in sentinels]
    assert all("knows 2 other Sentinels and 2 replicas" in line for line in reset["log"])
    cluster.verify(timeout_s=120)


def test_a_leaving_node_stops_and_disables_its_daemons(cluster):
    # ClusterMembership's stop on a node that leaves, before Pulumi terminates it. The last test to use
    # the cluster: it stays down to the end of the module.
    primary = primary_node(cluster)
    leaving = [n for n in cluster.nodes if n.address != primary.address][-1]
    still_active, _ = cluster.membership_step(leaving, "stop")
    assert still_active == []
    for unit in ssm_membership.STOP_UNITS:
        state = sh(cluster, leaving, f"systemctl is-active {unit} || true; systemctl is-enabled {unit} || true")
        assert state.split() == ["inactive", "disabled"], f"{unit}: {state}"
    assert "hst-ha-" not in sh(cluster, leaving, "systemctl list-units --state=active --plain --no-legend 'hst-ha-*'")
    for node in cluster.nodes:  # the others still route to the primary
        if node is not leaving:
            assert routes(cluster, node)


def test_the_latency_switch_delays_with_jitter_but_never_reorders_between_two_nodes():
    # Pure scheduling, no devices: 2000 frames from node-1 to node-2 read 0.1 ms apart with a 1 ms
    # +- 0.9 ms delay leave in the order they came, each at least 0.1 ms and at most 1.9 ms late.
    import heapq

    from components.node.latency import Port, Switch

    switch = Switch([Port("node-1", -1), Port("node-2", -1)], delay_s=0.001, jitter_s=0.0009, seed=7)
    for i in range(2000):
        switch._schedule(i * 0.0001, 0, 1, i.to_bytes(4, "big"))
    out = [heapq.heappop(switch.queue) for _ in range(len(switch.queue))]
    assert [int.from_bytes(d.frame, "big") for d in out] == list(range(2000))
    lateness = [d.due - int.from_bytes(d.frame, "big") * 0.0001 for d in out]
    assert min(lateness) >= 0.0001 and max(lateness) <= 0.0019 + 1e-9
    assert max(lateness) - min(lateness) > 0.0005  # the jitter is there
    switch.ports[1].cut = True
    switch._schedule(1.0, 0, 1, b"x" * 14)
    assert not switch.queue and switch.ports[1].dropped == 1
