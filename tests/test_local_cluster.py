"""The local target with real redis-server, redis-sentinel and haproxy processes on 127.0.0.11...

Every test that starts servers stops them in its fixture's teardown (only the pids recorded in
the state directory, and only while still ours); every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from components.bundle import (
    SENTINEL_PING_PERIOD_MS,
    NodeLayout,
    NodePlace,
    render_bundle,
)
from components.bundle.render import node_settings, route_wait_ms
from components.bundle.users import HST, OPERATOR, REPLICATION, ROLE_KEYS
from components.local.cluster import (
    DAEMONS,
    LocalCluster,
    LocalClusterError,
    PortBusyError,
    ProcessRecord,
)
from components.local.ports import port_is_free
from components.outputs import output_specs
from components.runtime import bearer_token
from components.runtime.nodeenv import tls_kwargs
from components.runtime.secret_store import LocalSecretStore
from components.settings import parse_settings
from tests.live_cluster import FAST, wait_for

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "local_cluster.py"
ADDRESSES = tuple(f"127.0.0.{11 + i}" for i in range(7))
PORTS = (31415, 41415, 31414)





def all_ports_free(nodes: int = 7) -> bool:
    return all(port_is_free(address, port) for address in ADDRESSES[:nodes] for port in PORTS)


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout_s, cwd="/", check=False,
    )


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Short, under /tmp: HAProxy's stats socket lives below it and Unix socket paths are short.
    path = Path(tempfile.mkdtemp(prefix="hst-ha-lc-", dir="/tmp"))
    try:
        yield path
    finally:
        # Whatever the test (or a CLI run) left running, here or in a cluster directory below it,
        # so that one failed test cannot hold the ports for the tests after it.
        below = [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
        for directory in (path, *below):
            with contextlib.suppress(LocalClusterError):
                LocalCluster.load(directory).down()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_cluster(state_dir: Path) -> Callable[..., LocalCluster]:
    def make(**config: Any) -> LocalCluster:
        return LocalCluster(parse_settings(config), state_dir, progress=lambda m: print(m, file=sys.stderr))

    return make


def one_connection(endpoint: tuple[str, int], password: str, tls_ca_file: str | None = None) -> redis.Redis:
    # One TCP connection: HAProxy picks the server when the connection opens, so INFO and the
    # write that follows on it reach the same Redis. A node's own port takes `tls_ca_file` (tlsEnabled).
    return redis.Redis(*endpoint, password=password, socket_timeout=2, single_connection_client=True,
                       **tls_kwargs(tls_ca_file))


def run_id(endpoint: tuple[str, int], password: str, tls_ca_file: str | None = None) -> str:
    client = one_connection(endpoint, password, tls_ca_file)
    try:
        return client.info("server")["run_id"]
    finally:
        client.close()


def sentinel_view(cluster: LocalCluster) -> str | None:
    """The primary every Sentinel names, when they all name the same one."""
    named = set(cluster.view.sentinel_primaries())
    return next(iter(named)) if len(named) == 1 and None not in named else None


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize("n", [3, 5, 7])
def test_a_primary_streams_the_first_sync_as_soon_as_every_replica_waits(n: int) -> None:
    # Without it, Redis waits repl-diskless-sync-delay (5 s) for more replicas: no cluster could
    # be verified in under 5 s. (The line went into components/bundle/render.py for both targets.)
    settings = parse_settings({"nodeCount": n, "tlsEnabled": False})
    layout = NodeLayout(home="/srv/x", secrets_command="cat /dev/null")
    bundle = render_bundle(settings, NodePlace(0, ADDRESSES[:n]), layout)
    assert f"repl-diskless-sync-max-replicas {n - 1}\n" in bundle.file(layout.template(layout.redis_conf)).content


def test_a_returning_redis_needs_two_checks_before_haproxy_routes_to_it() -> None:
    # One check comes within `downinter` (250 ms) of a restart, when HAProxy's Sentinel checks
    # (every 250 ms) may still name an old primary that is back; the second comes after them.
    settings = parse_settings({"tlsEnabled": False})  # the plaintext lines; test_tls checks the TLS ones
    layout = NodeLayout(home="/srv/x", secrets_command="cat /dev/null", haproxy_address=ADDRESSES[0])
    bundle = render_bundle(settings, NodePlace(0, ADDRESSES[:3]), layout)
    cfg = bundle.file(layout.template(layout.haproxy_cfg)).content
    for i in range(3):
        assert (f"server node-{i + 1} {ADDRESSES[i]}:31415 weight 0 on-marked-down shutdown-sessions "
                "inter 1000ms rise 2\n") in cfg
    assert "default-server check inter 1s downinter 250ms fall 1 rise 1" in cfg  # Sentinel checks: rise 1


def test_the_haproxy_admin_client_parses_server_states_and_quoted_stat_rows(tmp_path: Path) -> None:
    import threading

    from components.runtime import haproxy_admin

    answers = {
        b"show servers state\n": b"1\n# be_id be_name srv_id srv_name srv_addr srv_op_state\n"
                                  b"3 redis_primary 1 node-1 127.0.0.11 2\n"
                                  b"4 sentinels_name_node_1 1 s1 127.0.0.11 0\n\n",
        b"show stat\n": b"# pxname,svname,status,check_desc\nredis_primary,node-1,UP,\"role:master\r\n, ok\"\n",
    }
    path = str(tmp_path / "admin.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()

    def serve() -> None:
        for _ in answers:
            conn, _ = server.accept()
            with conn:
                conn.sendall(answers[conn.recv(100)])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        states = haproxy_admin.servers_state(path)
        assert states["redis_primary/node-1"]["state"] == "UP" and states["sentinels_name_node_1/s1"]["state"] == "DOWN"
        rows = haproxy_admin.stat(path)
        assert rows[("redis_primary", "node-1")]["check_desc"] == "role:master\r\n, ok"
    finally:
        thread.join(5)
        server.close()


# --------------------------------------------------------------------------- up, idempotency, status


@pytest.mark.timeout(90)
def test_up_is_verified_and_a_write_through_any_haproxy_reads_back_through_every_other(
    make_cluster: Callable[..., LocalCluster], state_dir: Path,
) -> None:
    cluster = make_cluster()
    started = time.monotonic()
    outputs = cluster.up(timeout_s=30)
    print(f"up in {time.monotonic() - started:.2f}s", file=sys.stderr)

    assert outputs["masterName"] == "myprimary"
    assert outputs["nodePrivateIps"] == list(ADDRESSES[:3])
    assert outputs["redisEndpoints"] == [f"{a}:31415" for a in ADDRESSES[:3]]
    assert outputs["sentinelEndpoints"] == [f"{a}:41415" for a in ADDRESSES[:3]]
    assert outputs["haproxyEndpoint"] == "127.0.0.11:31414"
    assert outputs["haproxyEndpoints"] == [f"{a}:31414" for a in ADDRESSES[:3]]
    assert outputs["hstInstalled"] is False and outputs["stateDir"] == str(state_dir)
    quorum = outputs["quorum"]
    assert quorum["primary"] == "127.0.0.11:31415"
    assert quorum["replicas"] == ["127.0.0.12:31415", "127.0.0.13:31415"]
    assert quorum["haproxy_routes"] == outputs["haproxyEndpoints"]
    # Every stack output AWS has, under the same name with the same type (components/outputs.py).
    by_name: dict[str, Any] = dict(outputs)
    for spec in output_specs():
        assert isinstance(by_name[spec.name], typing.get_origin(spec.type) or spec.type), spec.name
    assert outputs["instanceIds"] == [] and outputs["nodePublicIps"] == [None] * 3

    secret = Path(outputs["redisAuthSecretPath"])
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    passwords = json.loads(secret.read_text())
    assert sorted(passwords) == sorted(ROLE_KEYS) and len(set(passwords.values())) == len(ROLE_KEYS)
    assert all(re.fullmatch(r"[A-Za-z0-9]{32,}", p) for p in passwords.values())
    assert not any(p in json.dumps(outputs) for p in passwords.values())
    password = passwords[HST.key]  # the writers below are HST Server: its (default) user
    # The rendered files are the bundle's, with only the passwords filled in.
    redis_conf = Path(cluster.nodes[1].layout.redis_conf).read_text()
    assert f"user default reset on >{password} " in redis_conf and "replicaof 127.0.0.11 31415" in redis_conf
    assert f"masterauth {passwords[REPLICATION.key]}\n" in redis_conf

    endpoints = cluster.haproxy_endpoints
    for i, writer in enumerate(endpoints):
        client = one_connection(writer, password)
        try:
            assert client.set(f"written-via-node-{i + 1}", f"value {i}")
            assert client.execute_command("WAIT", 2, 2000) == 2  # on both replicas too
        finally:
            client.close()
        for reader in endpoints[:i] + endpoints[i + 1:]:
            client = one_connection(reader, password)
            try:
                assert client.get(f"written-via-node-{i + 1}") == f"value {i}".encode()
            finally:
                client.close()
    for replica in cluster.redis_endpoints[1:]:
        client = one_connection(replica, password, cluster.tls_ca_file)
        try:
            assert client.mget([f"written-via-node-{i + 1}" for i in range(3)]) == [b"value 0", b"value 1", b"value 2"]
        finally:
            client.close()

    # Idempotent: up again, here and through the CLI, starts nothing and only re-verifies.
    pids = {(i, s): cluster.pid(i, s) for i in range(3) for s in DAEMONS}
    assert all(pids.values())
    reverified = cluster.up(timeout_s=10)
    # A running cluster passes on the first look (no wait loop); how fast is the host's business.
    assert reverified["quorum"]["attempts"] == 1
    cli = run_cli("up", "--state-dir", str(state_dir))
    assert cli.returncode == 0, cli.stderr
    first = json.loads(cli.stdout)
    assert first["quorum"]["primary"] == "127.0.0.11:31415"
    assert {(i, s): cluster.pid(i, s) for i in range(3) for s in DAEMONS} == pids

    # The CLI mints bootstrap bearer tokens into a 0600 local store, verifiable with the output key;
    # a second `up` re-mints nothing.
    tokens_file = Path(first["bearerTokenSecretPath"])
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    assert "minted bootstrap bearer tokens for admin" in cli.stderr
    stored = LocalSecretStore(tokens_file.parent).get("bearer-tokens")
    token = json.loads(stored)["tokens"]["admin"]["token"]
    # user unless asked
    assert bearer_token.verify(token, first["tokenVerificationKey"])["scope"] == "node.hst-ha-bootstrap:user:all"
    assert token not in cli.stdout + cli.stderr and password not in cli.stdout + cli.stderr
    second = run_cli("up", "--state-dir", str(state_dir))
    assert second.returncode == 0 and "minted" not in second.stderr
    assert json.loads(second.stdout)["tokenVerificationKey"] == first["tokenVerificationKey"]
    assert LocalSecretStore(tokens_file.parent).get("bearer-tokens") == stored
    # The token settings may change on a running cluster: new tokens, the same daemons.
    others = run_cli("up", "--state-dir", str(state_dir), "--token-user-ids", "alice", "bob",
                     "--token-scope-role", "admin")
    assert others.returncode == 0, others.stderr
    assert "minted bootstrap bearer tokens for alice, bob" in others.stderr
    minted = json.loads(LocalSecretStore(tokens_file.parent).get("bearer-tokens"))["tokens"]
    assert sorted(minted) == ["alice", "bob"]
    key = json.loads(others.stdout)["tokenVerificationKey"]
    assert bearer_token.verify(minted["bob"]["token"], key)["scope"] == "node.hst-ha-bootstrap:admin:all"
    assert {(i, s): cluster.pid(i, s) for i in range(3) for s in DAEMONS} == pids

    # A setting no running cluster can change: refused, nothing touched (the live changes:
    # tests/test_live_settings_live.py).
    other = run_cli("up", "--state-dir", str(state_dir), "--redis-port", "31416")
    assert other.returncode == 2
    assert "redisPort 31415 -> 31416: cannot change on a running cluster" in other.stderr
    assert "nothing was applied" in other.stderr
    assert {(i, s): cluster.pid(i, s) for i in range(3) for s in DAEMONS} == pids

    status = run_cli("status", "--state-dir", str(state_dir))
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("primary 127.0.0.11:31415")
    as_json = json.loads(run_cli("status", "--json", "--state-dir", str(state_dir)).stdout)
    assert [n["role"] for n in as_json["nodes"]] == ["master", "slave", "slave"]
    assert [n["haproxyRoutesTo"] for n in as_json["nodes"]] == ["127.0.0.11:31415"] * 3
    assert all(n["lagBytes"] is not None for n in as_json["nodes"][1:])

    # down --keep, then up again: the nodes restart from the files they own, data included.
    kept = run_cli("down", "--keep", "--state-dir", str(state_dir))
    assert kept.returncode == 0, kept.stderr
    assert all_ports_free(3) and (state_dir / "node-1" / "data" / "redis.conf").exists()
    again = run_cli("up", "--state-dir", str(state_dir))
    assert again.returncode == 0, again.stderr
    client = one_connection(cluster.haproxy_endpoints[2], password)
    try:
        assert client.get("written-via-node-1") == b"value 0"
    finally:
        client.close()

    # Every Sentinel pings every 200 ms, and so does one restarted by its supervisor.
    cluster.kill(1, "sentinel")
    cluster.start_step(1, "sentinel")
    for endpoint in cluster.sentinel_endpoints:
        client = redis.Redis(*endpoint, username=OPERATOR.sentinel_user, password=passwords[OPERATOR.key],
                             socket_timeout=2, **tls_kwargs(cluster.tls_ca_file))
        try:
            assert client.execute_command("SENTINEL", "DEBUG")[b"PING-PERIOD"] == str(SENTINEL_PING_PERIOD_MS).encode()
        finally:
            client.close()

    down = run_cli("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    # The directory existed (empty) before `up`: what the local target put there is gone, the directory stays.
    assert list(state_dir.iterdir()) == []
    assert all_ports_free(3)
    assert all(cluster.pid(i, s) is None for i in range(3) for s in DAEMONS)


def test_the_fence_ends_an_open_session_once_no_sentinel_majority_names_its_server(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster()
    cluster.up(timeout_s=30)
    password = cluster.password()
    session = one_connection(cluster.haproxy_endpoints[0], password)
    try:
        assert session.set("before", "1")
        # The primary stays healthy and keeps saying role:master, so HAProxy's own check never ends
        # this session: only the fence can, once two of the three Sentinels stop naming node-1.
        cluster.kill(1, "sentinel")
        cluster.kill(2, "sentinel")

        def ended() -> bool:
            try:
                session.set("during", "1")
            except (redis.ConnectionError, redis.TimeoutError):  # ended; its reconnection is held
                return True
            return False

        wait_for("the fence ends the open session", ended, 10)
    finally:
        session.close()
    log = (Path(cluster.nodes[0].layout.log) / "haproxy.out").read_text()
    assert re.search(r"hst-ha fence: ended \d+ sessions to node-1: 1 of 3 Sentinels name it", log), log[-2000:]
    # A new connection is not routed anywhere while the majority is gone: HAProxy holds it
    # (route_wait_ms), and closes it once that bound has passed with still no route.
    bound_s = route_wait_ms(node_settings(cluster.settings, cluster.addresses)) / 1000
    started = time.monotonic()
    with socket.create_connection(cluster.haproxy_endpoints[0], timeout=bound_s + 10) as raw:
        raw.sendall(b"PING\r\n")
        assert raw.recv(100) == b""  # closed, unanswered
    assert time.monotonic() - started >= bound_s - 0.5
    # Held, it is served as soon as a majority names the primary again, and the write lands there.
    results: list[object] = []
    writer = threading.Thread(target=lambda: results.append(
        redis.Redis(*cluster.haproxy_endpoints[0], password=password, socket_timeout=bound_s + 10,
                    single_connection_client=True).set("held-then-served", "1")))
    writer.start()
    time.sleep(1)
    assert writer.is_alive() and not results  # held: neither served nor closed
    cluster.start_step(1, "sentinel")
    writer.join(bound_s + 15)
    assert results == [True]
    primary = one_connection(cluster.redis_endpoints[0], password, cluster.tls_ca_file)
    try:
        assert primary.get("held-then-served") == b"1"
    finally:
        primary.close()


@pytest.mark.timeout(60)
def test_seven_nodes_come_up_verified(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(nodeCount=7)
    outputs = cluster.up(timeout_s=30)
    assert outputs["nodePrivateIps"] == list(ADDRESSES)
    assert len(outputs["quorum"]["replicas"]) == 6
    assert outputs["quorum"]["quorum"] == 4
    cluster.down()
    assert all_ports_free(7)


# --------------------------------------------------------------------------- failures and drills


@pytest.mark.timeout(120)
def test_sigkill_of_the_primary_elects_a_new_one_and_the_old_one_returns_as_a_replica(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(**FAST)
    cluster.up(timeout_s=30)
    password = cluster.password()
    killed_at = time.monotonic()
    cluster.kill(0, "redis", signal.SIGKILL)

    promotions: list[str] = []

    def every_haproxy_follows() -> str | None:
        primary = sentinel_view(cluster)
        if primary and primary != "127.0.0.11:31415":
            if not promotions or promotions[-1] != primary:
                promotions.append(primary)
            if all(route == primary for route in cluster.view.haproxy_routes()):
                return primary
        return None

    new_primary = wait_for("every Sentinel names a new primary and every HAProxy routes to it",
                           every_haproxy_follows, 30)
    print(f"writes routed to {new_primary} {time.monotonic() - killed_at:.2f}s after the SIGKILL", file=sys.stderr)
    new_host = new_primary.split(":")[0]
    new_index = ADDRESSES.index(new_host)

    # Restart it at once, as a supervisor would. HAProxy still holds Sentinel checks from before
    # the failover for up to a second (they run every `inter`); the restarted Redis must not become
    # routable within that second (the bundle's `rise 2` on the Redis servers).
    cluster.start_step(0, "redis")
    old_endpoint = cluster.redis_endpoints[0]
    old_run_id = run_id(old_endpoint, password, cluster.tls_ca_file)
    new_run_id = run_id(cluster.redis_endpoints[new_index], password, cluster.tls_ca_file)
    assert cluster.password(OPERATOR.key) != password  # HST Server's user is not the operator's

    # Its start gate asked the Sentinels first: it comes back as a replica of the new primary at
    # once (it used to come back as master until Sentinel converted it ~10 s later), refusing writes
    # of its own accord; and every write through every HAProxy lands on the new primary.
    admin = one_connection(old_endpoint, password, cluster.tls_ca_file)
    try:
        replication = admin.info("replication")
        assert replication["role"] == "slave" and replication["master_host"] == new_host, replication
        with pytest.raises(redis.ReadOnlyError):
            admin.set("straight-to-the-old-primary", "x")
    finally:
        admin.close()
    assert f"starting as replica of {new_primary}" in Path(cluster.nodes[0].log("redis-pre-start.out")).read_text()
    writes = 0
    for _ in range(5):
        for endpoint in cluster.haproxy_endpoints:
            client = one_connection(endpoint, password)
            try:
                reached = client.info("server")["run_id"]
                assert reached != old_run_id, f"HAProxy {endpoint} routed to the restarted old primary"
                assert reached == new_run_id
                assert client.set(f"during-rejoin-{writes}", "x")
                writes += 1
            finally:
                client.close()
        time.sleep(0.05)
    assert writes == 5 * len(cluster.haproxy_endpoints)

    report = cluster.verify(timeout_s=60)
    assert report.primary == new_primary, (report.primary, promotions)
    assert "127.0.0.11:31415" in report.replicas
    # Sentinel rewrote the old primary's own config: a restart keeps it a replica.
    assert f"replicaof {new_host} 31415" in Path(cluster.nodes[0].layout.redis_conf).read_text()
    if len(promotions) > 1:
        # Seen once by the lead at downAfterMs 1000 on 2 cores: a second failover right after the first.
        warnings.warn(f"double failover after one SIGKILL: Sentinels named {promotions} in turn", stacklevel=1)


@pytest.mark.timeout(150)
def test_a_wiped_node_rejoins_the_current_primary_not_the_one_its_bundle_names(
    make_cluster: Callable[..., LocalCluster], state_dir: Path,
) -> None:
    cluster = make_cluster(**FAST)
    cluster.up(timeout_s=30)
    password = cluster.password()

    failover = run_cli("failover", "--state-dir", str(state_dir), "--timeout", "90", timeout_s=120)
    assert failover.returncode == 0, failover.stderr
    moved = json.loads(failover.stdout)
    assert moved["from"] == "127.0.0.11:31415" and moved["to"] != moved["from"]
    assert all(route == moved["to"] for route in cluster.view.haproxy_routes())
    new_host = moved["to"].split(":")[0]

    writer = one_connection(cluster.haproxy_endpoints[0], password)
    try:
        writer.set("before-the-wipe", "kept")
    finally:
        writer.close()

    # A replica whose bundle says `replicaof 127.0.0.11`, which is no longer the primary.
    target = next(i for i in (1, 2) if ADDRESSES[i] != new_host)
    node = cluster.nodes[target]
    assert "replicaof 127.0.0.11 31415" in Path(node.layout.template(node.layout.redis_conf)).read_text()
    cluster.wipe_and_reprovision(target)

    redis_conf = Path(node.layout.redis_conf).read_text()
    assert f"replicaof {new_host} 31415" in redis_conf and "replicaof 127.0.0.11" not in redis_conf
    assert f"sentinel monitor myprimary {new_host} 31415" in Path(node.layout.sentinel_conf).read_text()
    assert "current primary: " + new_host in (Path(node.layout.log) / "prepare.out").read_text()

    report = cluster.verify(timeout_s=60)
    assert report.primary == moved["to"]
    assert f"{ADDRESSES[target]}:31415" in report.replicas
    client = one_connection(cluster.redis_endpoints[target], password, cluster.tls_ca_file)
    try:
        assert client.get("before-the-wipe") == b"kept"
    finally:
        client.close()


# --------------------------------------------------------------------------- bad input, interruption, strangers


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "4"], "hst-ha:nodeCount = 4: must be odd"),
        (["--node-count", "9"], "nodeCount = 9: the local target runs at most 7 nodes"),
        (["--down-after-ms", "soon"], "hst-ha:downAfterMs = 'soon': must be a whole number"),
        (["--token-scope-role", "root"], "hst-ha:tokenScopeRole = 'root'"),
        (["--token-key-length", "1000"], "hst-ha:tokenKeyLength = 1000"),
    ],
)
def test_bad_settings_are_refused_before_anything_starts(args: list[str], message: str, state_dir: Path) -> None:
    target = state_dir / "cluster"
    result = run_cli("up", "--state-dir", str(target), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert not target.exists()
    assert all_ports_free(3)


def test_a_non_empty_state_dir_it_did_not_create_is_refused_and_left_alone(state_dir: Path) -> None:
    theirs = state_dir / "checkout"
    theirs.mkdir()
    (theirs / "README.md").write_text("someone else's\n")
    result = run_cli("up", "--state-dir", str(theirs))
    assert result.returncode == 2, result.stderr
    assert f"--state-dir {theirs}: the directory is not empty (README.md)" in result.stderr
    assert "Pass a new directory (it is created) or an empty one" in result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in theirs.iterdir()) == ["README.md"]
    assert all_ports_free(3)
    # Nor does the library take it, and `down` there touches nothing.
    with pytest.raises(LocalClusterError, match="not created by the local target"):
        LocalCluster(parse_settings({}), theirs).up()
    assert run_cli("down", "--state-dir", str(theirs)).returncode == 0
    assert (theirs / "README.md").read_text() == "someone else's\n"
    assert sorted(p.name for p in theirs.iterdir()) == ["README.md"]


@pytest.mark.parametrize("existed", [True, False], ids=["empty-directory-given", "directory-created"])
def test_a_failed_first_up_removes_only_what_it_created(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, existed: bool,
) -> None:
    target = state_dir if existed else state_dir / "new" / "cluster"

    def broken_boot(self: LocalCluster, nodes: Any) -> None:
        raise LocalClusterError("boot script failed (injected)")

    monkeypatch.setattr(LocalCluster, "_prepare", broken_boot)
    with pytest.raises(LocalClusterError, match="injected"):
        LocalCluster(parse_settings({}), target).up()
    if existed:
        assert target.is_dir() and list(target.iterdir()) == []
    else:
        assert not target.exists() and (state_dir / "new").is_dir()  # only the directory it made itself
    assert all_ports_free(3)


@pytest.mark.timeout(90)
def test_down_removes_only_what_the_local_target_created(
    make_cluster: Callable[..., LocalCluster], state_dir: Path,
) -> None:
    target = state_dir / "created"
    cluster = LocalCluster(parse_settings({}), target)
    cluster.up(timeout_s=30)
    (target / "notes.txt").write_text("mine\n")  # put there by hand while the cluster ran
    cluster.down()
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert all_ports_free(3)
    # A directory it created and nothing else is in: removed whole.
    (target / "notes.txt").unlink()
    target.rmdir()
    cluster = LocalCluster(parse_settings({}), target)
    cluster.up(timeout_s=30)
    cluster.down()
    assert not target.exists()


@pytest.mark.timeout(30)
def test_an_occupied_port_is_refused_naming_its_holder_and_nothing_is_left_running(state_dir: Path) -> None:
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.12", 41415))
    squatter.listen()
    try:
        target = state_dir / "cluster"
        result = run_cli("up", "--state-dir", str(target))
        assert result.returncode == 2
        assert f"127.0.0.12:41415 (node-2 sentinel) is held by pid {os.getpid()}" in result.stderr
        assert "--sentinel-port" in result.stderr
        assert not target.exists()
        with pytest.raises(PortBusyError):
            LocalCluster(parse_settings({}), target).up()
        assert not target.exists()
        squatter.close()
        assert all_ports_free(3)
    finally:
        squatter.close()


@pytest.mark.timeout(60)
def test_ctrl_c_during_up_stops_everything_it_started(state_dir: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "up", "--state-dir", str(state_dir / "cluster")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # As from a terminal: a runner started in the background (CI) passes SIGINT on ignored,
        # and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # Interrupt once `up` says the Redis servers run, i.e. in the middle of the start.
        seen = []
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(line)
            if "redis up on" in line:
                break
        assert seen and "redis up on" in seen[-1], "".join(seen)
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=30)
        stderr = "".join(seen) + rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "interrupted; stopped what this run started" in stderr
    assert all_ports_free(3)
    records = [ProcessRecord.load(p) for p in (state_dir / "cluster").glob("node-*/run/*.pid")]
    assert not any(r and r.alive() for r in records)


@pytest.mark.timeout(60)
def test_down_never_signals_a_process_that_merely_reuses_a_recorded_pid(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster()
    cluster.up(timeout_s=30)
    cluster.kill(0, "haproxy", signal.SIGKILL)
    pid_file = cluster.nodes[0].pid_file("haproxy")
    ours = ProcessRecord.load(pid_file)
    assert ours is not None
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        # Same pid, our recorded start time: as if the pid had been reused (the executable differs).
        pid_file.write_text(ProcessRecord(stranger.pid, ours.create_time, ours.exe, ours.argv).dump())
        assert cluster.pid(0, "haproxy") is None
        # Same pid and the stranger's own start time, our executable: still not ours.
        theirs = ProcessRecord.of(stranger.pid, ["sleep"])
        pid_file.write_text(ProcessRecord(stranger.pid, theirs.create_time, ours.exe, ours.argv).dump())
        assert cluster.pid(0, "haproxy") is None
        cluster.down()
        assert stranger.poll() is None, "down() signalled a process it did not start"
    finally:
        stranger.kill()
        stranger.wait()
    assert all_ports_free(3)
