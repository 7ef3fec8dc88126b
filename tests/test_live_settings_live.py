"""Changed settings on a running local cluster, applied live (components/runtime/live_settings.py through
components/local/cluster.py): each timing in force on every node afterwards with no process restarted;
an immutable change refused with nothing applied; grow 3 -> 5 -> 3 with writers running, nothing
acknowledged lost, and the Sentinels knowing exactly the remaining nodes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from components.bundle.names import ROUTED_BACKEND, guard_backend, sentinel_server_name
from components.bundle.render import node_settings, redis_check_ms
from components.bundle.users import MONITOR, OPERATOR
from components.local.cluster import DAEMONS, LocalCluster
from components.runtime import live_settings
from components.runtime.switchover import direct_commands, switchover
from components.settings import parse_settings
from drills.client_kinds import SentinelWriter
from drills.clients import BoundedWriter, read_back
from tests.live_cluster import FAST

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("redis-server", "redis-sentinel", "haproxy")),
    reason="needs redis-server, redis-sentinel and haproxy",
)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def cluster_in(prefix: str, **raw: Any) -> Iterator[tuple[LocalCluster, Path]]:
    state_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    cluster = LocalCluster(parse_settings({**FAST, **raw}), state_dir, progress=say)
    try:
        cluster.up(timeout_s=30)
        yield cluster, state_dir
    finally:
        # Whatever membership a failure left: stop every node any step may have started.
        for count in (5, 3):
            with contextlib.suppress(Exception):
                LocalCluster(parse_settings({**FAST, "nodeCount": count}), state_dir).down(keep=True)
        shutil.rmtree(state_dir, ignore_errors=True)


def pids(cluster: LocalCluster) -> dict[tuple[int, str], int | None]:
    return {(i, s): cluster.pid(i, s) for i in range(cluster.settings.node_count) for s in DAEMONS}


def worker_pids(cluster: LocalCluster, index: int) -> set[int]:
    master = cluster.pid(index, "haproxy")
    assert master is not None
    return {c.pid for c in psutil.Process(master).children()}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "local_cluster.py"), *args], check=False,
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_each_timing_is_in_force_on_every_node_with_no_process_restarted() -> None:
    with cluster_in("hst-live-") as (cluster, state_dir):
        before = pids(cluster)
        workers = {i: worker_pids(cluster, i) for i in range(3)}
        wanted = {"downAfterMs": 1500, "failoverTimeoutMs": 6000, "parallelSyncs": 2, "sentinelQuorum": 3,
                  "minReplicasToWrite": 2, "minReplicasMaxLag": 5}
        cli = run_cli("up", "--state-dir", str(state_dir),
                      "--down-after-ms", "1500", "--failover-timeout-ms", "6000", "--parallel-syncs", "2",
                      "--sentinel-quorum", "3", "--min-replicas-to-write", "2", "--min-replicas-max-lag", "5")
        assert cli.returncode == 0, cli.stderr
        assert "applying live: downAfterMs 1000 -> 1500; failoverTimeoutMs 5000 -> 6000" in cli.stderr
        assert json.loads(cli.stdout)["quorum"]["quorum"] == 3

        changed = LocalCluster.load(state_dir)
        assert changed.settings == parse_settings({**FAST, **wanted})
        assert pids(changed) == before  # no Redis, Sentinel or HAProxy master restarted
        commands = direct_commands(cluster.password(OPERATOR.key), tls_ca_file=cluster.tls_ca_file)
        for host, port in cluster.sentinel_endpoints:
            assert live_settings.read_sentinel(commands, f"{host}:{port}", "myprimary") == {
                "down-after-milliseconds": 1500, "failover-timeout": 6000, "parallel-syncs": 2, "quorum": 3}
        for host, port in cluster.redis_endpoints:
            assert live_settings.read_redis(commands, f"{host}:{port}") == {
                "min-replicas-to-write": 2, "min-replicas-max-lag": 5, "repl-diskless-sync-max-replicas": 2}
            # CONFIG REWRITE: in redis.conf too, so a restart keeps it.
        for node in cluster.nodes:
            conf = Path(node.layout.redis_conf).read_text()
            assert "min-replicas-max-lag 5" in conf and "min-replicas-to-write 2" in conf
            # HAProxy's role checks follow downAfterMs: re-rendered and reloaded (a new worker, same master).
            check_ms = redis_check_ms(node_settings(changed.settings, changed.addresses))
            assert f"timeout check {check_ms}ms" in Path(node.layout.haproxy_cfg).read_text()
            assert not worker_pids(cluster, node.index) & workers[node.index]
            assert "DOWN_AFTER_MS=1500" in Path(node.layout.node_env).read_text()

        # The same `up` again: nothing to change, nothing restarted or reloaded.
        again = run_cli("up", "--state-dir", str(state_dir))
        assert again.returncode == 0, again.stderr
        assert "applying live" not in again.stderr and pids(changed) == before


def test_an_immutable_change_is_refused_with_nothing_applied() -> None:
    with cluster_in("hst-live-") as (cluster, state_dir):
        before = pids(cluster)
        recorded = (state_dir / "cluster.json").read_text()
        cfgs = [Path(n.layout.haproxy_cfg).read_text() for n in cluster.nodes]
        cli = run_cli("up", "--state-dir", str(state_dir), "--sentinel-port", "41416", "--master-name", "other",
                      "--down-after-ms", "1500")
        assert cli.returncode == 2, cli.stderr
        assert "sentinelPort 41415 -> 41416: cannot change on a running cluster" in cli.stderr
        assert "masterName 'myprimary' -> 'other'" in cli.stderr and "nothing was applied" in cli.stderr
        assert "deploy a new cluster" in cli.stderr
        # Not even the timing that could change was applied.
        commands = direct_commands(cluster.password(OPERATOR.key), tls_ca_file=cluster.tls_ca_file)
        for host, port in cluster.sentinel_endpoints:
            assert live_settings.read_sentinel(commands, f"{host}:{port}", "myprimary")["down-after-milliseconds"] \
                == 1000
        assert (state_dir / "cluster.json").read_text() == recorded
        assert [Path(n.layout.haproxy_cfg).read_text() for n in cluster.nodes] == cfgs
        assert pids(cluster) == before


def writers_for(cluster: LocalCluster) -> list[BoundedWriter]:
    password = cluster.password()
    long_lived = BoundedWriter(cluster.haproxy_endpoints[0], password, "grow-haproxy", max_seconds=150)
    new_conn = BoundedWriter(cluster.haproxy_endpoints[1], password, "grow-newconn", max_seconds=150,
                             connection_per_write=True, pace_s=0.01)
    sentinel = SentinelWriter(cluster.sentinel_endpoints, "myprimary", password, "grow-sentinel",
                              sentinel_password=cluster.password(MONITOR.key), max_seconds=150,
                              tls_ca_file=cluster.tls_ca_file)  # Sentinels and the primary: the nodes' TLS ports
    return [long_lived, new_conn, sentinel]


def test_grow_to_five_and_shrink_to_three_with_writers_running_loses_nothing() -> None:
    with cluster_in("hst-grow-") as (three, state_dir):
        original = pids(three)
        writers = writers_for(three)
        for writer in writers:
            writer.start()
        try:
            started = time.monotonic()
            five = LocalCluster(parse_settings({**FAST, "nodeCount": 5}), state_dir, progress=say)
            outputs = five.up(timeout_s=60)
            grow_s = time.monotonic() - started
            assert len(outputs["quorum"]["replicas"]) == 4 and outputs["quorum"]["quorum"] == 3
            assert {k: v for k, v in pids(five).items() if k[0] < 3} == original
            commands = direct_commands(three.password(OPERATOR.key), tls_ca_file=three.tls_ca_file)
            # Every old node's HAProxy learned the new servers and their guards.
            for node in five.nodes[:3]:
                servers = five.view.haproxy_servers(node.index)
                assert {f"{ROUTED_BACKEND}/node-4", f"{ROUTED_BACKEND}/node-5"} <= set(servers)
                assert f"{guard_backend('node-5')}/{sentinel_server_name('node-4')}" in servers

            # The primary moves to a node that is about to leave: the shrink must switch over first.
            switchover([f"{h}:{p}" for h, p in five.sentinel_endpoints], [f"{h}:{p}" for h, p in five.redis_endpoints],
                       "myprimary", commands, to="127.0.0.15:31415", progress=say)
            five.verify(30)

            started = time.monotonic()
            back = LocalCluster(parse_settings(FAST), state_dir, progress=say)
            report = back.up(timeout_s=60)["quorum"]
            shrink_s = time.monotonic() - started
            assert report["primary"] in {f"{h}:{p}" for h, p in back.redis_endpoints}
            assert {k: v for k, v in pids(back).items()} == original
        finally:
            for writer in writers:
                writer.stop()
            for writer in writers:
                writer.join(10)
        # The Sentinels know exactly the remaining nodes: not merely flagged down, forgotten.
        remaining_sentinels = {f"{h}:{p}" for h, p in back.sentinel_endpoints}
        remaining_redis = {f"{h}:{p}" for h, p in back.redis_endpoints}
        for endpoint in remaining_sentinels:
            known = commands.sentinel(endpoint, ("SENTINEL", "SENTINELS", "myprimary"))
            replicas = commands.sentinel(endpoint, ("SENTINEL", "REPLICAS", "myprimary"))
            assert {f"{s['ip']}:{s['port']}" for s in known} == remaining_sentinels - {endpoint}
            assert {f"{r['ip']}:{r['port']}" for r in replicas} == remaining_redis - {report["primary"]}
        host, port = report["primary"].rsplit(":", 1)
        lost = read_back((host, int(port)), three.password(), writers, three.tls_ca_file)
        acked = [len(w.acked) for w in writers]
        say(f"grow {grow_s:.1f}s, shrink {shrink_s:.1f}s; acknowledged {acked}, lost {[len(m) for m in lost]}; "
            f"refused {[dict(Counter(e[3] for e in w.errors)) for w in writers]}")
        assert all(n > 50 for n in acked), acked
        assert lost == [[], [], []]
        assert not (state_dir / "node-4").exists() and not (state_dir / "node-5").exists()


def raw_session(cluster: LocalCluster, index: int) -> redis.Connection:
    """One TCP session through a node's HAProxy, never reconnected behind our back (unlike a pool)."""
    host, port = cluster.haproxy_endpoints[index]
    connection = redis.Connection(host=host, port=port, password=cluster.password(), socket_timeout=2,
                                  retry=Retry(NoBackoff(), 0))
    connection.connect()
    return connection


