"""The Redis start gate (components/bundle/files/hst-ha-redis-start-gate.sh): what it decides from
what the Sentinels say, against scripted Sentinels, and how both targets run it before every start.

The Sentinels here are a few lines of RESP on 127.0.2.x (apart from the live tests' hosts), each
answering `SENTINEL MASTER` with what a test scripts; the gate itself is the shipped script, run as
the supervisor runs it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest

from components.aws.cloud_config import GATED_RESTART_S, aws_layout, render_unit
from components.bundle import NodeLayout, NodePlace, render_bundle, scripts
from components.bundle.render import LONGEST_DOWN_AFTER_MS, node_settings, start_gate_wait_s
from components.bundle.users import ROLE_KEYS
from components.settings import SettingsError, parse_settings

ADDRESSES = ("127.0.2.11", "127.0.2.12", "127.0.2.13")
SELF = f"{ADDRESSES[0]}:31415"
OTHER = f"{ADDRESSES[1]}:31415"
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hst-ha-redis-auth-AbCdEf"


def _bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


MONITOR_PASSWORD = "MonitorGatePassword0123456789"


class FakeSentinel:
    """Answers AUTH with +OK and SENTINEL MASTER with `view` (primary "host:port", flags, ms since
    the last good ping), or closes the connection when `view` is None."""

    def __init__(self, address: str, port: int) -> None:
        self.view: tuple[str, str, int] | None = None
        self.answered = threading.Event()  # a view was served at least once
        self.server = socket.create_server((address, port))
        self.server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(1.0)
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buffer += chunk
            while b"\r\n" in buffer:
                command, buffer = _parse(buffer)
                if command is None:
                    break
                if command[0].upper() == "AUTH":
                    # Sentinel's read-only queries belong to the monitoring role (its default user).
                    if command[-1] != MONITOR_PASSWORD:
                        conn.sendall(b"-WRONGPASS invalid username-password pair\r\n")
                        return
                    conn.sendall(b"+OK\r\n")
                elif self.view is None:
                    return
                else:
                    primary, flags, silent_ms = self.view
                    host, port = primary.rsplit(":", 1)
                    fields = ["name", "myprimary", "ip", host, "port", port, "flags", flags,
                              "last-ok-ping-reply", str(silent_ms)]
                    conn.sendall(b"*%d\r\n" % len(fields) + b"".join(_bulk(f) for f in fields))
                    self.answered.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.server.close()


def _parse(buffer: bytes) -> tuple[list[str] | None, bytes]:
    """One RESP array of bulk strings from the front of `buffer`, or None if it is not all in."""
    lines = buffer.split(b"\r\n")
    if not lines[0].startswith(b"*"):
        return [lines[0].decode()], b"\r\n".join(lines[1:])
    count = int(lines[0][1:])
    if len(lines) < 1 + 2 * count + 1:
        return None, buffer
    words = [lines[2 + 2 * i].decode() for i in range(count)]
    return words, b"\r\n".join(lines[1 + 2 * count:])


@pytest.fixture
def node(tmp_path):
    """Node-1's bin/, etc/node.env and data/redis.conf, and three scripted Sentinels."""
    if not shutil.which("redis-cli"):
        pytest.skip("needs redis-cli")
    with socket.socket() as probe:  # one free port for all three addresses
        probe.bind((ADDRESSES[0], 0))
        port = probe.getsockname()[1]
    try:
        sentinels = [FakeSentinel(a, port) for a in ADDRESSES]
    except OSError as exc:
        pytest.skip(f"cannot listen on {ADDRESSES}: {exc}")
    secret = tmp_path / "redis-users.json"
    secret.write_text(json.dumps({key: f"{key.capitalize()}GatePassword0123456789" for key in ROLE_KEYS}))
    layout = NodeLayout(home=str(tmp_path), secrets_command=f"cat {secret}")
    # Plaintext: the fake Sentinels speak no TLS (the gate over TLS: tests/test_tls_live.py).
    bundle = render_bundle(parse_settings({"downAfterMs": 1000, "tlsEnabled": False}), NodePlace(0, ADDRESSES), layout)
    # The gate, the one script it reads passwords through, and the modules that script runs, as shipped.
    shipped = [f for f in bundle.files if f.path.startswith(f"{layout.home}/components/")]
    for f in (bundle.file(layout.redis_start_gate), bundle.file(layout.secret_script), *shipped):
        script = Path(f.path)
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(f.content)
        script.chmod(f.mode)
    env = bundle.file(layout.node_env).content.replace("SENTINEL_PORT=41415", f"SENTINEL_PORT={port}")
    env = env.replace("START_GATE_WAIT_S=16", "START_GATE_WAIT_S=2")
    env = env.replace("START_GATE_COLD_WAIT_S=5", "START_GATE_COLD_WAIT_S=1")
    Path(layout.node_env).parent.mkdir(parents=True)
    Path(layout.node_env).write_text(env)
    Path(layout.data).mkdir()
    Path(layout.redis_conf).write_text("port 31415\n")
    yield layout, sentinels
    for sentinel in sentinels:
        sentinel.close()


