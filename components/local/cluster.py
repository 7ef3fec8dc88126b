"""The local target: the very node bundles the AWS target renders, run as real processes on loopback.

Node i lives on the loopback "host" 127.0.0.(11+i) with the real ports, its files under
`<state dir>/node-<i+1>`. Only three things differ from AWS: the addresses, the node's home, and
how the boot script fetches the password (`cat` of a 0600 file instead of Secrets Manager).
The start steps are the bundle's own: `prepare` (the boot script) runs to completion, then each
daemon runs as a child process in its own session, with its pid recorded in `<home>/run/<step>.pid`.

Nothing here touches a process it did not start: a pid is signalled only while `/proc` still shows
the process we recorded (same start time, same program), never a stranger that reused the pid.

Pure Python, no Pulumi: `scripts/local_cluster.py` is a thin CLI over `LocalCluster`, and the
tests, drills and benchmarks use the class directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import redis

from components.bundle import (
    PASSWORD_CHARACTERS, Bundle, NodeLayout, NodePlace, StartStep, guard_backend, node_name, render_bundle,
)
from components.runtime.quorum import QuorumReport, one_shot_client, server_info, verify_quorum
from components.settings import ClusterSettings, TokenSettings

__all__ = [
    "DAEMONS", "DEFAULT_BASE_ADDRESS", "LOCAL_MAX_NODES", "LocalCluster", "LocalClusterError",
    "PortBusyError", "ProcessRecord", "local_addresses",
]

LOCAL_MAX_NODES = 7
DEFAULT_BASE_ADDRESS = "127.0.0.11"
DAEMONS = ("redis", "sentinel", "haproxy")  # the bundle's daemon steps, in start order
STATE_FILE = "cluster.json"
PASSWORD_FILE = "secrets/redis-auth"
PASSWORD_LENGTH = 40
READY_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0

Progress = Callable[[str], None]


class LocalClusterError(RuntimeError):
    """The local cluster cannot do what was asked; the message says why and what to do."""


class PortBusyError(LocalClusterError):
    """A port the cluster needs is held by a program this cluster did not start."""


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a live pid, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; fields resume after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _proc_exe(pid: int) -> str:
    """The executable a pid runs. Not its command line: Redis rewrites its own title
    ("redis-sentinel 127.0.0.11:41415 [sentinel]"), and a read during the rewrite sees garbage."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


@dataclass(frozen=True)
class ProcessRecord:
    """A process we started: pid plus the start time that tells it apart from a later reuse of the pid."""

    pid: int
    start_ticks: int
    exe: str
    argv: tuple[str, ...]

    @classmethod
    def of(cls, pid: int, argv: Iterable[str]) -> ProcessRecord:
        # Popen returns after the exec succeeded, so /proc already shows the new program.
        stat, exe = _proc_stat(pid), _proc_exe(pid)
        if stat is None or not exe:
            raise LocalClusterError(f"process {pid} ({' '.join(argv)}) vanished right after it started")
        return cls(pid, stat[1], exe, tuple(argv))

    def alive(self) -> bool:
        """Still running and still ours: same start time and executable; a zombie counts as gone."""
        stat = _proc_stat(self.pid)
        if stat is None or stat[0] in ("Z", "X") or stat[1] != self.start_ticks:
            return False
        return _proc_exe(self.pid) == self.exe

    def dump(self) -> str:
        # The first line alone is a conventional pid file (`kill $(head -1 redis.pid)`).
        extra = {"start_ticks": self.start_ticks, "exe": self.exe, "argv": list(self.argv)}
        return f"{self.pid}\n{json.dumps(extra)}\n"

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            first, second = path.read_text().splitlines()[:2]
            extra = json.loads(second)
            return cls(int(first), int(extra["start_ticks"]), str(extra["exe"]), tuple(extra["argv"]))
        except (OSError, ValueError, KeyError):
            return None


# --------------------------------------------------------------------------- ports


