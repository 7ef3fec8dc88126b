"""Provisioning a local node as cloud-init does a new instance: write the bundle's files (first
boot only), then run the boot script (the `prepare` step) to its end."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from components.local.errors import LocalClusterError
from components.local.nodes import LocalNode
from components.local.processes import log_tail
from components.local.state import write_file

__all__ = ["prepare", "write_bundle"]


def write_bundle(node: LocalNode) -> None:
    """What cloud-init's write_files does on first boot: the templates and the boot script. A file
    already there is left alone (Redis and Sentinel rewrite theirs)."""
    for item in node.bundle.files:
        path = Path(item.path)
        if not path.exists():
            write_file(path, item.content, item.mode)


def prepare(nodes: Iterable[LocalNode], timeout_s: float) -> None:
    """Run the nodes' boot scripts side by side; each renders its node once. Raises naming every
    node whose script failed or timed out, with the end of its log."""
    running = []
    for node in nodes:
        write_bundle(node)
        node.log("prepare.out").parent.mkdir(parents=True, exist_ok=True)
        with open(node.log("prepare.out"), "ab") as out:
            running.append((node, subprocess.Popen(
                node.step("prepare").argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )))
    failures = []
    try:
        for node, child in running:
            code: int | None
            try:
                code = child.wait(timeout=max(0.1, timeout_s))
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                failures.append(f"{node.name} boot script {'timed out' if code is None else f'exited {code}'}"
                                f"{log_tail(node.home, 'prepare')}")
    finally:
        for _, child in running:  # on Ctrl-C or timeout: the boot scripts are ours, end them
            if child.poll() is None:
                child.kill()
                child.wait()
    if failures:
        raise LocalClusterError("\n".join(failures))