def run_gate(layout: NodeLayout) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([layout.redis_start_gate], check=False, capture_output=True, text=True, timeout=30)
    return done.returncode, done.stderr, time.monotonic() - started


def replicaof(layout: NodeLayout) -> list[str]:
    lines = Path(layout.redis_conf).read_text().splitlines()
    return [line for line in lines if line.startswith(("replicaof", "slaveof"))]


def test_a_former_primary_the_majority_no_longer_names_starts_as_the_new_primarys_replica(node):
    layout, sentinels = node
    for s in sentinels:
        s.view = (OTHER, "master", 100)
    code, log, _ = run_gate(layout)
    assert code == 0, log
    assert replicaof(layout) == [f"replicaof {ADDRESSES[1]} 31415"], log
    assert f"starting as replica of {OTHER} (the file said master)" in log
    assert "GatePassword" not in log


def test_a_replica_following_a_primary_the_majority_does_not_name_is_pointed_at_the_named_one(node):
    layout, sentinels = node
    Path(layout.redis_conf).write_text(Path(layout.redis_conf).read_text() + f"replicaof {ADDRESSES[2]} 31415\n")
    sentinels[0].view = (f"{ADDRESSES[2]}:31415", "master", 10)  # one stale Sentinel is no majority
    for s in sentinels[1:]:
        s.view = (OTHER, "master", 10)
    code, log, _ = run_gate(layout)
    assert code == 0 and replicaof(layout) == [f"replicaof {ADDRESSES[1]} 31415"], log


def test_the_primary_the_majority_names_starts_as_master_at_once(node):
    layout, sentinels = node
    Path(layout.redis_conf).write_text(Path(layout.redis_conf).read_text() + f"replicaof {ADDRESSES[1]} 31415\n")
    for s in sentinels:
        s.view = (SELF, "master", 100)
    code, log, _ = run_gate(layout)
    assert code == 0 and replicaof(layout) == [] and "starting as master" in log, log


def test_a_failover_under_way_is_waited_for_and_a_master_nobody_names_is_never_started(node):
    layout, sentinels = node
    for s in sentinels:
        s.view = (SELF, "master,s_down,o_down,failover_in_progress", 3000)
    code, log, _ = run_gate(layout)
    assert code == 1 and "refusing to start a master" in log and "failover is under way" in log, log
    assert "after 2s" in log  # it waited START_GATE_WAIT_S
    assert replicaof(layout) == []


def test_a_primary_named_by_every_sentinel_that_answers_starts_once_nobody_failed_it_over(node):
    layout, sentinels = node
    sentinels[1].view = (SELF, "master,s_down", 9000)  # the only Sentinel left: too few to fail over
    code, log, _ = run_gate(layout)
    assert code == 0 and "no majority" in log and "and no failover: starting as master" in log, log
    assert replicaof(layout) == []