def _port_is_free(address: str, port: int) -> bool:
    """Bind as the daemons do (SO_REUSEADDR): fails only while something listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise LocalClusterError(f"cannot bind {address}:{port}: {exc.strerror}") from None
    return True


def _listening_inodes(address: str, port: int) -> set[str]:
    """Socket inodes listening on address:port or on a wildcard address, from /proc/net/tcp{,6}."""
    wildcard = {"00000000", "00000000000000000000000000000000"}
    own = "%08X" % struct.unpack("<I", socket.inet_aton(address))[0]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local_ip, local_port = parts[1].split(":")
            if parts[3] == "0A" and int(local_port, 16) == port and (local_ip in wildcard or local_ip == own):
                inodes.add(parts[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets a process holds open."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    except OSError:
        pass
    return inodes


def port_holder(address: str, port: int) -> str:
    """Who listens on address:port, as 'pid 123 (program args)', or a plain note when /proc does not say."""
    targets = {f"socket:[{inode}]" for inode in _listening_inodes(address, port)}
    for entry in Path("/proc").iterdir():
        if not targets or not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    return f"pid {entry.name} ({cmdline[:120]})"
        except OSError:
            continue  # a process that exited meanwhile, or one we may not inspect
    return "a process this user cannot see"


def local_addresses(base_address: str, count: int) -> tuple[str, ...]:
    """`count` consecutive loopback addresses from `base_address` (127.0.0.11, .12, ...)."""
    try:
        base = ipaddress.IPv4Address(base_address)
    except ValueError:
        raise LocalClusterError(f"--base-address {base_address!r} is not an IPv4 address") from None
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    addresses = [base + i for i in range(count)]
    if any(a not in loopback or int(a) & 0xFF in (0, 255) for a in addresses):
        raise LocalClusterError(
            f"--base-address {base_address}: the {count} node addresses must be loopback host addresses "
            f"inside 127.0.0.0/8 (e.g. {DEFAULT_BASE_ADDRESS})"
        )
    return tuple(str(a) for a in addresses)


# --------------------------------------------------------------------------- settings on disk


def _settings_to_json(settings: ClusterSettings) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def _settings_from_json(data: dict[str, Any]) -> ClusterSettings:
    def tuples(d: dict[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

    data = dict(data)
    tokens = TokenSettings(**tuples(data.pop("tokens")))
    return ClusterSettings(**tuples(data), tokens=tokens)


def _new_password() -> str:
    # Only [A-Za-z0-9]: the boot script refuses anything it cannot put into all three config files.
    alphabet = PASSWORD_CHARACTERS
    return "".join(secrets.choice(alphabet) for _ in range(PASSWORD_LENGTH))


def _write_file(path: Path, content: str, mode: int) -> None:
    """Write with exactly `mode` from the first byte (no window where a secret file is wider)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(content)


def _log_tail(home: Path, step: str, lines: int = 6) -> str:
    for candidate in (home / "log" / f"{step}.log", home / "log" / f"{step}.out"):
        try:
            text = candidate.read_text(errors="replace").strip().splitlines()
        except OSError:
            continue
        if text:
            return f"\n    last lines of {candidate}:\n      " + "\n      ".join(text[-lines:])
    return ""


@contextlib.contextmanager
def _deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while cleaning up; deliver one afterwards as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- the cluster


@dataclass(frozen=True)
class LocalNode:
    index: int
    address: str
    layout: NodeLayout
    bundle: Bundle

    @property
    def name(self) -> str:
        return node_name(self.index)

    @property
    def home(self) -> Path:
        return Path(self.layout.home)

    def step(self, name: str) -> StartStep:
        for step in self.bundle.start_steps:
            if step.name == name:
                return step
        raise KeyError(f"{self.name} has no start step {name!r}")

    def pid_file(self, step: str) -> Path:
        return Path(self.layout.run) / f"{step}.pid"


