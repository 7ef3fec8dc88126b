"""The bundle renderer, pure and against the real redis-server, redis-sentinel, haproxy and cloud-init."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
import yaml

from components.aws.cloud_config import (
    PACKAGES,
    POST_START_BOUND_S,
    USER_DATA_LIMIT,
    aws_layout,
    node_files,
    node_user_data,
    render_unit,
    written_files,
)
from components.bundle import (
    GUARD_BACKEND_PREFIX,
    ROUTED_BACKEND,
    SENTINEL_PING_PERIOD_MS,
    NodeLayout,
    NodePlace,
    document,
    guard_backend,
    render_bundle,
    scripts,
    sentinel_id,
)
from components.bundle.render import route_wait_ms
from components.bundle.users import HST, MONITOR, OPERATOR, REPLICATION, ROLES, SENTINEL
from components.settings import parse_settings

# Own loopback range, apart from the local-cluster tests' 127.0.0.11.. hosts.
ADDRESSES = tuple(f"127.0.1.{11 + i}" for i in range(5))
PASSWORDS = {r.key: f"BundleTest{r.key.capitalize()}Password0123" for r in ROLES}
PASSWORD = PASSWORDS[HST.key]
FILES = Path(__file__).resolve().parent.parent / "components" / "bundle" / "files"
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hst-ha-redis-auth-AbCdEf"
TLS_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hst-ha-tls-AbCdEf"


def bundles(n: int, home: Path | None = None, licence: bool = False, **config):
    # Plaintext unless a test asks: these run the boot script, redis-server and HAProxy on the
    # rendered files without certificates. TLS (the default) has its own: tests/test_tls*.py.
    settings = parse_settings({"nodeCount": n, "tlsEnabled": False, **config})
    result = []
    for i in range(n):
        layout = NodeLayout(
            home=str(home / f"node-{i + 1}") if home else f"/srv/node-{i + 1}",
            secrets_command=f"cat {home / 'secrets.json'}" if home else "cat /dev/null",
            haproxy_address=ADDRESSES[i],
            licence_command="cat /dev/null" if licence else None,
        )
        result.append((render_bundle(settings, NodePlace(i, ADDRESSES[:n]), layout), layout))
    return settings, result


def test_replicaof_only_on_initial_replicas():
    _, nodes = bundles(3)
    for i, (bundle, layout) in enumerate(nodes):
        conf = bundle.file(layout.template(layout.redis_conf)).content
        replicaof = [line for line in conf.splitlines() if line.startswith("replicaof ")]
        assert replicaof == ([] if i == 0 else [f"replicaof {ADDRESSES[0]} 31415"])
        assert "masteruser hst-ha-replication\n" in conf and f"masterauth {REPLICATION.placeholder}\n" in conf
        assert "requirepass" not in conf  # the `default` user line is HST Server's password
        assert f"replica-announce-ip {ADDRESSES[i]}" in conf


def test_sentinels_are_seeded_with_the_whole_initial_topology():
    _, nodes = bundles(5)
    ids = set()
    for i, (bundle, layout) in enumerate(nodes):
        lines = bundle.file(layout.template(layout.sentinel_conf)).content.splitlines()
        myid = sentinel_id(ADDRESSES[i], 41415)
        ids.add(myid)
        assert f"sentinel myid {myid}" in lines
        assert "sentinel monitor myprimary 127.0.1.11 31415 3" in lines
        assert sorted(line for line in lines if "known-replica" in line) == sorted(
            f"sentinel known-replica myprimary {a} 31415" for a in ADDRESSES[1:5])
        assert sorted(line for line in lines if "known-sentinel" in line) == sorted(
            f"sentinel known-sentinel myprimary {a} 41415 {sentinel_id(a, 41415)}"
            for a in ADDRESSES[:5] if a != ADDRESSES[i])
    assert len(ids) == 5


def test_haproxy_routes_only_to_a_primary_a_majority_of_sentinels_name():
    _, nodes = bundles(5)
    bundle, layout = nodes[2]
    cfg = bundle.file(layout.template(layout.haproxy_cfg)).content
    assert f"bind {ADDRESSES[2]}:31414" in cfg
    for i in range(5):
        assert (f"use-server node-{i + 1} if {{ srv_is_up(node-{i + 1}) }} "
                f"{{ nbsrv(sentinels_name_node_{i + 1}) ge 3 }}") in cfg
        assert f"server node-{i + 1} {ADDRESSES[i]}:31415 weight 0 on-marked-down shutdown-sessions" in cfg
        # The length prefix makes 10.0.0.1 unable to match a reply that names 10.0.0.10.
        assert f"tcp-check expect string ${len(ADDRESSES[i])}\\r\\n{ADDRESSES[i]}\\r\\n" in cfg
    # The read-only monitoring user: on Redis as its own user, on the Sentinels as their default.
    assert cfg.count("tcp-check send AUTH") == 6
    assert cfg.count(f"tcp-check send AUTH\\ hst-ha-monitor\\ {MONITOR.placeholder}\\r\\n") == 1
    assert cfg.count(f"tcp-check send AUTH\\ default\\ {MONITOR.placeholder}\\r\\n") == 5
    assert "stats socket" in cfg and " level user\n" in cfg and "level admin" not in cfg


def test_the_fence_holds_open_sessions_to_the_same_majority_rule():
    settings, nodes = bundles(5)
    bundle, layout = nodes[1]
    cfg = bundle.file(layout.template(layout.haproxy_cfg)).content
    # The fence's only inputs besides HAProxy's own backends, set before it loads.
    assert (f"    setenv HST_HA_ROUTED_BACKEND {ROUTED_BACKEND}\n"
            f"    setenv HST_HA_GUARD_PREFIX {GUARD_BACKEND_PREFIX}\n"
            f"    setenv HST_HA_ROUTE_WAIT_MS {route_wait_ms(settings)}\n"
            f"    lua-load {layout.haproxy_fence}\n") in cfg
    # A client that connects while nothing is routable waits for a route; the content rule is not cut
    # short before its wait is over.
    assert (f"    tcp-request inspect-delay {route_wait_ms(settings) + 1000}ms\n"
            "    tcp-request content lua.hst_ha_await_route\n") in cfg
    fence = bundle.file(layout.haproxy_fence).content
    # Nothing rendered into it: the same bytes as shipped, on every node of every cluster size.
    assert fence == scripts.shipped("hst-ha-fence.lua")
    assert all(b.file(lay.haproxy_fence).content == fence for b, lay in bundles(3)[1] + nodes)
    for i in range(5):
        # The guard the fence derives for server node-i (prefix + name with '-' made '_'), and its
        # five Sentinels: the fence's majority is 5 // 2 + 1, the use-server rule's.
        backend = cfg.split(f"backend {guard_backend(f'node-{i + 1}')}\n", 1)[1].split("\n\n", 1)[0]
        assert [line.split()[1] for line in backend.splitlines() if line.startswith("    server ")] == [
            f"sentinel-node-{j + 1}" for j in range(5)]
        # The fence acts on these checks' results, so they run every 250 ms whether UP or DOWN;
        # two failed checks in a row, not one slow one on a loaded node, take a guard down.
        assert "    default-server inter 250ms fall 2\n" in backend
    assert guard_backend("node-3") == "sentinels_name_node_3"
    assert 'string.gsub(name, "%-", "_")' in fence and "math.floor(sentinels / 2) + 1" in fence
    assert "shut_sess()" in fence and bundle.file(layout.haproxy_fence).mode == 0o644
    # A held server (a primary that fell, while another node says role:master) gets no new session.
    for i in range(5):
        assert (f"use-server node-{i + 1} if {{ srv_is_up(node-{i + 1}) }} "
                f"{{ nbsrv(sentinels_name_node_{i + 1}) ge 3 }} "
                f"{{ lua.hst_ha_held(node-{i + 1}) -m str 0 }}\n") in cfg
    assert 'core.register_fetches("hst_ha_held"' in fence


def test_scripts_are_shipped_as_they_are_and_only_the_data_file_differs():
    _, nodes = bundles(3, hstInstallerUrl="s3://bucket/hsts.deb", hstLicenseSecretArn=SECRET_ARN,
                       hstRedisPasswordSetting="db_password",
                       hstInstallerSha256="2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
                       licence=True)
    differing = set()
    for bundle, layout in nodes:
        for path, name in [(layout.boot_script, "hst-ha-boot.sh"), (layout.secret_script, "hst-ha-secret.sh"),
                           (layout.sentinel_timers_script, "hst-ha-sentinel-timers.sh"),
                           (layout.hsts_script, "hst-ha-hsts.sh"), (layout.haproxy_fence, "hst-ha-fence.lua")]:
            assert bundle.file(path).content == scripts.shipped(name), path
        env = bundle.file(layout.node_env)
        assert env.mode == 0o644 and "SECRET_ROLES='hst replication sentinel monitor operator'" in env.content
        assert not any(p in env.content for p in PASSWORDS.values())
        differing.add(env.content)
        # Every value the scripts read is in the node's data file: sourced, they see no unset variable.
        for name in ("hst-ha-boot.sh", "hst-ha-secret.sh", "hst-ha-sentinel-timers.sh", "hst-ha-hsts.sh"):
            missing = _unset_variables(scripts.shipped(name), env.content)
            assert not missing, f"{name} reads {missing}, which node.env does not set"
    assert len(differing) == 3


@pytest.mark.parametrize("name", scripts.SHIPPED)
def test_a_node_gets_the_file_as_written_with_its_comments(name):
    assert scripts.shipped(name) == (FILES / name).read_text()


def _unset_variables(script: str, env: str) -> set[str]:
    """Upper-case variables a script expands that neither the data file nor the script itself sets."""
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", code))
    assigned = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", env, re.MULTILINE))
    assigned |= set(re.findall(r"(?:^|[\s;(])(?:export |local )?([A-Z][A-Z0-9_]*)=", script, re.MULTILINE))
    assigned |= set(re.findall(r"(?:read -r -a|mapfile -t) ([A-Z][A-Z0-9_]*)", script))
    return used - assigned - {"SECONDS"}


@pytest.mark.parametrize(("down_after_ms", "check_ms"), [(5000, 1000), (2500, 1000), (1000, 400), (100, 100)])
def test_haproxy_sees_a_frozen_primary_fall_before_sentinel_can_promote(down_after_ms: int, check_ms: int):
    _, nodes = bundles(3, downAfterMs=down_after_ms, failoverTimeoutMs=15000)
    bundle, layout = nodes[0]
    cfg = bundle.file(layout.template(layout.haproxy_cfg)).content
    backend = cfg.split("backend redis_primary\n", 1)[1].split("\n\n", 1)[0]
    assert f"    timeout check {check_ms}ms\n" in backend
    servers = [line for line in backend.splitlines() if line.startswith("    server ")]
    assert len(servers) == 3 and all(f" inter {check_ms}ms rise 2" in line for line in servers)
    # Check interval plus timeout: the longest a freeze goes unnoticed, inside downAfterMs.
    assert 2 * check_ms <= max(0.8 * down_after_ms, 200)


def test_the_sentinel_unit_sets_the_ping_period_after_every_start():
    settings = parse_settings({})
    layout = aws_layout(SECRET_ARN, "eu-west-1", tls_secret_arn=TLS_ARN)
    bundle = render_bundle(settings, NodePlace(0, ADDRESSES[:3]), layout)
    sentinel = next(s for s in bundle.start_steps if s.name == "sentinel")
    assert sentinel.post_start == (layout.sentinel_timers_script,)
    unit = render_unit(bundle, sentinel)
    assert f"ExecStartPost=-/usr/bin/timeout {POST_START_BOUND_S} {layout.sentinel_timers_script}\n" in unit
    # A post-start step still running at the start timeout would fail the unit and kill Sentinel.
    start_timeout = int(unit.split("TimeoutStartSec=", 1)[1].split()[0])
    assert start_timeout > POST_START_BOUND_S
    assert all(s.post_start is None for s in bundle.start_steps if s.name != "sentinel")
    assert "ExecStartPost" not in render_unit(bundle, next(s for s in bundle.start_steps if s.name == "redis"))


def test_node_place_rejects_a_bad_index_or_duplicate_addresses():
    with pytest.raises(ValueError, match="outside the cluster"):
        NodePlace(3, ADDRESSES[:3])
    with pytest.raises(ValueError, match="distinct"):
        NodePlace(0, ("127.0.0.1", "127.0.0.1", "127.0.0.2"))


def test_bundle_has_no_password_and_starts_in_order():
    _, nodes = bundles(3)
    bundle, _ = nodes[1]
    assert [s.name for s in bundle.start_steps] == ["prepare", "redis", "sentinel", "haproxy"]
    assert all(p not in f.content for f in bundle.files for p in PASSWORDS.values())
    assert [s.name for s in bundle.start_steps if s.prepares] == ["prepare"]


def test_a_baked_ami_user_data_runs_no_apt_and_passes_cloud_init_schema(tmp_path):
    settings = parse_settings({"nodeCount": 3})
    addresses = ("10.42.0.10", "10.42.1.10", "10.42.2.10")
    layout = aws_layout(SECRET_ARN, "eu-west-1", tls_secret_arn=TLS_ARN)
    def user_data(install_packages: bool) -> dict:
        return yaml.safe_load(node_user_data(
            settings, NodePlace(0, addresses), layout, parameter="/o/p/s/cluster-document", region="eu-west-1",
            code_url="s3://bucket/code/0.tar.gz", install_packages=install_packages))

    baked, stock = user_data(False), user_data(True)
    assert not [k for k in baked if k.startswith(("package", "apt"))]
    assert stock["packages"] == list(PACKAGES) and stock["package_update"] is True
    assert {k: v for k, v in stock.items() if not k.startswith("package")} == baked  # nothing else differs
    path = tmp_path / "baked.yaml"
    path.write_text("#cloud-config\n" + yaml.safe_dump(baked))
    result = subprocess.run(["cloud-init", "schema", "-c", str(path)], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("n", [3, 5, 15])
def test_user_data_passes_cloud_init_schema_and_fits_ec2(tmp_path, n):
    settings = parse_settings({"nodeCount": n})
    addresses = tuple(f"10.42.{i % 3}.{10 + i // 3}" for i in range(n))
    layout = aws_layout(SECRET_ARN, "eu-west-1", tls_secret_arn=TLS_ARN)
    for i in sorted({0, 1, n - 1}):
        text = node_user_data(settings, NodePlace(i, addresses), layout, parameter="/o/p/s/cluster-document",
                              region="eu-west-1", code_url="s3://bucket/code/0123.tar.gz")
        assert len(text.encode()) <= USER_DATA_LIMIT  # as text: nothing gzipped
        path = tmp_path / f"node-{i}.yaml"
        path.write_text(text)
        result = subprocess.run(["cloud-init", "schema", "-c", str(path)], check=False, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Valid schema" in result.stdout or "Valid cloud-config" in result.stdout
        assert not [p for p in written_files(text) if "/templates/" in p or p.endswith("node.env")]
        files = node_files(text, document.dump(document.build(settings, addresses)))
        assert "/etc/systemd/system/hst-ha-redis.service" in files
        prepare = files["/etc/systemd/system/hst-ha-prepare.service"]
        for line in ("Type=oneshot", "RemainAfterExit=yes", "Restart=on-failure", "StartLimitBurst=20",
                     "ExecStart=/opt/hst-ha/bin/hst-ha-boot", "WantedBy=multi-user.target"):
            assert line + "\n" in prepare
        # A failed run fails the daemons' queued start jobs: a run that succeeds starts them again.
        assert "ExecStartPost=/bin/systemctl --no-block start hst-ha-redis hst-ha-sentinel hst-ha-haproxy\n" in prepare
        for daemon in ("redis", "sentinel", "haproxy"):
            unit = files[f"/etc/systemd/system/hst-ha-{daemon}.service"]
            assert "Requires=hst-ha-prepare.service\n" in unit
            assert "After=network-online.target hst-ha-prepare.service\n" in unit
        # The boot script no longer runs from runcmd (once per instance): the unit runs it at every boot.
        runcmd = yaml.safe_load(text)["runcmd"]
        assert ["/opt/hst-ha/bin/hst-ha-boot"] not in runcmd
        assert ["systemctl", "enable", "hst-ha-prepare.service"] in runcmd
        assert f"bind {addresses[i]}" in files["/opt/hst-ha/etc/templates/redis.conf"]


@pytest.fixture
def rendered(tmp_path):
    """Three nodes' bundles written to disk and prepared by their own boot scripts."""
    (tmp_path / "secrets.json").write_text(json.dumps(PASSWORDS))
    settings, nodes = bundles(3, tmp_path)
    for bundle, _ in nodes:
        for f in bundle.files:
            Path(f.path).parent.mkdir(parents=True, exist_ok=True)
            Path(f.path).write_text(f.content)
            os.chmod(f.path, f.mode)
        prepare = subprocess.run(bundle.start_steps[0].argv, check=False, capture_output=True, text=True, timeout=60)
        assert prepare.returncode == 0, prepare.stderr
    return settings, nodes