def test_a_named_primary_silent_for_half_of_down_after_waits_for_its_fate(node):
    layout, sentinels = node
    for s in sentinels:
        s.view = (SELF, "master", 700)  # downAfterMs 1000: a failover may begin while Redis starts

    def failover() -> None:
        # Once every Sentinel has shown the gate the silent primary (not after a fixed delay: on a loaded
        # machine the gate's first question may come later than any delay chosen here).
        for s in sentinels:
            s.answered.wait(20.0)
        time.sleep(0.3)
        for s in sentinels:
            s.view = (OTHER, "master", 0)

    threading.Thread(target=failover, daemon=True).start()
    code, log, _ = run_gate(layout)
    assert code == 0 and "has missed it for 700 ms" in log and "waiting" in log, log
    assert replicaof(layout) == [f"replicaof {ADDRESSES[1]} 31415"], log


def test_a_named_primary_silent_only_because_this_boot_rendered_it_starts_at_once(node):
    # Nodes booting seconds apart: the others' Sentinels missed the initial primary because it never ran.
    layout, sentinels = node
    for s in sentinels:
        s.view = (SELF, "master", 700)
    Path(layout.data, ".first-start").touch()
    code, log, _ = run_gate(layout)
    assert code == 0 and "as primary: starting as master" in log and "waiting" not in log, log
    assert replicaof(layout) == []


def test_without_any_sentinel_it_waits_then_starts_from_the_file_unless_this_boot_rendered_it(node):
    layout, _ = node
    Path(layout.data, ".first-start").touch()
    code, log, _ = run_gate(layout)
    assert code == 0 and "rendered by this boot" in log and "waiting" not in log, log
    assert not Path(layout.data, ".first-start").exists()
    code, log, _ = run_gate(layout)
    assert code == 0 and "cold start" in log and "for 1s" in log, log


def test_both_targets_run_the_gate_before_every_redis_start():
    settings = parse_settings({})
    layout = aws_layout(SECRET_ARN, "eu-west-1", tls_secret_arn=SECRET_ARN + "-tls")
    bundle = render_bundle(settings, NodePlace(1, ADDRESSES), layout)
    redis_step = next(s for s in bundle.start_steps if s.name == "redis")
    assert redis_step.pre_start == (layout.redis_start_gate,)
    assert bundle.file(layout.redis_start_gate).content == scripts.shipped(scripts.REDIS_START_GATE)
    unit = render_unit(bundle, redis_step)
    assert f"ExecStartPre={layout.redis_start_gate}\n" in unit  # no "-": a refusal stops the start
    timeout = int(unit.split("TimeoutStartSec=")[1].split()[0])
    # Above the gate's own bound at the longest timings the settings accept, whatever the document says.
    longest = parse_settings({"downAfterMs": LONGEST_DOWN_AFTER_MS - 1, "failoverTimeoutMs": LONGEST_DOWN_AFTER_MS})
    assert timeout > start_gate_wait_s(node_settings(longest, ADDRESSES)) + 10
    assert "StartLimitIntervalSec=0" in unit and "Restart=always" in unit
    # A crashed primary restarted by systemd must reach the gate well inside half of the default
    # down-after, or every crash costs a failover (the gate waits for it): about 0.5 s of overhead
    # was measured on the node target past RestartSec.
    assert f"\nRestartSec={GATED_RESTART_S}\n" in unit
    assert settings.down_after_ms / 2 >= GATED_RESTART_S * 1000 + 1000
    assert all(s.pre_start is None for s in bundle.start_steps if s.name != "redis")
    env = bundle.file(layout.node_env).content
    assert f"SELF={ADDRESSES[1]}\n" in env and f"PEERS='{ADDRESSES[0]} {ADDRESSES[2]}'\n" in env


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="needs shellcheck")
def test_the_gate_passes_shellcheck(tmp_path):
    script = tmp_path / "gate.sh"
    script.write_text(scripts.shipped(scripts.REDIS_START_GATE))
    result = subprocess.run(["shellcheck", str(script)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_min_replicas_to_write_zero_needs_the_loss_accepted_by_name():
    with pytest.raises(SettingsError) as error:
        parse_settings({"minReplicasToWrite": 0})
    assert "acceptWriteLossOnFailover" in str(error.value) and "minReplicasToWrite" in str(error.value)
    with pytest.warns(UserWarning, match="lost at the next failover"):
        settings = parse_settings({"minReplicasToWrite": 0, "acceptWriteLossOnFailover": "true"})
    assert settings.min_replicas_to_write == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_settings({}).min_replicas_to_write == 1  # the default warns about nothing