class LocalCluster:
    """N nodes on loopback, run from the bundles `render_bundle` makes for AWS.

    `up()` is idempotent; `down()` stops only processes recorded in our pid files and still ours.
    The fault-drill methods (`kill`, `start_step`, `wipe_and_reprovision`) act on one node.
    """

    def __init__(
        self,
        settings: ClusterSettings,
        state_dir: str | os.PathLike[str],
        base_address: str = DEFAULT_BASE_ADDRESS,
        progress: Progress | None = None,
    ) -> None:
        if settings.node_count > LOCAL_MAX_NODES:
            raise LocalClusterError(
                f"nodeCount = {settings.node_count}: the local target runs at most {LOCAL_MAX_NODES} nodes "
                "(one loopback host each, all on this machine)"
            )
        self.settings = settings
        self.state_dir = Path(state_dir).resolve()
        self.base_address = base_address
        self.addresses = local_addresses(base_address, settings.node_count)
        self.password_file = self.state_dir / PASSWORD_FILE
        self._progress = progress or (lambda message: None)
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # pid -> child, to reap what we start
        self.nodes = tuple(self._render(i) for i in range(settings.node_count))
        socket_path = self.nodes[-1].layout.haproxy_socket
        if len(socket_path.encode()) > 107:  # sun_path; HAProxy would only say "cannot bind"
            raise LocalClusterError(
                f"state directory {self.state_dir} is too long: HAProxy's stats socket {socket_path} "
                "exceeds the 107 bytes a Unix socket path may have; choose a shorter --state-dir"
            )

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str], progress: Progress | None = None) -> LocalCluster:
        """The cluster recorded in `state_dir` by an earlier `up` (for status, failover, down)."""
        state = cls._read_state_file(Path(state_dir).resolve())
        if state is None:
            raise LocalClusterError(f"no local cluster in {Path(state_dir).resolve()} (run `up` first)")
        return cls(_settings_from_json(state["settings"]), state_dir, state["baseAddress"], progress)

    # ----------------------------------------------------------------- rendering

    def _render(self, index: int) -> LocalNode:
        """The node's INITIAL bundle: rendering is pure, so this is the same bundle every time."""
        layout = NodeLayout(
            home=str(self.state_dir / node_name(index)),
            password_command=f"cat {shlex.quote(str(self.password_file))}",
            haproxy_address=self.addresses[index],
        )
        bundle = render_bundle(self.settings, NodePlace(index, self.addresses), layout)
        return LocalNode(index, self.addresses[index], layout, bundle)

    # ----------------------------------------------------------------- endpoints and outputs

    @property
    def redis_endpoints(self) -> list[tuple[str, int]]:
        return [(a, self.settings.redis_port) for a in self.addresses]

    @property
    def sentinel_endpoints(self) -> list[tuple[str, int]]:
        return [(a, self.settings.sentinel_port) for a in self.addresses]

    @property
    def haproxy_endpoints(self) -> list[tuple[str, int]]:
        return [(n.layout.haproxy_address, self.settings.haproxy_port) for n in self.nodes]

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def outputs(self, report: QuorumReport) -> dict[str, Any]:
        """The stack outputs' names where they apply; the password file stands in for the secret ARN."""
        text = lambda endpoints: [f"{h}:{p}" for h, p in endpoints]  # noqa: E731
        return {
            "masterName": self.settings.master_name,
            "nodePrivateIps": list(self.addresses),
            "redisEndpoints": text(self.redis_endpoints),
            "sentinelEndpoints": text(self.sentinel_endpoints),
            "haproxyEndpoint": text(self.haproxy_endpoints),
            "redisAuthSecretPath": str(self.password_file),
            "hstInstalled": False,
            "quorum": report.to_dict(),
            "stateDir": str(self.state_dir),
        }

    # ----------------------------------------------------------------- state

    @staticmethod
    def _read_state_file(state_dir: Path) -> dict[str, Any] | None:
        try:
            return json.loads((state_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LocalClusterError(f"{state_dir / STATE_FILE} is unreadable ({exc}); remove {state_dir} by hand") from None

    def _state(self) -> dict[str, Any]:
        return {"settings": _settings_to_json(self.settings), "baseAddress": self.base_address}

    def _refuse_other_settings(self) -> None:
        """The nodes' configuration is written once; the token settings shape only the bootstrap
        tokens minted after `up`, so they alone may differ from the recorded ones."""
        recorded = self._read_state_file(self.state_dir)
        if recorded is None:
            return
        old = {**recorded.get("settings", {}), "baseAddress": recorded.get("baseAddress")}
        new = {**self._state()["settings"], "baseAddress": self.base_address}
        old.pop("tokens", None)
        new.pop("tokens", None)
        if old == new:
            return
        camel = lambda key: re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)  # noqa: E731
        changed = [f"{camel(k)} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(new) if old.get(k) != new.get(k)]
        raise LocalClusterError(
            f"a local cluster with other settings lives in {self.state_dir} ({'; '.join(changed)}). "
            "Its nodes' configuration is written once, at first boot; run `down` first to start afresh."
        )

    def _write_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_file(self.state_dir / STATE_FILE, json.dumps(self._state(), indent=1) + "\n", 0o600)
        if not self.password_file.exists():
            self.password_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.password_file.parent, 0o700)
            _write_file(self.password_file, _new_password() + "\n", 0o600)

    # ----------------------------------------------------------------- processes

    def _record(self, node: LocalNode, step: str) -> ProcessRecord | None:
        return ProcessRecord.load(node.pid_file(step))

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    def _alive(self, node: LocalNode, step: str) -> ProcessRecord | None:
        self._reap()
        record = self._record(node, step)
        return record if record is not None and record.alive() else None

    def pid(self, node_index: int, step: str) -> int | None:
        """The pid of a daemon step this cluster started and that still runs, else None."""
        record = self._alive(self.nodes[node_index], step)
        return record.pid if record else None

    def _running(self) -> dict[tuple[int, str], ProcessRecord]:
        return {
            (node.index, step): record
            for node in self.nodes for step in DAEMONS
            if (record := self._alive(node, step)) is not None
        }

    def _start_daemon(self, node: LocalNode, step_name: str) -> ProcessRecord:
        step = node.step(step_name)
        log_dir = Path(node.layout.log)
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{step_name}.out", "ab") as out:
            # Own session: a Ctrl-C at the terminal reaches only us, and we stop the daemons in order.
            child = subprocess.Popen(
                step.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=node.layout.home,
            )
        self._children[child.pid] = child
        record = ProcessRecord.of(child.pid, step.argv)
        _write_file(node.pid_file(step_name), record.dump(), 0o644)
        return record

    def _wait_ready(self, node: LocalNode, step_name: str, record: ProcessRecord, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Ready when OUR process listens on the step's ready port. A mere connect could reach another
        program that took the port between our check and the start (ours then exits: address in use)."""
        step = node.step(step_name)
        assert step.ready_port is not None and step.ready_address is not None
        where = f"{step.ready_address}:{step.ready_port}"
        deadline = time.monotonic() + timeout_s
        child = self._children.get(record.pid)
        while True:
            if (child.poll() is not None) if child else not record.alive():
                holder = "" if _port_is_free(step.ready_address, step.ready_port) else (
                    f"; {where} is now held by {port_holder(step.ready_address, step.ready_port)}"
                )
                raise LocalClusterError(
                    f"{node.name} {step_name} (pid {record.pid}) exited during start{holder}"
                    f"{_log_tail(node.home, step_name)}"
                )
            if _listening_inodes(step.ready_address, step.ready_port) & _socket_inodes(record.pid):
                return
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"{node.name} {step_name} does not listen on {where} after {timeout_s:g}s"
                    f"{_log_tail(node.home, step_name)}"
                )
            time.sleep(0.01)

    def _post_start(self, node: LocalNode, step_name: str) -> None:
        """What systemd's ExecStartPost does on AWS, after every start of the daemon. On AWS a failure
        leaves the daemon running with its defaults; here it is an error, since this target exists
        to prove the bundle."""
        argv = node.step(step_name).post_start
        if not argv:
            return
        with open(Path(node.layout.log) / f"{step_name}-post-start.out", "ab") as out:
            try:
                code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=READY_TIMEOUT_S + 20, start_new_session=True).returncode
            except subprocess.TimeoutExpired:
                code = None
        if code != 0:
            raise LocalClusterError(
                f"{node.name} {step_name}: {argv[0]} {'timed out' if code is None else f'exited {code}'}"
                f"{_log_tail(node.home, f'{step_name}-post-start')}"
            )

    def _signal(self, record: ProcessRecord, sig: int) -> None:
        if record.alive():  # checked right before: never signal a stranger that reused the pid
            try:
                os.kill(record.pid, sig)
            except ProcessLookupError:
                pass

    def _wait_gone(self, records: Iterable[ProcessRecord], timeout_s: float) -> list[ProcessRecord]:
        deadline = time.monotonic() + timeout_s
        pending = list(records)
        while pending and time.monotonic() < deadline:
            time.sleep(0.02)
            self._reap()
            pending = [r for r in pending if r.alive()]
        return pending

    def _stop(self, keys: Iterable[tuple[int, str]], grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL whatever is left after `grace_s` (Redis refuses SIGTERM while it
        cannot save, e.g. writing its first AOF). Only processes recorded by us and still ours."""
        targets = []
        for index, step in keys:
            node = self.nodes[index]
            record = self._alive(node, step)
            if record is not None:
                targets.append(record)
            node.pid_file(step).unlink(missing_ok=True)
        for record in targets:
            self._signal(record, signal.SIGTERM)
        leftovers = self._wait_gone(targets, grace_s)
        for record in leftovers:
            self._progress(f"pid {record.pid} ({record.argv[0]}) ignored SIGTERM for {grace_s:g}s; sending SIGKILL")
            self._signal(record, signal.SIGKILL)
        stuck = self._wait_gone(leftovers, 5.0)
        if stuck:
            raise LocalClusterError(f"could not stop pids {[r.pid for r in stuck]}")

    # ----------------------------------------------------------------- provisioning

    def _write_bundle(self, node: LocalNode) -> None:
        """What cloud-init's write_files does on first boot: the templates and the boot script."""
        for item in node.bundle.files:
            path = Path(item.path)
            if not path.exists():
                _write_file(path, item.content, item.mode)

    def _prepare(self, nodes: Iterable[LocalNode]) -> None:
        """Run the nodes' boot scripts (the `prepare` step) side by side; each renders its node once."""
        # The boot script may wait for a failover away from a rebuilt primary; give it that long.
        timeout_s = (self.settings.down_after_ms + self.settings.failover_timeout_ms) / 1000 + 40
        running = []
        for node in nodes:
            self._write_bundle(node)
            Path(node.layout.log).mkdir(parents=True, exist_ok=True)
            with open(Path(node.layout.log) / "prepare.out", "ab") as out:
                running.append((node, subprocess.Popen(
                    node.step("prepare").argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )))
        failures = []
        try:
            for node, child in running:
                remaining = max(0.1, timeout_s)
                try:
                    code = child.wait(timeout=remaining)
                except subprocess.TimeoutExpired:
                    code = None
                if code != 0:
                    failures.append(f"{node.name} boot script {'timed out' if code is None else f'exited {code}'}"
                                    f"{_log_tail(node.home, 'prepare')}")
        finally:
            for _, child in running:  # on Ctrl-C or timeout: the boot scripts are ours, end them
                if child.poll() is None:
                    child.kill()
                    child.wait()
        if failures:
            raise LocalClusterError("\n".join(failures))

    def _busy_ports(self, skip: Iterable[tuple[int, str]]) -> list[str]:
        skip = set(skip)
        busy = []
        for node in self.nodes:
            for step_name in DAEMONS:
                if (node.index, step_name) in skip:
                    continue
                step = node.step(step_name)
                if not _port_is_free(step.ready_address, step.ready_port):
                    busy.append(
                        f"{step.ready_address}:{step.ready_port} ({node.name} {step_name}) is held by "
                        f"{port_holder(step.ready_address, step.ready_port)}"
                    )
        return busy

    def _refuse_busy_ports(self, skip: Iterable[tuple[int, str]]) -> None:
        busy = self._busy_ports(skip)
        if busy:
            raise PortBusyError(
                "cannot start: ports the cluster needs are held by programs it did not start:\n  "
                + "\n  ".join(busy)
                + "\nStop them, or pick other ports (--redis-port, --sentinel-port, --haproxy-port) "
                "or other loopback hosts (--base-address)."
            )

    # ----------------------------------------------------------------- operations

    def up(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Start whatever is not running and return the outputs once verified failover-ready.
        On a healthy cluster it starts nothing. On failure or Ctrl-C it stops what it started."""
        self._refuse_other_settings()
        running = self._running()
        missing = [(n.index, s) for n in self.nodes for s in DAEMONS if (n.index, s) not in running]
        if not missing:
            self._progress(f"all {len(running)} daemons already run; verifying")
            return self.outputs(self.verify(timeout_s))
        self._refuse_busy_ports(running)
        fresh = not (self.state_dir / STATE_FILE).exists()
        started: list[tuple[int, str]] = []
        try:
            self._write_state()
            self._progress(f"preparing {len(self.nodes)} nodes in {self.state_dir}")
            self._prepare(n for n in self.nodes if any(k[0] == n.index for k in missing))
            # All Redis first, then all Sentinels, then all HAProxys: each layer finds the one below up.
            for step_name in DAEMONS:
                batch = [(self.nodes[i], s) for i, s in missing if s == step_name]
                records = []
                for node, _ in batch:
                    # A Ctrl-C between the spawn and the record would leave a daemon nobody stops.
                    with _deferred_interrupts():
                        records.append(self._start_daemon(node, step_name))
                        started.append((node.index, step_name))
                for (node, _), record in zip(batch, records):
                    self._wait_ready(node, step_name, record)
                    self._post_start(node, step_name)
                if batch:
                    self._progress(f"{step_name} up on {', '.join(n.name for n, _ in batch)}")
            return self.outputs(self.verify(timeout_s))
        except BaseException:
            with _deferred_interrupts():  # a second Ctrl-C must not leave half of them running
                self._progress(f"up failed: stopping the {len(started)} daemons this run started")
                self._stop(reversed(started))
                if fresh and not started:
                    shutil.rmtree(self.state_dir, ignore_errors=True)
                elif fresh:
                    self._progress(f"logs kept in {self.state_dir}/node-*/log; `down` removes them")
            raise

    def verify(self, timeout_s: float = 60.0, allow_missing_sentinels: int = 0) -> QuorumReport:
        """The SentinelQuorum provider's check, with every node's HAProxy as a route to prove."""
        return verify_quorum(
            self.sentinel_endpoints, self.settings.master_name, self.password(), self.settings.node_count,
            timeout_s=timeout_s, progress=self._progress, haproxy_endpoints=self.haproxy_endpoints,
            allow_missing_sentinels=allow_missing_sentinels,
            logs_hint=f"the logs in {self.state_dir}/node-*/log/",
        )

    def down(self, keep: bool = False, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every daemon we started (HAProxy, then Sentinel, then Redis); remove the state unless `keep`."""
        if self._read_state_file(self.state_dir) is None:
            if self.state_dir.exists() and any(self.state_dir.iterdir()):
                raise LocalClusterError(f"{self.state_dir} holds no local cluster ({STATE_FILE} missing); not touching it")
            return
        self._stop([(n.index, s) for s in reversed(DAEMONS) for n in self.nodes], grace_s)
        if not keep:
            shutil.rmtree(self.state_dir)

    def kill(self, node_index: int, step: str, sig: int = signal.SIGKILL, wait_s: float = 10.0) -> int:
        """Signal one daemon (a fault drill). Waits until it is gone when `sig` ends it."""
        node = self.nodes[node_index]
        record = self._alive(node, step)
        if record is None:
            raise LocalClusterError(f"{node.name} {step} is not running")
        self._signal(record, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT) and self._wait_gone([record], wait_s):
            raise LocalClusterError(f"{node.name} {step} (pid {record.pid}) still runs {wait_s:g}s after signal {sig}")
        return record.pid

    def start_step(self, node_index: int, step: str) -> int:
        """(Re)start one daemon from the files it has now (Redis's rewritten config, not the bundle)."""
        if step not in DAEMONS:
            raise ValueError(f"start_step starts a daemon ({', '.join(DAEMONS)}), not {step!r}")
        node = self.nodes[node_index]
        record = self._alive(node, step)
        if record is not None:
            return record.pid
        self._refuse_busy_ports([(i, s) for i in range(len(self.nodes)) for s in DAEMONS if (i, s) != (node_index, step)])
        record = self._start_daemon(node, step)
        try:
            self._wait_ready(node, step, record)
            self._post_start(node, step)
        except BaseException:
            self._stop([(node_index, step)])
            raise
        return record.pid

    def wipe_and_reprovision(self, node_index: int) -> None:
        """Replace one node as a new instance would be: its home deleted, the INITIAL bundle written
        again, the boot script run (it asks the surviving Sentinels for the current primary), then
        its daemons started."""
        node = self.nodes[node_index]
        self._stop([(node_index, s) for s in reversed(DAEMONS)])
        shutil.rmtree(node.home)
        self._progress(f"{node.name}: home wiped; reprovisioning from its initial bundle")
        self._prepare([node])
        for step in DAEMONS:
            self.start_step(node_index, step)

    # ----------------------------------------------------------------- observation

    def _ask(self, endpoint: tuple[str, int], *command: str) -> Any:
        client = one_shot_client(endpoint, self.password(), 1.0)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def _info(self, endpoint: tuple[str, int]) -> dict[str, Any] | None:
        return server_info(endpoint, self.password())

    def sentinel_primaries(self) -> list[str | None]:
        """What each Sentinel names as primary (host:port), None where it does not answer."""
        named: list[str | None] = []
        for endpoint in self.sentinel_endpoints:
            try:
                host, port = self._ask(endpoint, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.settings.master_name)
                named.append(f"{host}:{port}")
            except (redis.RedisError, OSError, TypeError, ValueError):
                named.append(None)
        return named

    def current_primary(self) -> str | None:
        """The primary a majority of Sentinels name, or None."""
        votes = Counter(p for p in self.sentinel_primaries() if p)
        if votes:
            primary, count = votes.most_common(1)[0]
            if count >= self.settings.sentinel_majority:
                return primary
        return None

    def haproxy_routes(self) -> list[str | None]:
        """Per node, the Redis (host:port) its HAProxy leads to now, None when it leads nowhere."""
        by_run_id = {}
        for endpoint in self.redis_endpoints:
            info = self._info(endpoint)
            if info:
                by_run_id[info.get("run_id")] = f"{endpoint[0]}:{endpoint[1]}"
        routes: list[str | None] = []
        for endpoint in self.haproxy_endpoints:
            info = self._info(endpoint)
            routes.append(by_run_id.get(info.get("run_id"), "unknown") if info else None)
        return routes

    def haproxy_servers(self, node_index: int) -> dict[str, dict[str, str]]:
        """What a node's HAProxy believes now, from its admin socket (`show servers state`):
        {"backend/server": {"state": UP|DOWN|STARTING|STOPPING, ...the raw columns}}. `show stat` is no use
        here: its check-description field carries the Sentinel's raw reply, CR LF included."""
        path = self.nodes[node_index].layout.haproxy_socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2.0)
            conn.connect(path)
            conn.sendall(b"show servers state\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        header = next(line for line in lines if line.startswith("# be_id")).lstrip("# ").split()
        op_states = {"0": "DOWN", "1": "STARTING", "2": "UP", "3": "STOPPING"}
        servers = {}
        for line in lines:
            if not line or line.startswith("#") or len(line.split()) < len(header):
                continue  # the format version line, comments
            row = dict(zip(header, line.split()))
            row["state"] = op_states.get(row["srv_op_state"], row["srv_op_state"])
            servers[f"{row['be_name']}/{row['srv_name']}"] = row
        return servers

    def haproxy_confirms(self, node_index: int, target_index: int) -> bool:
        """Whether node `node_index`'s HAProxy would route to `target_index` if that Redis says role:master:
        a majority of its Sentinel checks for the target are UP."""
        backend = f"{guard_backend(node_name(target_index))}/"
        servers = self.haproxy_servers(node_index)
        up = sum(1 for key, row in servers.items() if key.startswith(backend) and row["state"] == "UP")
        return up >= self.settings.sentinel_majority

    def status(self) -> dict[str, Any]:
        """Primary, replicas with lag, Sentinels and HAProxy routing per node."""
        named = self.sentinel_primaries()
        routes = self.haproxy_routes()
        infos = [self._info(e) for e in self.redis_endpoints]
        primary = self.current_primary()
        acks: dict[str, dict[str, Any]] = {}
        primary_offset = 0
        for (host, port), info in zip(self.redis_endpoints, infos):
            if info and f"{host}:{port}" == primary:
                primary_offset = int(info.get("master_repl_offset", 0))
                acks = {
                    f"{v.get('ip')}:{v.get('port')}": v
                    for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                }
        nodes = []
        for node, info, sentinel, route in zip(self.nodes, infos, named, routes):
            endpoint = f"{node.address}:{self.settings.redis_port}"
            entry: dict[str, Any] = {
                "node": node.name,
                "address": node.address,
                "pids": {step: self.pid(node.index, step) for step in DAEMONS},
                "role": info.get("role") if info else None,
                "sentinelNames": sentinel,
                "haproxyRoutesTo": route,
            }
            if info and info.get("role") == "slave":
                ack = acks.get(endpoint, {})
                entry["replicaOf"] = f"{info.get('master_host')}:{info.get('master_port')}"
                entry["linkStatus"] = info.get("master_link_status")
                entry["lagBytes"] = primary_offset - int(ack["offset"]) if ack else None
                entry["lagS"] = int(ack["lag"]) if ack else None
            nodes.append(entry)
        return {
            "masterName": self.settings.master_name,
            "primary": primary,
            "sentinelsAnswering": sum(1 for s in named if s),
            "nodes": nodes,
            "stateDir": str(self.state_dir),
        }

    def failover(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Ask Sentinel for a failover, wait until every Sentinel names the new primary and every
        HAProxy routes to it, then verify the cluster failover-ready again."""
        started = time.monotonic()
        deadline = started + timeout_s
        before = self.current_primary()
        if before is None:
            raise LocalClusterError("no primary named by a majority of Sentinels; run `status`")
        asked = None
        for endpoint in self.sentinel_endpoints:
            try:
                self._ask(endpoint, "SENTINEL", "FAILOVER", self.settings.master_name)
                asked = f"{endpoint[0]}:{endpoint[1]}"
                break
            except redis.ResponseError as exc:
                raise LocalClusterError(f"Sentinel {endpoint[0]}:{endpoint[1]} refused the failover: {exc}") from None
            except (redis.RedisError, OSError):
                continue
        if asked is None:
            raise LocalClusterError("no Sentinel answers; run `status`")
        self._progress(f"Sentinel {asked} fails over from {before}")
        after = self._wait_for_new_primary(before, deadline)
        self._progress(f"every HAProxy follows the new primary after {after:.1f}s; verifying the replicas resync")
        report = self.verify(max(1.0, deadline - time.monotonic()))
        return {
            "from": before, "to": report.primary, "askedSentinel": asked,
            "routedAfterS": round(after, 3), "elapsed_s": round(time.monotonic() - started, 3),
            "quorum": report.to_dict(),
        }

    def _wait_for_new_primary(self, before: str, deadline: float) -> float:
        """Seconds until every Sentinel names one primary other than `before` and every HAProxy leads there."""
        started = time.monotonic()
        while time.monotonic() < deadline:
            named = set(self.sentinel_primaries())
            if len(named) == 1 and None not in named and before not in named:
                (primary,) = named
                if all(route == primary for route in self.haproxy_routes()):
                    return time.monotonic() - started
            time.sleep(0.1)
        raise LocalClusterError(
            f"after the failover request, Sentinels name {self.sentinel_primaries()} and HAProxys route to "
            f"{self.haproxy_routes()} (still or again {before}?)"
        )
