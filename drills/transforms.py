"""Bundle transforms for the drills: the naive comparison baseline and the partition drill's
source pinning, applied to a node's rendered files before it first boots (`DrillCluster`). The
product renderer has no naive mode; without transforms a `DrillCluster` IS the product."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from components.bundle import GUARD_BACKEND_PREFIX, BundleFile
from components.local.cluster import LocalCluster, LocalNode
from components.settings import ClusterSettings

__all__ = ["DrillCluster", "Transform", "naive_transform", "pin_source_transform"]

Transform = Callable[[int, str, str, str], str]  # (node index, node address, file path, content) -> content


def naive_transform(index: int, address: str, path: str, content: str) -> str:
    """COMPARISON BASELINE, not the product: HAProxy routes to any node whose tcp-check says
    role:master (no Sentinel-majority guard, normal weights), and Redis accepts writes without
    connected replicas (min-replicas-to-write 0)."""
    name = path.rsplit("/", 1)[-1]
    if name == "haproxy.cfg" and "/templates/" in path:
        out: list[str] = []
        skipping = False
        for line in content.splitlines():
            if line.startswith(f"backend {GUARD_BACKEND_PREFIX}"):
                skipping = True
            elif line and not line.startswith(" "):
                skipping = False
            if skipping or line.startswith("    use-server "):
                continue
            if line.startswith("    server node-"):
                line = line.replace(" weight 0", "")
            if line in ("    timeout connect 100ms", "    retries 1"):
                continue  # HAProxy's defaults: retries 3, with the defaults section's timeout connect
            out.append(line)
        return "\n".join(out).rstrip("\n") + "\n"
    if name == "redis.conf" and "/templates/" in path:
        return "\n".join(
            "min-replicas-to-write 0" if line.startswith("min-replicas-to-write ") else line
            for line in content.splitlines()
        ) + "\n"
    return content


def pin_source_transform(index: int, address: str, path: str, content: str) -> str:
    """For the partition drill only. On a real host every outgoing connection leaves from the
    node's one private IP; on a shared loopback the kernel would pick 127.0.0.1 for all of them, and
    no rule could cut one "host" off. So each daemon's outgoing connections leave from its node's
    address: `bind-source-addr` for Redis and Sentinel, `source` for HAProxy."""
    name = path.rsplit("/", 1)[-1]
    if "/templates/" not in path:
        return content
    if name in ("redis.conf", "sentinel.conf"):
        return content.rstrip("\n") + f"\nbind-source-addr {address}\n"
    if name == "haproxy.cfg":
        return content.replace("\n    mode tcp\n", f"\n    mode tcp\n    source {address}\n", 1)
    return content


class DrillCluster(LocalCluster):
    """A `LocalCluster` whose nodes' rendered files pass through `transforms` before first boot
    (the naive baseline, the partition drill's source pinning). Without transforms it IS the product."""

    def __init__(self, settings: ClusterSettings, state_dir: str | os.PathLike[str], *,
                 transforms: Sequence[Transform] = (), start_gate: bool = True, **kwargs: Any) -> None:
        self._transforms = tuple(transforms)  # set before LocalCluster renders the nodes
        self._start_gate = start_gate  # False: the naive baseline starts Redis from its file, as before
        super().__init__(settings, state_dir, **kwargs)

    def _render(self, index: int) -> LocalNode:
        node = super()._render(index)
        if not self._start_gate:
            steps = tuple(dataclasses.replace(s, pre_start=None) for s in node.bundle.start_steps)
            node = dataclasses.replace(node, bundle=dataclasses.replace(node.bundle, start_steps=steps))
        if not self._transforms:
            return node
        files = []
        for item in node.bundle.files:
            content = item.content
            for transform in self._transforms:
                content = transform(index, node.address, item.path, content)
            files.append(BundleFile(item.path, content, item.mode))
        return dataclasses.replace(node, bundle=dataclasses.replace(node.bundle, files=tuple(files)))
