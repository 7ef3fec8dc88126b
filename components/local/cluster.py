"""The local target: the very node bundles the AWS target renders, run as real processes on loopback.

Node i lives on the loopback "host" 127.0.0.(11+i) with the real ports, its files under
`<state dir>/node-<i+1>`. Only three things differ from AWS: the addresses, the node's home, and
how the boot script fetches the secrets (`cat` of a 0600 file instead of Secrets Manager).
The start steps are the bundle's own: `prepare` (the boot script) runs to completion, then each
daemon runs as a child process in its own session, with its pid recorded in `<home>/run/<step>.pid`.

`LocalCluster` orchestrates; each job lives in its own module: `state` (the state directory and
what may be removed), `nodes` (addresses and bundles), `provisioning` (first boot), `processes`
(start, signal and stop only what we started), `ports` (who holds a port), `observe` (what the
daemons say). Pure Python, no Pulumi: `scripts/local_cluster.py` is a thin CLI over it, and the
tests, drills and benchmarks use it directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from components.bundle import NodePlace
from components.bundle.users import HST, MONITOR, OPERATOR
from components.local.errors import LocalClusterError, PortBusyError
from components.local.nodes import (
    DAEMONS,
    DEFAULT_BASE_ADDRESS,
    LOCAL_MAX_NODES,
    LocalNode,
    local_addresses,
    render_node,
)
from components.local.observe import ClusterView
from components.local.observers import OBSERVERS, adopt_exec, missing_requirement, wait_listening
from components.local.ports import listens, port_holder, port_is_free
from components.local.processes import (
    HAPROXY_RELOAD_TIMEOUT_S,
    ProcessRecord,
    Supervisor,
    deferred_interrupts,
    log_tail,
    run_to_end,
)
from components.local.provisioning import check_haproxy_cfg, ensure_tls, prepare, refresh_bundle
from components.local.state import StateDir, new_password, write_file
from components.outputs import LocalOutputs
from components.runtime import live_settings, membership, rotation
from components.runtime.quorum import QuorumReport, verify_quorum
from components.runtime.switchover import Commands, direct_commands
from components.settings import ClusterSettings

__all__ = [
    "DAEMONS", "DEFAULT_BASE_ADDRESS", "LOCAL_MAX_NODES", "LocalCluster", "LocalClusterError", "LocalNode",
    "PortBusyError", "ProcessRecord", "local_addresses",
]

READY_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0

Progress = Callable[[str], None]
Key = tuple[int, str]  # (node index, daemon step)


class LocalCluster:
    """N nodes on loopback, run from the bundles `render_bundle` makes for AWS.

    `up()` is idempotent; `down()` stops only processes recorded in our pid files and still ours,
    and removes only what the local target created. `view` answers what the daemons say now. The
    fault-drill methods (`kill`, `start_step`, `wipe_and_reprovision`) act on one node.
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
        self.state = StateDir(state_dir)
        self.state_dir = self.state.path
        self.base_address = base_address
        self.addresses = local_addresses(base_address, settings.node_count)
        self.password_file = self.state.password_file
        self._progress = progress or (lambda message: None)
        self.processes = Supervisor(self._progress)
        self.nodes = tuple(self._render(i) for i in range(settings.node_count))
        self.view = ClusterView(settings, self.nodes, lambda: self.password(OPERATOR.key), self.pid,
                                self.tls_ca_file)
        socket_path = self.nodes[-1].layout.haproxy_socket
        if len(socket_path.encode()) > 107:  # sun_path; HAProxy would only say "cannot bind"
            raise LocalClusterError(
                f"state directory {self.state_dir} is too long: HAProxy's stats socket {socket_path} "
                "exceeds the 107 bytes a Unix socket path may have; choose a shorter --state-dir"
            )

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str], progress: Progress | None = None) -> LocalCluster:
        """The cluster recorded in `state_dir` by an earlier `up` (for status, failover, down)."""
        state = StateDir(state_dir).read()
        if state is None:
            raise LocalClusterError(f"no local cluster in {Path(state_dir).resolve()} (run `up` first)")
        return cls(live_settings.settings_from_json(state["settings"]), state_dir, state["baseAddress"], progress)

    def _render(self, index: int) -> LocalNode:
        return render_node(self.settings, self.state_dir, self.addresses, index, self.password_file,
                           self.state.tls_file if self.settings.tls_enabled else None)

    @property
    def tls_ca_file(self) -> str | None:
        """With tlsEnabled, the CA certificate every client of a node's Redis or Sentinel port verifies with."""
        return str(self.state.tls_ca_cert_file) if self.settings.tls_enabled else None

    # ----------------------------------------------------------------- endpoints and outputs

    @property
    def redis_endpoints(self) -> list[tuple[str, int]]:
        return self.view.redis_endpoints

    @property
    def sentinel_endpoints(self) -> list[tuple[str, int]]:
        return self.view.sentinel_endpoints

    @property
    def haproxy_endpoints(self) -> list[tuple[str, int]]:
        return self.view.haproxy_endpoints

    def password(self, role: str = HST.key) -> str:
        """A role's password (components/bundle/users.py); HST Server's by default, as an application has."""
        return self.state.password(role)

    def outputs(self, report: QuorumReport) -> LocalOutputs:
        """The stack outputs (components/outputs.py), as the local target has them."""
        def text(endpoints: Iterable[tuple[str, int]]) -> list[str]:
            return [f"{h}:{p}" for h, p in endpoints]

        haproxys = text(self.haproxy_endpoints)
        return {
            "masterName": self.settings.master_name,
            "nodePrivateIps": list(self.addresses),
            "nodePublicIps": [None] * len(self.addresses),
            "redisEndpoints": text(self.redis_endpoints),
            "sentinelEndpoints": text(self.sentinel_endpoints),
            "haproxyEndpoint": haproxys[0],
            "securityGroupId": "",
            "instanceIds": [],
            "redisAuthSecretArn": "",
            "vpcId": "",
            "subnetIds": [],
            "hstInstalled": False,
            "quorum": report.to_dict(),
            "bearerTokenSecretArn": "",
            "tokenVerificationKey": "",
            "backupBucket": "",
            "alarmTopicArn": "",
            "stateDir": str(self.state_dir),
            "redisAuthSecretPath": str(self.password_file),
            "haproxyEndpoints": haproxys,
        }

    # ----------------------------------------------------------------- recorded state

    def _state(self) -> dict[str, Any]:
        return {"settings": live_settings.settings_to_json(self.settings), "baseAddress": self.base_address}

    def _recorded_settings(self) -> ClusterSettings | None:
        """The settings the running cluster was last brought up or changed to, or None on a first `up`.
        A different --base-address is refused: the nodes' addresses are in every peer's configuration."""
        recorded = self.state.read()
        if recorded is None:
            return None
        if recorded.get("baseAddress") != self.base_address:
            raise LocalClusterError(
                f"a local cluster on --base-address {recorded.get('baseAddress')} lives in {self.state_dir}; "
                f"--base-address {self.base_address} cannot change on a running cluster (every peer names the "
                "nodes' addresses). Keep it, or run `down` first to start afresh."
            )
        return live_settings.settings_from_json(recorded["settings"])

    # ----------------------------------------------------------------- processes

    def _alive(self, node: LocalNode, step: str) -> ProcessRecord | None:
        return self.processes.alive(node.pid_file(step))

    def pid(self, node_index: int, step: str) -> int | None:
        """The pid of a daemon step this cluster started and that still runs, else None."""
        record = self._alive(self.nodes[node_index], step)
        return record.pid if record else None

    def _running(self) -> dict[Key, ProcessRecord]:
        return {
            (node.index, step): record
            for node in self.nodes for step in DAEMONS
            if (record := self._alive(node, step)) is not None
        }

    def _pre_start(self, nodes: Iterable[LocalNode], step_name: str) -> None:
        """What systemd's ExecStartPre does on AWS, before EVERY start of the daemon (the Redis start
        gate): run to its end, side by side for several nodes; the daemon starts only if it succeeded."""
        work = [(node, argv, node.step(step_name).pre_start_timeout_s + 10)
                for node in nodes if (argv := node.step(step_name).pre_start)]
        if not work:
            return
        with ThreadPoolExecutor(len(work)) as pool:
            codes = list(pool.map(lambda w: run_to_end(w[1], w[0].log(f"{step_name}-pre-start.out"), w[2]), work))
        failures = [
            f"{node.name} {step_name}: {argv[0]} {'timed out' if code is None else f'exited {code}'}"
            f"{log_tail(node.home, f'{step_name}-pre-start')}"
            for (node, argv, _), code in zip(work, codes, strict=True) if code != 0
        ]
        if failures:
            raise LocalClusterError("\n".join(failures))

    def _start_daemon(self, node: LocalNode, step_name: str) -> ProcessRecord:
        argv = node.step(step_name).argv
        if step_name == "haproxy":
            # Master-worker mode: a reload (SIGUSR2 to the master) starts a new worker from the rewritten
            # haproxy.cfg; the master, the pid we record, stays (reload_haproxy).
            argv = (argv[0], "-W", *argv[1:])
        return self.processes.spawn(argv, node.layout.home, node.log(f"{step_name}.out"), node.pid_file(step_name))

    def _wait_ready(self, node: LocalNode, step_name: str, record: ProcessRecord,
                    timeout_s: float = READY_TIMEOUT_S) -> None:
        """Ready when OUR process listens on the step's ready port. A mere connect could reach another
        program that took the port between our check and the start (ours then exits: address in use)."""
        address, port = node.ready_endpoint(step_name)
        where = f"{address}:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            process = record.process()
            if process is None or self.processes.exited(record):
                holder = "" if port_is_free(address, port) else f"; {where} is now held by {port_holder(address, port)}"
                raise LocalClusterError(
                    f"{node.name} {step_name} (pid {record.pid}) exited during start{holder}"
                    f"{log_tail(node.home, step_name)}"
                )
            if listens(process, address, port, children=step_name == "haproxy"):
                return
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"{node.name} {step_name} does not listen on {where} after {timeout_s:g}s"
                    f"{log_tail(node.home, step_name)}"
                )
            time.sleep(0.01)

    def _post_start(self, node: LocalNode, step_name: str) -> None:
        """What systemd's ExecStartPost does on AWS, after every start of the daemon. On AWS a failure
        leaves the daemon running with its defaults; here it is an error, since this target exists
        to prove the bundle."""
        argv = node.step(step_name).post_start
        if not argv:
            return
        code = run_to_end(argv, node.log(f"{step_name}-post-start.out"), READY_TIMEOUT_S + 20)
        if code != 0:
            raise LocalClusterError(
                f"{node.name} {step_name}: {argv[0]} {'timed out' if code is None else f'exited {code}'}"
                f"{log_tail(node.home, f'{step_name}-post-start')}"
            )

    def _stop(self, keys: Iterable[Key], grace_s: float = STOP_GRACE_S) -> None:
        """Stop the daemons of `keys` that are still ours, in the order given; forget their pid files."""
        records = []
        for index, step in keys:
            node = self.nodes[index]
            record = self._alive(node, step)
            if record is not None:
                records.append(record)
            node.pid_file(step).unlink(missing_ok=True)
        self.processes.stop(records, grace_s)

    def _busy_ports(self, skip: Iterable[Key]) -> list[str]:
        skipped = set(skip)
        busy = []
        for node in self.nodes:
            for step_name in DAEMONS:
                if (node.index, step_name) in skipped:
                    continue
                address, port = node.ready_endpoint(step_name)
                if not port_is_free(address, port):
                    busy.append(f"{address}:{port} ({node.name} {step_name}) is held by {port_holder(address, port)}")
        return busy

    def _refuse_busy_ports(self, skip: Iterable[Key]) -> None:
        busy = self._busy_ports(skip)
        if busy:
            raise PortBusyError(
                "cannot start: ports the cluster needs are held by programs it did not start:\n  "
                + "\n  ".join(busy)
                + "\nStop them, or pick other ports (--redis-port, --sentinel-port, --haproxy-port) "
                "or other loopback hosts (--base-address)."
            )

    def _prepare(self, nodes: Iterable[LocalNode]) -> None:
        # The boot script may wait for a failover away from a rebuilt primary; give it that long.
        prepare(nodes, (self.settings.down_after_ms + self.settings.failover_timeout_ms) / 1000 + 40)

    # ----------------------------------------------------------------- operations

    def up(self, timeout_s: float = 60.0) -> LocalOutputs:
        """Start whatever is not running and return the outputs once verified failover-ready.
        On a healthy cluster it starts nothing. On failure or Ctrl-C it stops what it started, and
        a first `up` removes what it created."""
        self.state.refuse_foreign()
        recorded = self._recorded_settings()
        if recorded is not None and recorded != self.settings:
            live_plan = live_settings.plan(recorded, self.settings)  # refuses before anything is applied
            if not live_plan.empty:
                return self.change_live(recorded, live_plan, timeout_s)
            self.state.write(self._state())  # only the tokens changed: they are minted after `up`
        running = self._running()
        missing = [(n.index, s) for n in self.nodes for s in DAEMONS if (n.index, s) not in running]
        if not missing:
            self._progress(f"all {len(running)} daemons already run; verifying")
            return self.outputs(self.verify(timeout_s))
        self._refuse_busy_ports(running)
        fresh = self.state.read() is None
        started: list[Key] = []
        try:
            self.state.write(self._state())
            if self.settings.tls_enabled:
                ensure_tls(self.state, self.addresses)
            self._progress(f"preparing {len(self.nodes)} nodes in {self.state_dir}")
            self._prepare(n for n in self.nodes if any(k[0] == n.index for k in missing))
            # All Redis first, then all Sentinels, then all HAProxys: each layer finds the one below up.
            for step_name in DAEMONS:
                batch = [self.nodes[i] for i, s in missing if s == step_name]
                self._pre_start(batch, step_name)
                records = []
                for node in batch:
                    # A Ctrl-C between the spawn and the record would leave a daemon nobody stops.
                    with deferred_interrupts():
                        records.append(self._start_daemon(node, step_name))
                        started.append((node.index, step_name))
                for node, record in zip(batch, records, strict=True):
                    self._wait_ready(node, step_name, record)
                    self._post_start(node, step_name)
                if batch:
                    self._progress(f"{step_name} up on {', '.join(n.name for n in batch)}")
            self._start_observers(started)
            return self.outputs(self.verify(timeout_s))
        except BaseException:
            with deferred_interrupts():  # a second Ctrl-C must not leave half of them running
                self._progress(f"up failed: stopping the {len(started)} daemons this run started")
                self._stop(reversed(started))
                if fresh and not started:
                    self.state.remove(n.name for n in self.nodes)
                elif fresh:
                    self._progress(f"logs kept in {self.state_dir}/node-*/log; `down` removes them")
            raise

    def _start_observers(self, started: list[Key]) -> None:
        """The bundle's exporters and event listener (components/local/observers.py), where this
        machine can run them; a note for each kind it cannot. Each one started is added to `started`
        at once, so a failure stops it with the rest."""
        for step_name in OBSERVERS:
            reason = missing_requirement(step_name)
            if reason:
                self._progress(f"skipping {step_name}: {reason}")
                continue
            for node in self.nodes:
                if self._alive(node, step_name) is not None:
                    continue
                with deferred_interrupts():
                    record = self._start_daemon(node, step_name)
                    started.append((node.index, step_name))
                if node.step(step_name).ready_port:
                    record = adopt_exec(record, node.pid_file(step_name))
                    self._wait_ready(node, step_name, record)
                else:
                    wait_listening(node, lambda: not self.processes.exited(record))  # noqa: B023 - used at once
            self._progress(f"{step_name} up on every node")

    def verify(self, timeout_s: float = 60.0, allow_missing_sentinels: int = 0) -> QuorumReport:
        """The SentinelQuorum provider's check, with every node's HAProxy as a route to prove."""
        return verify_quorum(
            self.sentinel_endpoints, self.settings.master_name, self.password(MONITOR.key), self.settings.node_count,
            timeout_s=timeout_s, progress=self._progress, haproxy_endpoints=self.haproxy_endpoints,
            allow_missing_sentinels=allow_missing_sentinels,
            logs_hint=f"the logs in {self.state_dir}/node-*/log/", tls_ca_file=self.tls_ca_file,
        )

    def down(self, keep: bool = False, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every daemon we started (HAProxy, then Sentinel, then Redis); unless `keep`, remove
        what the local target created there (the directory too, if it created it and nothing else is left)."""
        if self.state.read() is None:
            if self.state_dir.exists() and any(self.state_dir.iterdir()):
                raise LocalClusterError(f"{self.state_dir} holds no local cluster ({self.state.state_file.name} "
                                        "missing); not touching it")
            return
        self._stop([(n.index, s) for s in (*OBSERVERS, *reversed(DAEMONS)) for n in self.nodes], grace_s)
        if not keep:
            left = self.state.remove(n.name for n in self.nodes)
            if left:
                self._progress(f"left in {self.state_dir}, not created by the local target: {', '.join(left)}")

    # ----------------------------------------------------------------- live changes

    def _commands(self) -> Commands:
        return direct_commands(self.password(OPERATOR.key), timeout_s=2.0, tls_ca_file=self.tls_ca_file)

    def reload_haproxy(self, node: LocalNode) -> bool:
        """Re-render the node's haproxy.cfg for the settings and membership now, with the passwords the
        secret holds now; when it differs, check it and reload HAProxy: its master keeps its pid, a new
        worker takes over, and the former worker keeps the sessions it carries, judged by the new
        worker's fence (hst-ha-fence.lua), until they end. Whether it reloaded."""
        path = Path(node.layout.haproxy_cfg)
        text = live_settings.filled_haproxy_cfg(self.settings, NodePlace(node.index, self.addresses), node.layout,
                                                self.state.secrets())
        if path.read_text() == text:
            return False
        record = self._alive(node, "haproxy")
        if record is None:
            raise LocalClusterError(f"{node.name} haproxy is not running: nothing to reload")
        staged = path.with_name(path.name + ".new")
        write_file(staged, text, 0o600)
        try:
            check_haproxy_cfg(staged)
        except LocalClusterError:
            staged.unlink(missing_ok=True)
            raise
        previous = path.read_text()
        os.replace(staged, path)
        try:
            self.processes.reload(record, *node.ready_endpoint("haproxy"), timeout_s=HAPROXY_RELOAD_TIMEOUT_S)
        except LocalClusterError as exc:
            write_file(path, previous, 0o600)
            raise LocalClusterError(f"{node.name}: {exc}{log_tail(node.home, 'haproxy')}") from None
        # The new worker holds every server until each check has run once (the fence): one node at a
        # time, so the other nodes' HAProxys route new clients meanwhile.
        endpoint = (node.layout.haproxy_address, self.settings.haproxy_port)
        deadline = time.monotonic() + HAPROXY_RELOAD_TIMEOUT_S
        while self.view.info(endpoint) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self._progress(f"{node.name}: HAProxy reloaded (master pid {record.pid} kept; sessions opened before "
                       "the reload stay, judged by the new worker's fence)")
        return True

    def change_live(self, old: ClusterSettings, plan: live_settings.Plan, timeout_s: float = 60.0) -> LocalOutputs:
        """Bring the running cluster recorded with settings `old` to this cluster's settings without
        restarting a daemon: grow or shrink the membership, SENTINEL SET / CONFIG SET on every node,
        every HAProxy re-rendered and reloaded, then verified failover-ready. Recorded at the end only:
        after a failure, the same `up` again picks up where it stopped."""
        started = time.monotonic()
        previous = LocalCluster(old, self.state_dir, self.base_address, self._progress)
        down = [f"{previous.nodes[i].name} {s}" for i in range(old.node_count) for s in DAEMONS
                if previous.pid(i, s) is None and i not in plan.added]
        if down:
            raise LocalClusterError(
                f"the cluster in {self.state_dir} is not running whole ({', '.join(down)} not running); changed "
                "settings are applied to a running cluster only. Run `up` with its recorded settings first "
                f"(`status` shows them), then `up` with the new ones. Changes: {'; '.join(map(str, plan.changes))}"
            )
        self._progress("applying live: " + "; ".join(map(str, plan.changes)))
        for line in plan.describe():
            self._progress(f"  {line}")
        for change in plan.elsewhere:
            self._progress(f"  {change}")
        if plan.removed:
            self._shrink(previous, plan)
        elif plan.added:
            self._grow(previous, plan)
        else:
            self._apply_everywhere()
        for node in self.nodes:
            refresh_bundle(node)
        self.state.write(self._state())
        report = self.verify(timeout_s)
        self._progress(f"settings applied live and verified failover-ready in {time.monotonic() - started:.1f}s")
        return self.outputs(report)

    def _apply_everywhere(self) -> None:
        live_settings.apply_settings(self._commands(), [f"{h}:{p}" for h, p in self.redis_endpoints],
                                     [f"{h}:{p}" for h, p in self.sentinel_endpoints], self.settings, self._progress)
        for node in self.nodes:
            self.reload_haproxy(node)

    def _grow(self, previous: LocalCluster, plan: live_settings.Plan) -> None:
        """New nodes boot as a new instance would (their boot script asks the Sentinels for the primary
        and joins as a replica); then every node takes the new settings and every HAProxy the new servers."""
        joining = [self.nodes[i] for i in plan.added]
        running = self._running()
        self._refuse_busy_ports(running)
        started: list[Key] = []
        try:
            self._progress(f"growing: {', '.join(n.name for n in joining)} boot and join")
            if self.settings.tls_enabled:
                ensure_tls(self.state, self.addresses)  # the cluster's CA signs the new addresses only
            self._prepare([n for n in joining if not all((n.index, s) in running for s in DAEMONS)])
            for step_name in DAEMONS:
                batch = [n for n in joining if (n.index, step_name) not in running]
                self._pre_start(batch, step_name)
                for node in batch:
                    with deferred_interrupts():
                        record = self._start_daemon(node, step_name)
                        started.append((node.index, step_name))
                    self._wait_ready(node, step_name, record)
                    self._post_start(node, step_name)
            self._apply_everywhere()
            self._start_observers(started)
        except BaseException:
            with deferred_interrupts():
                self._progress(f"grow failed: stopping the {len(started)} daemons this run started")
                self._stop(reversed(started))
            raise

    def _shrink(self, previous: LocalCluster, plan: live_settings.Plan) -> None:
        """The nodes last in order leave, never with the primary on them (a switchover first); the
        remaining Sentinels forget them (SENTINEL RESET one at a time)."""
        commands = self._commands()
        leaving = [previous.nodes[i] for i in plan.removed]
        membership.move_primary_off(commands, [f"{h}:{p}" for h, p in previous.sentinel_endpoints],
                                    [f"{h}:{p}" for h, p in previous.redis_endpoints], self.settings.master_name,
                                    {f"{n.address}:{self.settings.redis_port}" for n in leaving}, self._progress)
        # Lowered values (quorum, min-replicas) first, on every node still there: they hold with fewer nodes.
        live_settings.apply_settings(commands, [f"{h}:{p}" for h, p in previous.redis_endpoints],
                                     [f"{h}:{p}" for h, p in previous.sentinel_endpoints], self.settings,
                                     self._progress)
        for node in self.nodes:  # the remaining HAProxys stop routing to, and asking, the leaving nodes
            self.reload_haproxy(node)
        self._progress(f"shrinking: stopping {', '.join(n.name for n in leaving)}")
        previous._stop([(n.index, s) for n in leaving for s in (*OBSERVERS, *reversed(DAEMONS))])
        for node in leaving:  # as a terminated instance's disk: a later grow boots it afresh
            shutil.rmtree(node.home, ignore_errors=True)
        membership.reset_sentinels(commands, [f"{h}:{p}" for h, p in self.sentinel_endpoints],
                                   [f"{h}:{p}" for h, p in self.redis_endpoints], self.settings.master_name,
                                   progress=self._progress)
        self._apply_everywhere()

    def status(self) -> dict[str, Any]:
        """Primary, replicas with lag, Sentinels and HAProxy routing per node, and the state directory."""
        return {**self.view.status(), "stateDir": str(self.state_dir)}

    def kill(self, node_index: int, step: str, sig: int = signal.SIGKILL, wait_s: float = 10.0) -> int:
        """Signal one daemon (a fault drill). Waits until it is gone when `sig` ends it."""
        node = self.nodes[node_index]
        record = self._alive(node, step)
        left = self.processes.kill(record, sig, wait_s) if record is not None else None
        if record is None or left is None:
            raise LocalClusterError(f"{node.name} {step} is not running")
        if left:  # HAProxy's workers too: they hold its port until they notice their master is gone
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
        self._refuse_busy_ports(
            [(i, s) for i in range(len(self.nodes)) for s in DAEMONS if (i, s) != (node_index, step)])
        self._pre_start([node], step)
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
        self._stop([(node_index, s) for s in (*OBSERVERS, *reversed(DAEMONS))])
        shutil.rmtree(node.home)
        self._progress(f"{node.name}: home wiped; reprovisioning from its initial bundle")
        self._prepare([node])
        for step in DAEMONS:
            self.start_step(node_index, step)
        self._start_observers([])  # only this node's are missing

    def rotate_password(self, key: str) -> None:
        """Rotate one role's password with no moment where a client holding either is refused
        (components/runtime/rotation.py); the state directory's secret file plays Secrets Manager."""
        current = self.state.secrets()

        def reconfigure(role_key: str, old: str, new: str) -> None:
            if role_key != MONITOR.key:
                return  # no HST Server here; the other roles' copies live in Redis and Sentinel
            # HAProxy's checks carry the monitoring password in haproxy.cfg: re-rendered with the secret
            # just published and reloaded (the live path): no session is dropped, no process restarted.
            for node in self.nodes:
                self.reload_haproxy(node)

        rotation.rotate(
            key, new_password(), current,
            rotation.Topology(self.redis_endpoints, self.sentinel_endpoints, self.settings.master_name,
                              self.tls_ca_file),
            self.state.write_secrets, reconfigure, self._progress,
        )

    def failover(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Ask Sentinel for a failover, wait until every Sentinel names the new primary and every
        HAProxy routes to it, then verify the cluster failover-ready again."""
        started = time.monotonic()
        deadline = started + timeout_s
        before = self.view.current_primary()
        if before is None:
            raise LocalClusterError("no primary named by a majority of Sentinels; run `status`")
        asked = None
        for endpoint in self.sentinel_endpoints:
            try:
                self.view.ask(endpoint, "SENTINEL", "FAILOVER", self.settings.master_name)
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
            named = set(self.view.sentinel_primaries())
            if len(named) == 1 and None not in named and before not in named:
                (primary,) = named
                if all(route == primary for route in self.view.haproxy_routes()):
                    return time.monotonic() - started
            time.sleep(0.1)
        raise LocalClusterError(
            f"after the failover request, Sentinels name {self.view.sentinel_primaries()} and HAProxys route to "
            f"{self.view.haproxy_routes()} (still or again {before}?)"
        )