def ask(connection: redis.Connection, *words: str) -> Any:
    connection.send_command(*words)
    return connection.read_response()


def haproxy_workers(cluster: LocalCluster, index: int) -> list[psutil.Process]:
    master = psutil.Process(cluster.pid(index, "haproxy"))
    return master.children()


def test_a_reload_keeps_open_sessions_and_the_new_workers_fence_judges_them() -> None:
    """A reloaded HAProxy's former worker keeps the sessions it carries (a settings change drops none),
    though it runs no health check: its fence follows the new worker's verdicts. With two of three
    Sentinels gone, a session kept by the former worker is ended as one opened after the reload is,
    and the former worker, its last session gone, ends."""
    with cluster_in("hst-live-") as (cluster, state_dir):
        master = cluster.pid(0, "haproxy")
        before = raw_session(cluster, 0)
        assert ask(before, "SET", "k", "1") == b"OK"
        LocalCluster(parse_settings({**FAST, "downAfterMs": 1500}), state_dir, progress=say).up(timeout_s=30)
        assert cluster.pid(0, "haproxy") == master
        assert len(haproxy_workers(cluster, 0)) == 2  # the new worker, and the former one holding `before`
        assert ask(before, "SET", "k", "2") == b"OK"  # the session opened before the reload goes on
        # Past the former worker's blind bound (no verdict for downAfterMs + 2 s ends every session): it
        # reads the new worker's verdicts, and they keep the session.
        time.sleep(1.5 + 2.0 + 1.0)
        assert ask(before, "SET", "k", "2") == b"OK"
        after = raw_session(cluster, 0)
        assert ask(after, "SET", "k", "3") == b"OK"
        cluster.kill(1, "sentinel", signal.SIGKILL)
        cluster.kill(2, "sentinel", signal.SIGKILL)
        ended: set[str] = set()
        deadline = time.monotonic() + 10
        while len(ended) < 2 and time.monotonic() < deadline:
            for name, session in (("before", before), ("after", after)):
                if name not in ended:
                    try:
                        ask(session, "SET", "k", "4")
                    except redis.ConnectionError:
                        ended.add(name)
            time.sleep(0.2)
        assert ended == {"before", "after"}, f"sessions still open 10 s after the Sentinel majority went: {ended}"
        log = "".join(p.read_text(errors="replace") for p in (cluster.nodes[0].home / "log").glob("haproxy.*"))
        assert "the current worker would not keep them" in log, log[-2000:]  # the former worker's fence
        deadline = time.monotonic() + 10
        while len(haproxy_workers(cluster, 0)) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(haproxy_workers(cluster, 0)) == 1, "the former worker outlived its last session"
