"""The cluster document: every setting that reaches the nodes' configuration, and the membership.

One readable JSON object (pretty, keys sorted, so a preview diff of a timing change is one line):

    {"format": "hst-ha cluster document 1",
     "initialPrimary": "10.42.1.10",
     "nodes": [{"address": "10.42.1.10", "index": 0, "name": "node-1"}, ...],
     "settings": {"downAfterMs": 5000, "failoverTimeoutMs": 15000, ...}}

On AWS it is an SSM parameter Pulumi updates in place (components/aws/cluster.py); each node reads
it at boot (components/bundle/boot.py) and renders its configuration from it with the same renderer
the local target runs (`render_bundle`). A node's user data holds only its identity, the scripts (by
digest) and where this document is, so changing a timing or the membership changes this document
and no node's user data.

Stdlib only, no Pulumi: the node imports it with the distribution's Python. `NodeSettings`, the
renderer's input, is what a document parses to; it carries the same attribute names as
`components.settings.ClusterSettings` for what it holds, so the renderers read either alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.bundle.names import majority, node_name

if TYPE_CHECKING:
    from components.settings import ClusterSettings

__all__ = ["FORMAT", "SETTING_KEYS", "ClusterDocument", "DocumentError", "NodeSettings", "build", "dump", "parse"]

FORMAT = "hst-ha cluster document 1"


class DocumentError(ValueError):
    """A cluster document that cannot be used: the message names the key and what is wrong."""


@dataclass(frozen=True)
class NodeSettings:
    """What of the cluster's settings reaches a node's files (config templates, node.env)."""

    node_count: int
    redis_port: int
    sentinel_port: int
    haproxy_port: int
    master_name: str
    sentinel_quorum: int
    down_after_ms: int
    failover_timeout_ms: int
    parallel_syncs: int
    min_replicas_to_write: int
    min_replicas_max_lag: int
    backup_interval_minutes: int
    tls_enabled: bool
    hst_installer_url: str | None = None
    hst_installer_sha256: str | None = None
    hst_redis_password_setting: str | None = None

    @property
    def hst_enabled(self) -> bool:
        return self.hst_installer_url is not None

    @property
    def sentinel_majority(self) -> int:
        return majority(self.node_count)


# (document key, NodeSettings attribute, type): the keys are the stack settings' own names
# (Pulumi.yaml), so the document reads like the config that changed it. nodeCount is not among them:
# the membership (`nodes`) says it.
_SETTINGS: tuple[tuple[str, str, type], ...] = (
    ("redisPort", "redis_port", int),
    ("sentinelPort", "sentinel_port", int),
    ("haproxyPort", "haproxy_port", int),
    ("masterName", "master_name", str),
    ("sentinelQuorum", "sentinel_quorum", int),
    ("downAfterMs", "down_after_ms", int),
    ("failoverTimeoutMs", "failover_timeout_ms", int),
    ("parallelSyncs", "parallel_syncs", int),
    ("minReplicasToWrite", "min_replicas_to_write", int),
    ("minReplicasMaxLag", "min_replicas_max_lag", int),
    ("backupIntervalMinutes", "backup_interval_minutes", int),
    ("tlsEnabled", "tls_enabled", bool),
    ("hstInstallerUrl", "hst_installer_url", str),
    ("hstInstallerSha256", "hst_installer_sha256", str),
    ("hstRedisPasswordSetting", "hst_redis_password_setting", str),
)
_OPTIONAL = frozenset({"hstInstallerUrl", "hstInstallerSha256", "hstRedisPasswordSetting"})
SETTING_KEYS = tuple(key for key, _, _ in _SETTINGS)


@dataclass(frozen=True)
class ClusterDocument:
    settings: NodeSettings
    addresses: tuple[str, ...]  # node i's address at index i; node 0 is the initial primary

    @property
    def initial_primary(self) -> str:
        return self.addresses[0]


def build(settings: ClusterSettings | NodeSettings, addresses: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The document (as a JSON-ready dict) of a cluster with these settings and node addresses."""
    if len(addresses) != settings.node_count:
        raise DocumentError(f"{len(addresses)} node addresses given for nodeCount {settings.node_count}")
    return {
        "format": FORMAT,
        "initialPrimary": addresses[0],
        "nodes": [{"address": a, "index": i, "name": node_name(i)} for i, a in enumerate(addresses)],
        "settings": {key: getattr(settings, attribute) for key, attribute, _ in _SETTINGS},
    }


def dump(document: dict[str, Any]) -> str:
    """The stored text: pretty and key-sorted, so that a diff shows the keys that changed and only them."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def parse(text: str) -> ClusterDocument:
    """The renderer's input from a document's text; refuses anything it does not fully understand."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise DocumentError(f"the cluster document is not JSON: {error}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise DocumentError(f"the cluster document's format is {got!r}, expected {FORMAT!r} (a newer program?)")
    unknown = set(raw) - {"format", "initialPrimary", "nodes", "settings"}
    if unknown:
        raise DocumentError(f"the cluster document has unknown keys {sorted(unknown)}")
    addresses = _addresses(raw.get("nodes"))
    if raw.get("initialPrimary") != addresses[0]:
        raise DocumentError(f"initialPrimary {raw.get('initialPrimary')!r} must be node-1's address {addresses[0]}")
    values = raw.get("settings")
    if not isinstance(values, dict):
        raise DocumentError("the cluster document's settings must be an object")
    missing, extra = set(SETTING_KEYS) - set(values), set(values) - set(SETTING_KEYS)
    if missing or extra:
        raise DocumentError(f"the cluster document's settings lack {sorted(missing)} / have unknown {sorted(extra)}")
    fields: dict[str, Any] = {"node_count": len(addresses)}
    for key, attribute, kind in _SETTINGS:
        value = values[key]
        # bool is an int to Python; a JSON true is no port.
        typed = isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)
        ok = (value is None and key in _OPTIONAL) or typed
        if not ok:
            raise DocumentError(f"settings.{key} must be {kind.__name__}, got {value!r}")
        fields[attribute] = value
    return ClusterDocument(NodeSettings(**fields), tuple(addresses))


def _addresses(nodes: Any) -> list[str]:
    if not isinstance(nodes, list) or not nodes:
        raise DocumentError("the cluster document's nodes must be a non-empty list")
    addresses = []
    for i, node in enumerate(nodes):
        expected = {"address", "index", "name"}
        if not isinstance(node, dict) or set(node) != expected:
            raise DocumentError(f"nodes[{i}] must be an object with exactly {sorted(expected)}, got {node!r}")
        if node["index"] != i or node["name"] != node_name(i) or not isinstance(node["address"], str):
            raise DocumentError(f"nodes[{i}] must be index {i}, name {node_name(i)} and an address, got {node!r}")
        addresses.append(node["address"])
    if len(set(addresses)) != len(addresses):
        raise DocumentError(f"the cluster document's node addresses must be distinct, got {addresses}")
    return addresses
