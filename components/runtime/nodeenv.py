"""What the node's Python daemons (events, metrics, backup) share: the node's data file and its secrets.

Shipped to every node as <home>/components/runtime/nodeenv.py and run from <home> with
`python3 -m` (components/bundle/observe.py), so the node imports the very modules the local target
and the tests import. Only the standard library here: the node has python3, python3-redis and
python3-boto3 and nothing else.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["Sink", "node_env", "role_password", "secret", "tls_kwargs"]


def node_env(path: str) -> dict[str, str]:
    """node.env as a dict: KEY=value lines, values quoted for the shell (components/bundle/scripts.py)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = " ".join(shlex.split(value))
    return values


def tls_kwargs(ca_file: str | None) -> dict[str, Any]:
    """redis-py's connection arguments for a node's Redis or Sentinel port: TLS, the server's
    certificate verified against the cluster CA and its IP address (tlsEnabled), when `ca_file` is
    set; nothing otherwise. Every Python client of a node port takes its TLS from here. HAProxy's
    frontend on loopback is plaintext: its clients pass None."""
    if not ca_file:
        return {}
    return {"ssl": True, "ssl_ca_certs": ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": True}


def role_password(secret_script: str | Path, role: str) -> str:
    """A role's password (components/bundle/users.py), through the node's one secret helper
    (`secret_script`, its bin/hst-ha-secret), never from a command line. Its errors name the role,
    never a value, so their tail is quoted."""
    done = subprocess.run([str(secret_script), role], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"could not fetch the {role} password with {secret_script} (exit {done.returncode}): "
                           f"{done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def secret(env: dict[str, str], role: str) -> str:
    """A role's password, through the bin/hst-ha-secret beside the node's data directory."""
    return role_password(Path(env["DATA"]).parent / "bin" / "hst-ha-secret", role)


class Sink:
    """Where a daemon's records go: `file:<path>` appends JSON lines (the local target), anything
    else names an AWS service the subclass writes to. One record, one write(2) with O_APPEND, so
    several nodes can share one local file."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.path = Path(spec[len("file:") :]) if spec.startswith("file:") else None

    def append_lines(self, lines: list[str]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
                out.flush()
