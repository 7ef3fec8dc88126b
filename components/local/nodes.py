"""The local target's nodes: loopback "hosts" 127.0.0.11, .12, ... and each node's bundle, rendered
exactly as for AWS but for the addresses, the node's home and how the boot script reads the secrets."""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from pathlib import Path

from components.bundle import (
    Bundle,
    NodeLayout,
    NodePlace,
    Sinks,
    StartStep,
    node_name,
    render_bundle,
)
from components.local.errors import LocalClusterError
from components.settings import ClusterSettings

__all__ = ["DAEMONS", "DEFAULT_BASE_ADDRESS", "LOCAL_MAX_NODES", "LocalNode", "local_addresses", "render_node"]

LOCAL_MAX_NODES = 7
DEFAULT_BASE_ADDRESS = "127.0.0.11"
DAEMONS = ("redis", "sentinel", "haproxy")  # the bundle's daemon steps, in start order


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

    def ready_endpoint(self, step_name: str) -> tuple[str, int]:
        """Where a daemon step listens once it is ready."""
        step = self.step(step_name)
        if step.ready_address is None or step.ready_port is None:
            raise KeyError(f"{self.name} {step_name} is not a daemon with a ready port")
        return step.ready_address, step.ready_port

    def pid_file(self, step: str) -> Path:
        return Path(self.layout.run) / f"{step}.pid"

    def log(self, name: str) -> Path:
        return Path(self.layout.log) / name


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


def render_node(settings: ClusterSettings, state_dir: Path, addresses: tuple[str, ...], index: int,
                password_file: Path, tls_file: Path | None = None) -> LocalNode:
    """The node's INITIAL bundle: rendering is pure, so this is the same bundle every time."""
    home = state_dir / node_name(index)
    layout = NodeLayout(
        home=str(home),
        secrets_command=f"cat {shlex.quote(str(password_file))}",
        haproxy_address=addresses[index],
        # Each node's events and metrics as JSON lines in its own log directory; snapshots under its home.
        sinks=Sinks(cluster=f"local/{state_dir.name}", events=f"file:{home}/log/events.jsonl",
                    metrics=f"file:{home}/log/metrics.jsonl", backups=f"file:{home}/backups"),
        # The TLS secret's local stand-in, as the password file is the users secret's.
        tls_command=f"cat {shlex.quote(str(tls_file))}" if tls_file else None,
    )
    bundle = render_bundle(settings, NodePlace(index, addresses), layout)
    return LocalNode(index, addresses[index], layout, bundle)
