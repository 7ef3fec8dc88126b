"""The bundle's data model: where a node sits, where its files live, and what the renderer hands to a target."""

from __future__ import annotations

from dataclasses import dataclass

from components.bundle.names import node_name

__all__ = ["Bundle", "BundleFile", "NodeLayout", "NodePlace", "Sinks", "StartStep"]


@dataclass(frozen=True)
class Sinks:
    """Where a node's observers write: `file:<path>` on the local target, AWS services on EC2."""

    cluster: str  # the CloudWatch `Cluster` dimension and the events' `cluster` field
    events: str  # eventbridge:<region> | file:<path>
    metrics: str  # cloudwatch:<region>:<namespace> | file:<path>
    backups: str  # s3://<bucket>/<prefix> | file:<directory>
    backup_interval_minutes: int = 0


@dataclass(frozen=True)
class NodePlace:
    """Where a node sits in the cluster. Node 0 starts as primary; every address is known in advance."""

    index: int
    addresses: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.index < len(self.addresses):
            raise ValueError(f"node index {self.index} is outside the cluster of {len(self.addresses)} nodes")
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError(f"node addresses must be distinct, got {list(self.addresses)}")

    @property
    def address(self) -> str:
        return self.addresses[self.index]

    @property
    def initial_primary(self) -> str:
        return self.addresses[0]

    @property
    def is_initial_primary(self) -> bool:
        return self.index == 0

    @property
    def name(self) -> str:
        return node_name(self.index)


@dataclass(frozen=True)
class NodeLayout:
    """What differs between targets: where files live, how the secrets are fetched, where HAProxy listens."""

    home: str  # /opt/hst-ha on AWS; <state dir>/node-N locally
    # Shell command that prints the Redis users' secret (JSON, one password per role; bundle/users.py).
    secrets_command: str
    haproxy_address: str = "127.0.0.1"  # the local target binds each node's own loopback address
    licence_command: str | None = None  # prints the HST Server licence; only where HSTS is installed
    # Where the node's events, metrics and snapshots go (components/bundle/observe.py); None: no
    # observers (exporters, events, collector, backups) in the bundle.
    sinks: Sinks | None = None
    # With tlsEnabled: shell command that prints the TLS secret (JSON: the CA certificate, each node's
    # certificate and key; components/bundle/tls.py).
    tls_command: str | None = None

    @property
    def etc(self) -> str:
        return f"{self.home}/etc"

    @property
    def data(self) -> str:
        return f"{self.home}/data"

    @property
    def log(self) -> str:
        return f"{self.home}/log"

    @property
    def run(self) -> str:
        return f"{self.home}/run"

    @property
    def bin(self) -> str:
        return f"{self.home}/bin"

    @property
    def hsts_script(self) -> str:
        return f"{self.bin}/hst-ha-hsts"

    @property
    def boot_script(self) -> str:
        return f"{self.bin}/hst-ha-boot"

    @property
    def secret_script(self) -> str:
        return f"{self.bin}/hst-ha-secret"

    @property
    def tls_ca_file(self) -> str:
        """The CA certificate: public, readable by every daemon's user (HAProxy's too)."""
        return f"{self.etc}/tls-ca.crt"

    @property
    def tls_cert_file(self) -> str:
        """The node's certificate and key live with Redis's data: Redis and Sentinel's user owns them."""
        return f"{self.data}/tls/node.crt"

    @property
    def tls_key_file(self) -> str:
        return f"{self.data}/tls/node.key"

    @property
    def redis_conf(self) -> str:
        return f"{self.data}/redis.conf"

    @property
    def sentinel_conf(self) -> str:
        return f"{self.data}/sentinel.conf"

    @property
    def haproxy_cfg(self) -> str:
        return f"{self.etc}/haproxy.cfg"

    @property
    def haproxy_socket(self) -> str:
        return f"{self.run}/haproxy.sock"

    @property
    def haproxy_fence(self) -> str:
        return f"{self.etc}/hst-ha-fence.lua"

    @property
    def sentinel_timers_script(self) -> str:
        return f"{self.bin}/hst-ha-sentinel-timers"

    @property
    def redis_start_gate(self) -> str:
        return f"{self.bin}/hst-ha-redis-start-gate"

    @property
    def node_env(self) -> str:
        """The node's one data file: every per-node value its scripts read (the scripts are the same
        on every node). Each script finds it as ../etc/node.env from its own directory."""
        return f"{self.etc}/node.env"

    def template(self, path: str) -> str:
        return f"{self.etc}/templates/{path.rsplit('/', 1)[-1]}"


@dataclass(frozen=True)
class BundleFile:
    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class StartStep:
    """One start step, in order. `daemon` steps run in the foreground under a supervisor
    (a systemd unit on AWS, a child process locally); the others run to completion."""

    name: str
    argv: tuple[str, ...]
    daemon: bool
    user: str | None = None  # account the AWS unit runs as; the local target runs everything as its caller
    ready_port: int | None = None  # a daemon is ready once this TCP port on `ready_address` accepts
    ready_address: str | None = None
    # Run after EVERY start of the daemon, once it is ready (systemd ExecStartPost on AWS): for
    # settings the daemon does not keep in its config file.
    post_start: tuple[str, ...] | None = None
    # Every daemon requires it: a oneshot unit on AWS (run at every boot until it succeeds, before
    # the daemons), run to its end before any daemon locally.
    prepares: bool = False
    timeout_s: int | None = None  # how long one run of a one-shot step may take
    # Run before EVERY start of the daemon (systemd ExecStartPre on AWS); the daemon does not start
    # when it fails. It may wait up to `pre_start_timeout_s`.
    pre_start: tuple[str, ...] | None = None
    pre_start_timeout_s: int = 0
    workdir: str | None = None  # the node's Python daemons run `python3 -m` from the node's home


@dataclass(frozen=True)
class Bundle:
    node: str
    address: str
    files: tuple[BundleFile, ...]
    start_steps: tuple[StartStep, ...]

    def file(self, path: str) -> BundleFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)
