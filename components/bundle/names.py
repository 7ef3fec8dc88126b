"""Every name the bundle's pieces share, defined once: what the renderer writes, the scripts and the
fence read, and the local target and the drills look up in HAProxy's statistics."""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "FRONTEND", "GUARD_BACKEND_PREFIX", "PASSWORD_ALPHABET", "PASSWORD_CHARACTERS", "ROUTED_BACKEND",
    "TLS_CA_CERT", "guard_backend", "majority", "node_name", "sentinel_id", "sentinel_server_name", "tls_cert_entry",
    "tls_key_entry", "tls_node_entries",
]

# Each role's placeholder (components/bundle/users.py) stands for its password in the config templates.
# The boot script refuses any other password: the value goes into redis.conf, sentinel.conf and an
# HAProxy `tcp-check send` line, none of which has one quoting rule that fits all three. A bracket
# expression body, as bash regexes, `tr` and Python's `re` all read it.
PASSWORD_ALPHABET = "A-Za-z0-9"
# The same set, spelled out for Python's `secrets.choice`.
PASSWORD_CHARACTERS = "".join(c for c in map(chr, range(128)) if re.fullmatch(f"[{PASSWORD_ALPHABET}]", c))

FRONTEND = "redis_primary"
ROUTED_BACKEND = "redis_primary"  # the backend whose servers are the nodes' Redis, one per node
# Guard backend of a routed server: its servers are the Sentinels, each UP while it names that server.
GUARD_BACKEND_PREFIX = "sentinels_name_"


def majority(node_count: int) -> int:
    """How many Sentinels (or guards) make a majority of `node_count` nodes."""
    return node_count // 2 + 1


def node_name(index: int) -> str:
    """node-1, node-2, ...: also the server's name in the routed backend."""
    return f"node-{index + 1}"


def guard_backend(server: str) -> str:
    """The guard backend of a routed server: the prefix, then the server name with '-' made '_'.
    The fence (files/hst-ha-fence.lua) applies the same rule to find a server's guard."""
    return GUARD_BACKEND_PREFIX + server.replace("-", "_")


def sentinel_server_name(node: str) -> str:
    """A guard backend's server for the Sentinel on `node`."""
    return f"sentinel-{node}"


def sentinel_id(address: str, port: int) -> str:
    """A stable Sentinel run id per node address, so every node can be pre-seeded with its peers' ids
    (and a replaced node keeps its predecessor's identity)."""
    return hashlib.sha1(f"hst-ha sentinel {address}:{port}".encode()).hexdigest()


# The TLS secret (components/bundle/tls.py makes it): one entry for the CA certificate, and per node
# address one for its certificate and one for its key. A node writes its own three at boot.
TLS_CA_CERT = "ca.crt"


def tls_cert_entry(address: str) -> str:
    return f"{address}.crt"


def tls_key_entry(address: str) -> str:
    return f"{address}.key"


def tls_node_entries(address: str) -> tuple[str, str, str]:
    """The entries one node reads: the CA certificate, its certificate, its key."""
    return TLS_CA_CERT, tls_cert_entry(address), tls_key_entry(address)
