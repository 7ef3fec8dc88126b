"""The node's scripts and HAProxy fence, shipped from `files/`, the Python modules they run, and the
one data file that holds everything that differs between nodes.

The scripts are the same bytes on every node (`shipped`); each reads its node's values from `node.env`
(`NodeLayout.node_env`, ../etc/node.env from the script's own directory): `KEY=value` lines, each
value quoted for the shell, which the scripts `source`. The fence needs no data file: it reads
the names it needs from haproxy.cfg (`setenv`) and the rest from HAProxy's own backends.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources

from components.bundle.model import BundleFile

__all__ = [
    "ACCESS_KEY", "BOOT", "EXPORTER", "FENCE", "FENCE_METRICS", "HSTS", "REDIS_START_GATE", "SECRET",
    "NODE_MODULES", "SENTINEL_TIMERS", "SHIPPED", "merge_env", "module_files", "node_env", "runtime_module",
    "shipped",
]

BOOT = "hst-ha-boot.sh"
SECRET = "hst-ha-secret.sh"
SENTINEL_TIMERS = "hst-ha-sentinel-timers.sh"
HSTS = "hst-ha-hsts.sh"
ACCESS_KEY = "hst-ha-access-key.sh"
FENCE = "hst-ha-fence.lua"
REDIS_START_GATE = "hst-ha-redis-start-gate.sh"
EXPORTER = "hst-ha-exporter.sh"
FENCE_METRICS = "hst-ha-fence-metrics.lua"
SHIPPED = (BOOT, SECRET, SENTINEL_TIMERS, HSTS, ACCESS_KEY, FENCE, REDIS_START_GATE, EXPORTER, FENCE_METRICS)
# The components.runtime modules every node runs, whatever its settings: hst-ha-secret's checks.
NODE_MODULES = ("secret_entries",)

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")

EnvValue = str | int


@cache
def shipped(name: str) -> str:
    """One file of `files/` as written, comments and all: what every node gets (package data, so it
    comes with an installed package too). User data holds none of it (the node renders its files from
    the code archive), so nothing is stripped to save space: a node's scripts carry their reasons."""
    if name not in SHIPPED:
        raise KeyError(f"{name} is not one of the bundle's shipped files {SHIPPED}")
    return resources.files("components.bundle").joinpath("files", name).read_text(encoding="utf-8")


@cache
def runtime_module(name: str) -> str:
    """components/runtime/`name`.py as written: a node runs the very file the tests import."""
    return resources.files("components.runtime").joinpath(f"{name}.py").read_text(encoding="utf-8")


def module_files(home: str, modules: Iterable[str] = NODE_MODULES) -> list[BundleFile]:
    """The `components.runtime` package under the node's `home` with `modules`, for `python3 -m
    components.runtime.<module>` run from `home` (or with it on PYTHONPATH)."""
    package = resources.files("components").joinpath("__init__.py").read_text(encoding="utf-8")
    return [
        BundleFile(f"{home}/components/__init__.py", package, 0o644),
        BundleFile(f"{home}/components/runtime/__init__.py", runtime_module("__init__"), 0o644),
        *(BundleFile(f"{home}/components/runtime/{m}.py", runtime_module(m), 0o644) for m in dict.fromkeys(modules)),
    ]


def node_env(node: str, values: Mapping[str, EnvValue]) -> str:
    """The text of a node's data file. Keys are shell variable names; values are quoted, so a
    value (a password command, a URL) is data to the scripts, never code."""
    lines = [
        f"# hst-ha {node}: the values its scripts read (components/bundle/scripts.py); each uses some.",
        "# shellcheck disable=SC2034",
    ]
    for key, value in values.items():
        if not _KEY.match(key):
            raise ValueError(f"node.env key {key!r} is not an upper-case shell variable name")
        lines.append(f"{key}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def merge_env(into: dict[str, EnvValue], more: Mapping[str, EnvValue]) -> None:
    """Add `more` to `into`; a key both define must hold the same value (one name, one meaning)."""
    for key, value in more.items():
        if key in into and str(into[key]) != str(value):
            raise ValueError(f"node.env key {key} is given two values: {into[key]!r} and {value!r}")
        into[key] = value
