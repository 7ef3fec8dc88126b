"""The node target: the program's user data, byte for byte, booted in systemd-nspawn containers.

Each node is a Debian 12 container with systemd as PID 1 and real cloud-init, its disk an overlay
over the cached image (components.node.image), its network a namespace of its own joined by a
bridge in a hub namespace this module creates (node addresses exist only there), or, when latency
is asked for, by the userspace switch of components.node.latency (this kernel has no netem): each
node's eth0 is then a TAP device and every frame between nodes is delayed, with jitter. Cloud-init reads
a NoCloud seed: the program's user data unchanged, a network-config with the node's static
address, and vendor-data standing in for the instance role. Secrets Manager is moto, over TLS,
served from the hub namespace. Nothing else stands in for AWS.

`exec_in` plays SSM Run Command: the command runs as root in a transient unit of the node's
systemd, so it inherits the environment every service has (the role's stand-in credentials), as
commands run by the SSM agent do. `verify` runs the SentinelQuorum provider's probe script
through it and judges the answers with the provider's own judge.

Everything started here is stopped here, by pid and bounded: the host's PID 1 is not systemd and
does not reap what is re-parented to it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from components.aws.cloud_config import aws_layout
from components.aws.network import node_addresses
from components.aws.providers.sentinel_quorum import ssm_observation
from components.bundle import tls
from components.bundle.model import NodeLayout
from components.bundle.users import MONITOR, ROLE_KEYS, parse_secret
from components.local.state import new_password
from components.node import image, latency, program, secrets_server
from components.runtime import quorum, ssm_probe
from components.settings import ClusterSettings, parse_settings, subnet_cidrs

Progress = Callable[[str], None]

SECRETS_PORT = 443
STOP_GRACE_S = 45.0  # a clean poweroff of a node takes a few seconds
EXEC_TIMEOUT_S = 120.0
MANAGER_WAIT_S = 30.0
CA_IN_NODE = "/etc/hst-ha-node-target/ca.pem"
# The role's stand-in: moto accepts any key; these are not secrets.
STAND_IN_CREDENTIALS = ("AWS_ACCESS_KEY_ID=node-target", "AWS_SECRET_ACCESS_KEY=node-target")


class NodeTargetError(RuntimeError):
    """The node target cannot run here or did not come up; the message says why and what to do."""


def check_environment() -> None:
    """Root, systemd-nspawn, mmdebstrap, nsenter, overlayfs: a clear message before anything starts."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (it creates network namespaces, overlay mounts and containers)")
    for tool, package in (("systemd-nspawn", "systemd-container"), ("mmdebstrap", "mmdebstrap"),
                          ("nsenter", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed: apt-get install {package} (or run scripts/setup.sh)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("the kernel has no overlayfs (node disks are overlays over the cached image)")
    if problems:
        raise NodeTargetError("the node target cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))


def moto_python() -> str:
    """The interpreter that serves moto: it needs moto's server extras (flask, flask-cors)."""
    python = os.environ.get("HST_HA_MOTO_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", "import flask, flask_cors, moto.moto_server.werkzeug_app"],
                           check=False, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise NodeTargetError(
            f"{python} cannot serve moto (needs flask and flask-cors, pinned in requirements-dev.txt: "
            "pip install -r requirements-dev.txt), or set HST_HA_MOTO_PYTHON to an interpreter that can"
        )
    return python


def _run(argv: list[str], timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NodeTargetError(f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result


def _alive(pid: int) -> bool:
    """Running, not a zombie (a zombie of ours is reaped here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _stop_pid(pid: int, grace_s: float, sig: int = signal.SIGTERM) -> bool:
    """Signal, wait up to grace_s, then SIGKILL; True when it ended within the grace period."""
    if not _alive(pid):
        return True
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.1)
    return False


@dataclass
class NodeRecord:
    index: int
    name: str
    address: str
    netns: str
    secrets_address: str  # this node's way to Secrets Manager (removable: "the secret cannot be read")
    instance_id: str = ""
    nspawn_pid: int = 0


@dataclass
class ClusterRecord:
    run_id: int
    vpc_cidr: str  # the run's VPC block (a /16): the program's 3 subnets, and the hub's addresses
    hub_netns: str
    config: dict[str, Any]  # the stack config the user data was rendered with
    secret_arn: str = ""
    tls_secret_arn: str = ""  # the nodes' TLS secret (tlsEnabled); "" without
    region: str = ""
    secrets_pid: int = 0
    nodes: list[NodeRecord] | None = None
    # None: a kernel bridge, no added latency. A number: the latency switch, one way, per frame.
    latency_ms: float | None = None
    jitter_ms: float = 0.0
    switch_pid: int = 0
    hub_device: str = "br0"  # where the hub's addresses (the gateway, Secrets Manager's) live


def vpc_block(run_id: int) -> str:
    """A /16 per run, from its pid, as the run's `vpcCidr`: 10.96-127.0.0/16, rarely used. The program
    cuts it into its 3 subnets (the first three /18s) and the nodes get addresses in them as on AWS."""
    return f"10.{96 + run_id % 32}.0.0/16"


def hub_address(vpc_cidr: str, host: int) -> str:
    """An address in the block's fourth quarter, which the program leaves free: the hub's (the
    gateway, Secrets Manager's), never a node's."""
    return str(ipaddress.ip_network(vpc_cidr).broadcast_address - 255 + host)


def prefixed(address: str, vpc_cidr: str) -> str:
    """address/prefix of the whole block: every node, in whichever subnet, and the hub share one L2
    segment (the bridge or the switch), as instances in a VPC reach each other across subnets."""
    return f"{address}/{ipaddress.ip_network(vpc_cidr).prefixlen}"


class NodeCluster:
    """N nodes booted from the program's user data; see the module docstring."""

    def __init__(self, state_dir: str | Path, progress: Progress | None = None):
        self.state_dir = Path(state_dir).resolve()
        self._progress = progress or (lambda message: print(f"node-cluster: {message}", file=sys.stderr, flush=True))
        self.record: ClusterRecord | None = None
        self._children: dict[int, subprocess.Popen] = {}

    # ------------------------------------------------------------------ state

    @property
    def _record_file(self) -> Path:
        return self.state_dir / "cluster.json"

    def _save(self) -> None:
        assert self.record is not None
        self._record_file.write_text(json.dumps(asdict(self.record), indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: str | Path, progress: Progress | None = None) -> NodeCluster:
        cluster = cls(state_dir, progress)
        try:
            data = json.loads(cluster._record_file.read_text())
        except (OSError, ValueError):
            raise NodeTargetError(f"no node cluster recorded in {cluster.state_dir} (run `up` first)") from None
        nodes = [NodeRecord(**n) for n in data.pop("nodes") or ()]
        cluster.record = ClusterRecord(**data, nodes=nodes)
        return cluster

    @property
    def nodes(self) -> list[NodeRecord]:
        assert self.record is not None and self.record.nodes is not None
        return self.record.nodes

    @property
    def settings(self) -> ClusterSettings:
        assert self.record is not None
        return parse_settings(self.record.config)

    @property
    def layout(self) -> NodeLayout:
        """Where the nodes keep their files and how they read the secret: the program's own AWS layout."""
        assert self.record is not None
        return aws_layout(self.record.secret_arn, self.record.region, tls_secret_arn=self.record.tls_secret_arn or None)

    @property
    def tls_ca_file(self) -> str | None:
        """tlsEnabled: the cluster CA's certificate on the host, for clients reaching the nodes' ports."""
        return str(self.state_dir / secrets_server.HOST_CA_FILE) if self.settings.tls_enabled else None

    def password(self, role_key: str) -> str:
        """A role's password, from the document this run stored as the secret (as LocalCluster.password)."""
        try:
            return parse_secret((self.state_dir / secrets_server.SECRET_FILE).read_text())[role_key]
        except (OSError, ValueError) as error:
            raise NodeTargetError(f"{self.state_dir / secrets_server.SECRET_FILE}: {error}") from None

    def node(self, name: str) -> NodeRecord:
        for node in self.nodes:
            if name in (node.name, str(node.index + 1), node.address):
                return node
        raise NodeTargetError(f"no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def _node_dir(self, node: NodeRecord) -> Path:
        return self.state_dir / node.name

    # ------------------------------------------------------------------ up

    def up(self, config: dict[str, Any] | None = None, nodes: int = 3, timeout_s: float = 240.0,
           latency_ms: float | None = None, jitter_ms: float = 0.0) -> dict[str, Any]:
        """Build (or reuse) the image, boot every node, return the outputs once verified.
        With `latency_ms` (one way, per frame; 0 allowed) the nodes are joined by the latency switch,
        each frame delayed latency_ms +- jitter_ms (uniform), which also makes `cut`/`heal` possible."""
        check_environment()
        if latency_ms is not None and not 0 <= jitter_ms <= latency_ms:
            raise NodeTargetError(f"--jitter-ms {jitter_ms:g} must be between 0 and --latency-ms {latency_ms:g} "
                                  "(a larger jitter would deliver some frames before they were sent)")
        if self._record_file.exists():
            raise NodeTargetError(f"a node cluster is already recorded in {self.state_dir}: `down` it first")
        python = moto_python()
        settings_config = dict(config or {})
        settings_config.setdefault("nodeCount", nodes)
        run_id = os.getpid()
        vpc_cidr = vpc_block(run_id)
        count = int(settings_config["nodeCount"])
        # The run's own VPC block, and in it the addresses the program derives by itself (host .10
        # upwards of each node's subnet, round-robin), given explicitly so that settings judge them.
        addresses = node_addresses(subnet_cidrs(vpc_cidr), count)
        settings_config["vpcCidr"] = vpc_cidr
        settings_config["nodePrivateIps"] = addresses
        # The node image holds every package (components/node/image.py): a baked AMI, declared as an
        # operator would on AWS, where egress is closed and cloud-init must not try apt.
        settings_config.setdefault("amiId", program.BAKED_AMI)
        settings_config.setdefault("amiHasPackages", True)
        parse_settings(settings_config, aws=True)  # a bad value fails here, before anything is created
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.record = ClusterRecord(
            run_id=run_id, vpc_cidr=vpc_cidr, hub_netns=f"hstha{run_id}-hub", config=settings_config,
            nodes=[NodeRecord(i, f"node-{i + 1}", addresses[i], f"hstha{run_id}-n{i + 1}",
                              hub_address(vpc_cidr, 200 + i))
                   for i in range(count)],
            latency_ms=latency_ms, jitter_ms=jitter_ms if latency_ms is not None else 0.0,
            hub_device="br0" if latency_ms is None else "sw0",
        )
        self._save()
        started = time.monotonic()
        try:
            rootfs = image.ensure_image(log=sys.stderr)
            self._progress("rendering the user data from __main__.py under Pulumi mocks")
            rendered = self._render_user_data(settings_config)
            self.record.secret_arn, self.record.region = rendered["redisAuthSecretArn"], rendered["region"]
            self.record.tls_secret_arn = rendered["tlsSecretArn"]
            self._save()
            # What the nodes read at boot besides their user data: the cluster document, the code archive.
            (self.state_dir / secrets_server.OBJECTS_FILE).write_text(json.dumps(
                {"parameters": rendered["parameters"], "objects": rendered["objects"]}))
            self._make_network()
            if latency_ms is not None:
                self._start_switch()
            self._start_secrets_server(python)
            for index, node in enumerate(self.nodes):
                (self._node_dir(node)).mkdir(exist_ok=True)
                (self._node_dir(node) / "user-data").write_bytes(program.seed_bytes(rendered, index))
                self._boot(node, rootfs, fresh=True)
            self._progress(f"{count} nodes booting; verifying through the node-exec channel (SSM's part)")
            report = self.verify(timeout_s=timeout_s)
        except BaseException:
            self._progress("up failed; stopping what it started")
            self.down(keep=True)
            raise
        self._progress(f"verified failover-ready {time.monotonic() - started:.1f} s after start")
        return self.outputs(report)

    def _render_user_data(self, config: dict[str, Any]) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "components.node.program", json.dumps(config)],
            check=False, capture_output=True, text=True, timeout=300, cwd=program.ROOT,
            env={**os.environ, "PYTHONPATH": str(program.ROOT)},
        )
        if result.returncode != 0:
            raise NodeTargetError(f"rendering the user data failed:\n{result.stderr.strip()[-2000:]}")
        return json.loads(result.stdout)

    def outputs(self, report: quorum.QuorumReport) -> dict[str, Any]:
        s = self.settings
        addresses = [n.address for n in self.nodes]
        assert self.record is not None
        return {
            "masterName": s.master_name,
            "nodePrivateIps": addresses,
            "redisEndpoints": [f"{a}:{s.redis_port}" for a in addresses],
            "sentinelEndpoints": [f"{a}:{s.sentinel_port}" for a in addresses],
            "haproxyEndpoint": f"127.0.0.1:{s.haproxy_port}",
            "instanceIds": [n.instance_id for n in self.nodes],
            "redisAuthSecretArn": self.record.secret_arn,
            "hstInstalled": s.hst_enabled,
            "quorum": report.to_dict(),
            "stateDir": str(self.state_dir),
        }

    # ------------------------------------------------------------------ network

    def _make_network(self) -> None:
        assert self.record is not None
        hub, dev = self.record.hub_netns, self.record.hub_device
        switched = self.record.latency_ms is not None
        _run(["ip", "netns", "add", hub])
        _run(["ip", "-n", hub, "link", "set", "lo", "up"])
        if switched:  # the hub is one more port of the switch
            _run(["ip", "-n", hub, "tuntap", "add", "dev", dev, "mode", "tap"])
        else:
            _run(["ip", "-n", hub, "link", "add", "name", dev, "type", "bridge"])
        _run(["ip", "-n", hub, "addr", "add", prefixed(self.hub_address, self.record.vpc_cidr), "dev", dev])
        _run(["ip", "-n", hub, "link", "set", dev, "up"])
        for node in self.nodes:
            _run(["ip", "netns", "add", node.netns])
            _run(["ip", "-n", node.netns, "link", "set", "lo", "up"])
            # The node's end is eth0 in its namespace; cloud-init's network-config gives it the address.
            if switched:
                _run(["ip", "-n", node.netns, "tuntap", "add", "dev", "eth0", "mode", "tap"])
            else:
                _run(["ip", "-n", hub, "link", "add", "name", f"v{node.index + 1}", "type", "veth",
                      "peer", "name", "eth0", "netns", node.netns])
                _run(["ip", "-n", hub, "link", "set", f"v{node.index + 1}", "master", dev, "up"])
            self.set_secret_reachable(node, True)

    @property
    def hub_address(self) -> str:
        """The hub's own address on the nodes' segment (Secrets Manager's server binds here)."""
        assert self.record is not None
        return hub_address(self.record.vpc_cidr, 1)

    @property
    def switch_control(self) -> Path:
        return self.state_dir / "switch.sock"

    def _start_switch(self) -> None:
        assert self.record is not None and self.record.latency_ms is not None
        ports = [f"hub={self.record.hub_netns}:{self.record.hub_device}"]
        ports += [f"{n.name}={n.netns}:eth0" for n in self.nodes]
        with open(self.state_dir / "switch.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "components.node.latency", str(self.switch_control),
                 str(self.record.latency_ms), str(self.record.jitter_ms), *ports],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=program.ROOT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(program.ROOT)},
            )
        self._children[proc.pid] = proc
        self.record.switch_pid = proc.pid
        self._save()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.switch("stats")
                return
            except (OSError, ValueError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.state_dir / "switch.log").read_text(errors="replace")[-1500:]
                    raise NodeTargetError(f"the latency switch did not start:\n{tail}") from None
                time.sleep(0.1)

    def switch(self, text: str) -> dict[str, Any]:
        """One request to the latency switch (`stats`, `cut NODE`, `heal NODE`); its reply."""
        assert self.record is not None
        if self.record.latency_ms is None:
            raise NodeTargetError("this cluster has no latency switch (bring it up with --latency-ms)")
        return latency.request(self.switch_control, text)

    def cut(self, name: str) -> None:
        """Partition the node: every frame to and from it is dropped, silently, until `heal`."""
        self.switch(f"cut {self.node(name).name}")

    def heal(self, name: str) -> None:
        self.switch(f"heal {self.node(name).name}")

    def set_secret_reachable(self, node: NodeRecord, reachable: bool) -> None:
        """Each node reaches Secrets Manager at an address of its own on the hub; removing it makes
        the secret unreadable for that node only (connections fail as with no route to the endpoint)."""
        assert self.record is not None
        verb = "add" if reachable else "del"
        _run(["ip", "-n", self.record.hub_netns, "addr", verb, f"{node.secrets_address}/32",
              "dev", self.record.hub_device],
             check=False)

    def _start_secrets_server(self, python: str) -> None:
        assert self.record is not None
        d = self.state_dir
        # The program's secret document: one password per role, each as its provider makes them
        # (components.runtime.users_secret.new_password). 0600 before a byte is written.
        secret_file = d / secrets_server.SECRET_FILE
        secret_file.touch(mode=0o600)
        os.chmod(secret_file, 0o600)
        secret_file.write_text(json.dumps({key: new_password() for key in ROLE_KEYS}))
        tls_name: list[str] = []
        if self.record.tls_secret_arn:
            # As the ClusterTls provider makes it: a CA, a certificate per node address. The CA's key is
            # not kept: the node target never grows, and no node may read it anyway.
            tls_file = d / secrets_server.TLS_FILE
            tls_file.touch(mode=0o600)
            os.chmod(tls_file, 0o600)
            document = tls.tls_secret_document([n.address for n in self.nodes])
            tls_file.write_text(json.dumps(document))
            (d / secrets_server.HOST_CA_FILE).write_text(document[tls.CA_CERT])
            tls_name = [self.record.tls_secret_arn.rsplit(":", 1)[1]]
        secrets_server.make_certificates(d, self.record.region, self.hub_address, secrets_server.other_endpoint_names(
            self.record.region, secrets_server.buckets(d)))
        ready = d / secrets_server.READY_FILE
        ready.unlink(missing_ok=True)
        secret_name = self.record.secret_arn.rsplit(":", 1)[1]
        with open(d / "secrets-server.log", "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.record.hub_netns, python, "-m", "components.node.secrets_server",
                 str(d), self.hub_address, str(SECRETS_PORT), self.record.region, secret_name, *tls_name],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=program.ROOT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(program.ROOT)},
            )
        self._children[proc.pid] = proc
        self.record.secrets_pid = proc.pid
        self._save()
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (d / "secrets-server.log").read_text(errors="replace")[-1500:]
                raise NodeTargetError(f"the Secrets Manager stand-in (moto) did not start:\n{tail}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ nodes

    def _seed(self, node: NodeRecord) -> dict[str, bytes]:
        assert self.record is not None
        region = self.record.region
        ca = (self.state_dir / secrets_server.CA_FILE).read_text()
        # Secrets Manager at the node's own (removable) address; SSM and S3 at the hub's.
        hosts = [(node.secrets_address, secrets_server.endpoint_name(region))]
        hosts += [(self.hub_address, name)
                  for name in secrets_server.other_endpoint_names(region, secrets_server.buckets(self.state_dir))]
        vendor = {
            "bootcmd": [
                ["sh", "-c", 'mkdir -p "${1%/*}" && printf "%s" "$2" > "$1"', "sh", CA_IN_NODE, ca],
                *(["sh", "-c", 'sed -i "/ $2\\$/d" /etc/hosts && echo "$1 $2" >> /etc/hosts', "sh", address, name]
                  for address, name in hosts),
                ["systemctl", "set-environment", *STAND_IN_CREDENTIALS, f"AWS_CA_BUNDLE={CA_IN_NODE}"],
            ],
        }
        network = {"version": 2, "ethernets": {"eth0": {"addresses": [prefixed(node.address, self.record.vpc_cidr)]}}}
        meta = {"instance-id": node.instance_id, "local-hostname": node.name}
        header = "#cloud-config\n# hst-ha node target: the instance role and the regional endpoint's stand-ins.\n"
        return {
            "user-data": (self._node_dir(node) / "user-data").read_bytes(),
            "meta-data": yaml.safe_dump(meta).encode(),
            "network-config": yaml.safe_dump(network).encode(),
            "vendor-data": (header + yaml.safe_dump(vendor, width=10_000)).encode(),
        }

    def _root(self, node: NodeRecord) -> Path:
        return self._node_dir(node) / "root"

    def _boot(self, node: NodeRecord, rootfs: Path, fresh: bool) -> None:
        """Mount the node's disk over the image and start its container; `fresh` starts a new disk
        and a new instance id (a new EC2 instance with the same user data)."""
        d = self._node_dir(node)
        disk = d / "disk"
        if fresh:
            shutil.rmtree(disk, ignore_errors=True)
            node.instance_id = f"i-{uuid.uuid4().hex[:17]}"
        (disk / "upper").mkdir(parents=True, exist_ok=True)
        (disk / "work").mkdir(parents=True, exist_ok=True)
        root = self._root(node)
        root.mkdir(exist_ok=True)
        if not os.path.ismount(root):
            _run(["mount", "-t", "overlay", "overlay", "-o",
                  f"lowerdir={rootfs},upperdir={disk / 'upper'},workdir={disk / 'work'}", str(root)])
        if fresh:
            seed = root / "var/lib/cloud/seed/nocloud"
            seed.mkdir(parents=True, exist_ok=True)
            for name, content in self._seed(node).items():
                (seed / name).write_bytes(content)
        with open(d / "console.log", "ab") as console:
            proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
                 f"--directory={root}", f"--machine={node.name}", f"--hostname={node.name}",
                 f"--network-namespace-path=/run/netns/{node.netns}", "--capability=CAP_NET_ADMIN",
                 "--link-journal=no", "--resolv-conf=off", "--timezone=off", "--console=read-only"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True,
            )
        self._children[proc.pid] = proc
        node.nspawn_pid = proc.pid
        self._save()

    def leader(self, node: NodeRecord, timeout_s: float = 20.0) -> int:
        """PID (on the host) of the node's systemd."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not node.nspawn_pid or not _alive(node.nspawn_pid):
                raise NodeTargetError(f"{node.name} is not running (see {self._node_dir(node) / 'console.log'})")
            try:
                children = Path(f"/proc/{node.nspawn_pid}/task/{node.nspawn_pid}/children").read_text().split()
            except OSError:
                children = []
            for child in children:
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return int(child)
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise NodeTargetError(f"{node.name}: no systemd in its container after {timeout_s:.0f} s")
            time.sleep(0.1)

    def host_pids(self, node: NodeRecord, comm: str) -> list[int]:
        """Host pids of the node's processes named `comm` (signalled from here, a fault lands at once;
        through exec_in it would wait for a transient unit to start)."""
        leader_ns = os.readlink(f"/proc/{self.leader(node, timeout_s=1)}/ns/pid")
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() == comm and os.readlink(entry / "ns/pid") == leader_ns:
                    found.append(int(entry.name))
            except OSError:
                pass
        return found

    def exec_in(self, node: NodeRecord, command: list[str], stdin: bytes | None = None,
                timeout_s: float = EXEC_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run `command` as root in a transient unit of the node's systemd (SSM Run Command's part):
        output and exit status pass through."""
        argv = ["nsenter", f"--target={self.leader(node)}", "--all", "--",
                "/usr/bin/systemd-run", "--quiet", "--wait", "--pipe", "--collect",
                f"--property=RuntimeMaxSec={int(timeout_s)}", "--", *command]
        # Just after boot the node's systemd may not listen yet (as an SSM agent is not up yet).
        manager_deadline = time.monotonic() + MANAGER_WAIT_S
        while True:
            try:
                result = subprocess.run(argv, check=False, input=stdin or b"", capture_output=True,
                                        timeout=timeout_s + 10)
            except subprocess.TimeoutExpired:
                raise NodeTargetError(f"{node.name}: {' '.join(command)} did not finish in {timeout_s:.0f} s") from None
            if result.returncode == 0 or not result.stderr.startswith(b"Failed to connect to bus"):
                return result
            if time.monotonic() > manager_deadline:
                raise NodeTargetError(f"{node.name}: its systemd did not accept commands within {MANAGER_WAIT_S:.0f} s")
            time.sleep(0.5)

    def stop_node(self, name: str, grace_s: float = STOP_GRACE_S) -> None:
        """Power the node off cleanly (its disk stays); killed after grace_s."""
        node = self.node(name)
        if node.nspawn_pid and _alive(node.nspawn_pid):
            leader = None
            with contextlib.suppress(NodeTargetError):
                leader = self.leader(node, timeout_s=1)
            # nspawn turns SIGTERM into the container's poweroff signal.
            if not _stop_pid(node.nspawn_pid, grace_s) and leader:
                _stop_pid(leader, 5, signal.SIGKILL)
        self._reap(node.nspawn_pid)
        node.nspawn_pid = 0
        self._save()
        self._unmount(node)

    def kill_node(self, name: str) -> None:
        """Pull the plug: SIGKILL the node's systemd, which ends everything in its PID namespace."""
        node = self.node(name)
        if node.nspawn_pid and _alive(node.nspawn_pid):
            with contextlib.suppress(NodeTargetError):
                _stop_pid(self.leader(node, timeout_s=1), 5, signal.SIGKILL)
            _stop_pid(node.nspawn_pid, 10)
        self._reap(node.nspawn_pid)
        node.nspawn_pid = 0
        self._save()
        self._unmount(node)

    def start_node(self, name: str) -> None:
        node = self.node(name)
        if node.nspawn_pid and _alive(node.nspawn_pid):
            raise NodeTargetError(f"{node.name} is running")
        self._boot(node, image.image_path(), fresh=False)

    def replace_node(self, name: str) -> None:
        """A new instance for the node: fresh disk, new instance id, the same user data."""
        node = self.node(name)
        self.stop_node(node.name)
        self._boot(node, image.image_path(), fresh=True)

    def _reap(self, pid: int) -> None:
        proc = self._children.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def _unmount(self, node: NodeRecord) -> None:
        root = self._root(node)
        for _ in range(50):
            if not os.path.ismount(root):
                return
            if _run(["umount", str(root)], check=False).returncode == 0:
                return
            time.sleep(0.2)
        _run(["umount", "--lazy", str(root)], check=False)

    # ------------------------------------------------------------------ verify

    def probe_script(self, via: NodeRecord) -> str:
        """The SentinelQuorum provider's probe, as it renders it for SSM (components.runtime.ssm_probe)."""
        s = self.settings
        assert self.record is not None
        # As the provider: the node's own way to the monitoring password, run with the node's role.
        password_command = f"{self.layout.secret_script} {MONITOR.key}"
        return ssm_probe.render_probe_script(
            [f"{n.address}:{s.sentinel_port}" for n in self.nodes],
            [f"{n.address}:{s.redis_port}" for n in self.nodes],
            s.master_name, password_command, f"127.0.0.1:{s.haproxy_port}",
            self.layout.tls_ca_file if s.tls_enabled else None,
        )

    def observe(self, node: NodeRecord) -> quorum.Observation:
        s = self.settings
        result = self.exec_in(node, ["bash"], stdin=self.probe_script(node).encode(), timeout_s=60)
        if result.returncode != 0:
            raise quorum.ObservationError(
                f"the probe on {node.name} exited {result.returncode}: "
                + result.stderr.decode(errors="replace").strip()[-300:]
            )
        try:
            output = ssm_probe.parse_probe_output(result.stdout.decode())
        except ssm_probe.ProbeError as error:
            raise quorum.ObservationError(f"{node.name}: {error}") from None
        props = {"sentinels": [f"{n.address}:{s.sentinel_port}" for n in self.nodes],
                 "haproxy_endpoints": [f"127.0.0.1:{s.haproxy_port}"]}
        return ssm_observation(output, props)

    def verify(self, timeout_s: float = 240.0, via: str | None = None, allow_missing: int = 0) -> quorum.QuorumReport:
        """What the SentinelQuorum provider verifies via ssm, asked through exec_in (next node each
        attempt, as the provider cycles through instances)."""
        s = self.settings
        turn = [0]

        def observe(_socket_timeout: float) -> quorum.Observation:
            candidates = [self.node(via)] if via else [n for n in self.nodes if n.nspawn_pid]
            node = candidates[turn[0] % len(candidates)]
            turn[0] += 1
            try:
                return self.observe(node)
            except NodeTargetError as error:
                raise quorum.ObservationError(str(error)) from None

        return quorum.verify_observed(
            observe, [(n.address, s.sentinel_port) for n in self.nodes], s.master_name, s.node_count,
            timeout_s=timeout_s, progress=self._progress, allow_missing_sentinels=allow_missing,
        )

    # ------------------------------------------------------------------ live apply (LiveSettings' part)

    def document(self) -> tuple[str, str]:
        """(parameter name, text) of the cluster document as the program made it at `up`."""
        parameters = json.loads((self.state_dir / secrets_server.OBJECTS_FILE).read_text())["parameters"]
        ((name, text),) = parameters.items()
        return str(name), str(text)

    def put_document(self, text: str) -> None:
        """Overwrite the cluster document in SSM (moto), as `pulumi up` updates the parameter in place."""
        assert self.record is not None
        name, _ = self.document()
        code = ("import sys, boto3\n"
                "ssm = boto3.client('ssm', region_name=sys.argv[1], endpoint_url=sys.argv[2], verify=sys.argv[3],\n"
                "                   aws_access_key_id='node-target', aws_secret_access_key='node-target')\n"
                "ssm.put_parameter(Name=sys.argv[4], Value=sys.stdin.read(), Type='String', Overwrite=True)\n")
        result = subprocess.run(
            ["ip", "netns", "exec", self.record.hub_netns, sys.executable, "-c", code, self.record.region,
             f"https://{self.hub_address}:{SECRETS_PORT}", str(self.state_dir / secrets_server.CA_FILE), name],
            check=False, input=text, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise NodeTargetError(f"could not update the cluster document {name}: {result.stderr.strip()[-500:]}")

    def apply(self, settings: ClusterSettings, text: str) -> dict[str, dict[str, Any]]:
        """The LiveSettings update's node part, through exec_in (SSM Run Command's): each node in turn runs
        the provider's own apply script for the document `text` (already in SSM), judged by its judge.
        Per node name what it runs afterwards."""
        from components.bundle.boot import digest
        from components.runtime import ssm_apply

        sha = digest(text)
        script = ssm_apply.render_apply_script(self.layout, sha)
        results = {}
        for node in self.nodes:
            result = self.exec_in(node, ["bash"], stdin=script.encode(), timeout_s=150)
            if result.returncode != 0:
                raise NodeTargetError(f"{node.name}: the apply script exited {result.returncode}: "
                                      f"{result.stderr.decode(errors='replace').strip()[-300:]}")
            results[node.name] = ssm_apply.judge_apply_output(node.instance_id, result.stdout.decode(), settings, sha)
            results[node.name]["output"] = result.stdout.decode()
        return results

    def membership_step(self, node: NodeRecord, step: str, step_args: Sequence[str] = ()) -> tuple[Any, str]:
        """A ClusterMembership / aws_switchover step through exec_in (SSM Run Command's): the node runs the
        provider's own files/membership.sh (`cluster` with `step_args`, or `stop`). (Its result as the
        provider reads it, the raw output.)"""
        from components.runtime import ssm_membership

        script = ssm_membership.render_membership_script(self.layout, step, step_args)
        result = self.exec_in(node, ["bash"], stdin=script.encode(), timeout_s=ssm_membership.STEP_TIMEOUT_S + 30)
        if result.returncode != 0:
            raise NodeTargetError(f"{node.name}: the membership script exited {result.returncode}: "
                                  f"{result.stderr.decode(errors='replace').strip()[-300:]}")
        encoded = result.stdout.decode()
        place = ssm_membership.NodeApply(node.instance_id, node.address)
        if step == "stop":
            return ssm_probe.parse_probe_output(encoded).replies.get("stop"), encoded
        return ssm_membership.cluster_step_result(place, encoded), encoded

    def status(self) -> dict[str, Any]:
        """Per node: running or not, cloud-init's status and the hst-ha units' states."""
        rows = []
        units = ["hst-ha-redis", "hst-ha-sentinel", "hst-ha-haproxy"]
        for node in self.nodes:
            row: dict[str, Any] = {"node": node.name, "address": node.address, "instanceId": node.instance_id,
                                   "running": bool(node.nspawn_pid and _alive(node.nspawn_pid))}
            if row["running"]:
                try:
                    ci = self.exec_in(node, ["cloud-init", "status"], timeout_s=20)
                    row["cloudInit"] = ci.stdout.decode().strip().removeprefix("status: ")
                    active = self.exec_in(node, ["systemctl", "is-active", *units], timeout_s=20)
                    # A short answer (a unit missing) shows as such rather than failing the status.
                    row["units"] = dict(zip(units, active.stdout.decode().split(), strict=False))
                except NodeTargetError as error:
                    row["error"] = str(error)
            rows.append(row)
        return {"nodes": rows, "stateDir": str(self.state_dir)}

    # ------------------------------------------------------------------ down

    def down(self, keep: bool = False) -> None:
        """Stop every node, the secrets server and the namespaces; remove the state unless `keep`."""
        if self.record is None:
            return
        for node in self.nodes:
            try:
                self.stop_node(node.name, grace_s=20)
            except NodeTargetError as error:
                self._progress(f"{node.name}: {error}")
        if self.record.secrets_pid:
            # `ip netns exec` execs the interpreter: the pid is the server's.
            _stop_pid(self.record.secrets_pid, 10)
            self._reap(self.record.secrets_pid)
            self.record.secrets_pid = 0
        if self.record.switch_pid:
            _stop_pid(self.record.switch_pid, 10)
            self._reap(self.record.switch_pid)
            self.record.switch_pid = 0
        for ns in [n.netns for n in self.nodes] + [self.record.hub_netns]:
            _run(["ip", "netns", "del", ns], check=False)
        if keep:
            self._save()
        else:
            for node in self.nodes:
                if os.path.ismount(self._root(node)):
                    raise NodeTargetError(f"{self._root(node)} is still mounted; not removing {self.state_dir}")
            shutil.rmtree(self.state_dir, ignore_errors=True)