def test_boot_script_fills_the_password_once_and_never_again(rendered):
    _, nodes = rendered
    bundle, layout = nodes[1]
    conf = Path(layout.redis_conf)
    assert f"user default reset on >{PASSWORD} " in conf.read_text()
    assert f"masterauth {PASSWORDS[REPLICATION.key]}\n" in conf.read_text()
    sentinel = Path(layout.sentinel_conf).read_text()
    assert f"sentinel sentinel-pass {PASSWORDS[SENTINEL.key]}\n" in sentinel
    assert f"sentinel auth-pass myprimary {PASSWORDS[SENTINEL.key]}\n" in sentinel
    assert f"user default reset on >{PASSWORDS[MONITOR.key]} " in sentinel
    for path in (layout.redis_conf, layout.sentinel_conf, layout.haproxy_cfg):
        assert "@@" not in Path(path).read_text(), path
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    conf.write_text(conf.read_text() + "# rewritten by Sentinel\n")
    again = subprocess.run(bundle.start_steps[0].argv, check=False, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "leaving it as it is" in again.stderr
    assert conf.read_text().endswith("# rewritten by Sentinel\n")


@pytest.mark.parametrize(("document", "why"), [
    ({**PASSWORDS, "replication": "has space & amp"}, "password of role replication"),
    ({k: v for k, v in PASSWORDS.items() if k != "operator"}, "password of role operator is missing"),
    ("has space & amp", "not JSON"),
])
def test_boot_script_refuses_a_password_it_cannot_quote(tmp_path, document, why):
    (tmp_path / "secrets.json").write_text(document if isinstance(document, str) else json.dumps(document))
    _, nodes = bundles(3, tmp_path)
    bundle, _ = nodes[0]
    for f in bundle.files:
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        Path(f.path).write_text(f.content)
        os.chmod(f.path, f.mode)
    result = subprocess.run(bundle.start_steps[0].argv, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "regenerate the secret" in result.stderr and why in result.stderr
    assert "has space" not in result.stderr and not any(p in result.stderr for p in PASSWORDS.values())
    assert not Path(nodes[0][1].redis_conf).exists()


def test_haproxy_accepts_every_rendered_config(rendered):
    _, nodes = rendered
    for _, layout in nodes:
        result = subprocess.run(["haproxy", "-c", "-f", layout.haproxy_cfg], check=False, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def start(argv, address: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    assert process.stderr is not None
    client = redis.Redis(address, port, username=OPERATOR.redis_user, password=PASSWORDS[OPERATOR.key],
                         socket_timeout=1)
    for _ in range(100):
        if process.poll() is not None:
            raise AssertionError(f"{argv[0]} refused its config: {process.stderr.read().decode()}")
        try:
            if client.ping():
                return process
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{argv[0]} did not answer on {address}:{port}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def test_redis_and_sentinel_accept_the_rendered_configs(rendered):
    settings, nodes = rendered
    bundle, _ = nodes[1]
    redis_step, sentinel_step = bundle.start_steps[1], bundle.start_steps[2]
    server = start(redis_step.argv, ADDRESSES[1], 31415)
    try:
        sentinel = start(sentinel_step.argv, ADDRESSES[1], 41415)
        try:
            client = redis.Redis(ADDRESSES[1], 31415, username=OPERATOR.redis_user, password=PASSWORDS[OPERATOR.key],
                                 decode_responses=True)
            assert client.config_get("min-replicas-to-write") == {"min-replicas-to-write": "1"}
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("replicaof")["replicaof"] == f"{ADDRESSES[0]} 31415"
            with pytest.raises(redis.exceptions.AuthenticationError):
                redis.Redis(ADDRESSES[1], 31415, password="wrong-password").ping()
            # A client that sends only a password (redis-py's Sentinel client) reads as the monitoring user.
            watcher = redis.Redis(ADDRESSES[1], 41415, password=PASSWORDS[MONITOR.key], decode_responses=True)
            master = watcher.sentinel_master("myprimary")
            assert isinstance(master, dict), master
            assert master["ip"] == ADDRESSES[0] and master["quorum"] == 2
            assert master["down-after-milliseconds"] == settings.down_after_ms
            assert {r["ip"] for r in watcher.sentinel_slaves("myprimary")} == {ADDRESSES[1], ADDRESSES[2]}
            sentinels = watcher.sentinel_sentinels("myprimary")
            assert isinstance(sentinels, list), sentinels
            assert {s["ip"] for s in sentinels} == {ADDRESSES[0], ADDRESSES[2]}
            with pytest.raises(redis.exceptions.AuthenticationError):
                redis.Redis(ADDRESSES[1], 41415).ping()
            # Sentinel keeps its ping period in memory only: the step after every start sets it.
            operator = redis.Redis(ADDRESSES[1], 41415, username=OPERATOR.sentinel_user,
                                   password=PASSWORDS[OPERATOR.key], decode_responses=True)
            assert operator.execute_command("SENTINEL", "DEBUG")["PING-PERIOD"] == "1000"
            timers = subprocess.run(sentinel_step.post_start, check=False, capture_output=True, text=True, timeout=60)
            assert timers.returncode == 0, timers.stderr
            assert operator.execute_command("SENTINEL", "DEBUG")["PING-PERIOD"] == str(SENTINEL_PING_PERIOD_MS)
            assert not any(p in timers.stdout + timers.stderr for p in PASSWORDS.values())
        finally:
            stop(sentinel)
    finally:
        stop(server)


def test_the_sentinel_timers_step_says_why_when_sentinel_does_not_answer(rendered):
    _, nodes = rendered
    bundle, _ = nodes[2]
    script = bundle.start_steps[2].post_start
    result = subprocess.run(script, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "did not take ping-period" in result.stderr and "pings every 1 s" in result.stderr
    assert PASSWORD not in result.stderr


def _as(role, port: int, address: str = ADDRESSES[1]) -> redis.Redis:
    user = role.sentinel_user if port == 41415 else role.redis_user
    return redis.Redis(address, port, username=user, password=PASSWORDS[role.key], decode_responses=True,
                       socket_timeout=2)


def test_each_role_may_do_only_what_it_needs(rendered):
    """HST Server's user cannot reconfigure, stop, wipe, re-home Redis or forge Sentinel topology; the
    monitoring user cannot write; a password-only client of a Sentinel cannot fail it over."""
    _, nodes = rendered
    bundle, _ = nodes[1]
    server = start(bundle.start_steps[1].argv, ADDRESSES[1], 31415)
    try:
        sentinel = start(bundle.start_steps[2].argv, ADDRESSES[1], 41415)
        try:
            # HST Server sends only AUTH <password>: the default user.
            hst = redis.Redis(ADDRESSES[1], 31415, password=PASSWORD, decode_responses=True, socket_timeout=2)
            assert hst.info("replication")["role"] == "slave"
            for command in (("CONFIG", "SET", "maxmemory", "1"), ("SHUTDOWN", "NOSAVE"), ("FLUSHALL",),
                            ("REPLICAOF", "203.0.113.9", "443"), ("PUBLISH", "__sentinel__:hello", "forged"),
                            ("CLIENT", "KILL", "ID", "1"), ("ACL", "SETUSER", "x", "on"),
                            ("MIGRATE", "203.0.113.9", "443", "k", "0", "1")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    hst.execute_command(*command)
            monitor = _as(MONITOR, 31415)
            assert monitor.ping() and monitor.info("replication")["role"] == "slave"
            assert monitor.execute_command("ROLE")[0] == "slave"
            for command in (("SET", "k", "v"), ("GET", "k"), ("CONFIG", "GET", "*"),
                            ("SUBSCRIBE", "__sentinel__:hello")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    monitor.execute_command(*command)
            replication = _as(REPLICATION, 31415)
            with pytest.raises(redis.exceptions.NoPermissionError):
                replication.execute_command("GET", "k")
            with pytest.raises(redis.exceptions.NoPermissionError):
                _as(SENTINEL, 31415).execute_command("PUBLISH", "other-channel", "x")
            # Sentinel: password-only clients read; only operators change anything.
            reader = redis.Redis(ADDRESSES[1], 41415, password=PASSWORDS[MONITOR.key], decode_responses=True,
                                 socket_timeout=2)
            assert reader.sentinel_get_master_addr_by_name("myprimary") == (ADDRESSES[0], 31415)
            for sentinel_command in (("SENTINEL", "FAILOVER", "myprimary"), ("SENTINEL", "REMOVE", "myprimary"),
                                     ("SENTINEL", "SET", "myprimary", "quorum", "1"),
                                     ("PUBLISH", "__sentinel__:hello", "forged"),
                                     ("SENTINEL", "CONFIG", "SET", "announce-ip", "203.0.113.9")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    reader.execute_command(*sentinel_command)
            with pytest.raises(redis.exceptions.AuthenticationError):
                # HST has no Sentinel access
                redis.Redis(ADDRESSES[1], 41415, password=PASSWORD, socket_timeout=2).ping()
            peer = _as(SENTINEL, 41415)
            with pytest.raises(redis.exceptions.NoPermissionError):
                peer.execute_command("SENTINEL", "FAILOVER", "myprimary")
            assert _as(OPERATOR, 41415).execute_command("SENTINEL", "CKQUORUM", "myprimary") is not None
        finally:
            stop(sentinel)
    finally:
        stop(server)


class _Answering:
    """A stand-in Sentinel on (address, port) that answers every command with `reply`."""

    def __init__(self, address: str, port: int, reply: bytes) -> None:
        self.server = socket.create_server((address, port))
        self.server.settimeout(0.1)  # accept() must notice close(): a blocked accept keeps the port bound
        self.reply = reply
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    while conn.recv(4096):
                        conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()


@pytest.mark.parametrize("reply", [b"-NOAUTH Authentication required.\r\n",
                                   b"-WRONGPASS invalid username-password pair\r\n"])
def test_boot_script_never_writes_an_error_answer_into_replicaof(tmp_path, reply):
    """Issue 13 (6): a Sentinel answering NOAUTH was taken as the primary's address (`replicaof NOAUTH 31415`)."""
    (tmp_path / "secrets.json").write_text(json.dumps(PASSWORDS))
    _, nodes = bundles(3, tmp_path)
    bundle, layout = nodes[1]
    for f in bundle.files:
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        Path(f.path).write_text(f.content)
        os.chmod(f.path, f.mode)
    fakes = [_Answering(ADDRESSES[0], 41415, reply), _Answering(ADDRESSES[2], 41415, reply)]
    try:
        result = subprocess.run(bundle.start_steps[0].argv, check=False, capture_output=True, text=True, timeout=60)
    finally:
        for fake in fakes:
            fake.close()
    assert result.returncode == 1
    word = reply[1:].split()[0].decode()
    assert f"answered '{word}" in result.stderr
    assert "not an address" in result.stderr and "not guessing" in result.stderr
    assert not Path(layout.redis_conf).exists()  # nothing written: the unit retries at the next start


def test_boot_script_survives_a_silent_last_peer(tmp_path):
    """Issue 13 (6): an empty answer from the last peer ended the script silently under `set -e`."""
    (tmp_path / "secrets.json").write_text(json.dumps(PASSWORDS))
    _, nodes = bundles(3, tmp_path)
    bundle, layout = nodes[1]
    for f in bundle.files:
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        Path(f.path).write_text(f.content)
        os.chmod(f.path, f.mode)
    # node-1's Sentinel names the initial primary, node-3's answers a null (no such master).
    named = f"*2\r\n${len(ADDRESSES[0])}\r\n{ADDRESSES[0]}\r\n$5\r\n31415\r\n".encode()
    fakes = [_Answering(ADDRESSES[0], 41415, named),
             _Answering(ADDRESSES[2], 41415, b"*-1\r\n")]
    try:
        result = subprocess.run(bundle.start_steps[0].argv, check=False, capture_output=True, text=True, timeout=60)
    finally:
        for fake in fakes:
            fake.close()
    assert result.returncode == 0, result.stderr
    assert f"current primary: {ADDRESSES[0]}" in result.stderr
    assert f"replicaof {ADDRESSES[0]} 31415" in Path(layout.redis_conf).read_text()
