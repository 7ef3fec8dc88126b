"""Provisioning a local node as cloud-init does a new instance: write the bundle's files (first
boot only), then run the boot script (the `prepare` step) to its end."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from components.local.errors import LocalClusterError
from components.local.nodes import LocalNode
from components.local.processes import log_tail
from components.local.state import write_file

__all__ = ["check_haproxy_cfg", "prepare", "refresh_bundle", "write_bundle"]


def write_bundle(node: LocalNode) -> None:
    """What cloud-init's write_files does on first boot: the templates and the boot script. A file
    already there is left alone (Redis and Sentinel rewrite theirs)."""
    for item in node.bundle.files:
        path = Path(item.path)
        if not path.exists():
            write_file(path, item.content, item.mode)


def refresh_bundle(node: LocalNode) -> list[str]:
    """After a live change: the node's data file, templates and scripts as its bundle now renders them
    (the start gate and the boot script read node.env at every start). Never the daemons' own files,
    which are not in the bundle. The paths rewritten."""
    written = []
    for item in node.bundle.files:
        path = Path(item.path)
        if not path.exists() or path.read_text() != item.content:
            write_file(path, item.content, item.mode)
            written.append(item.path)
    return written


def check_haproxy_cfg(path: Path, timeout_s: float = 20.0) -> None:
    """`haproxy -c`: refuse a configuration HAProxy would not load, before a reload is asked for. The
    output is not repeated (the file holds the monitoring password); the log names where to look."""
    result = subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], check=False, capture_output=True,
                            timeout=timeout_s, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        # Only where it failed ([file:line]): an alert may quote a line, and a line may hold a password.
        places = re.findall(r"\[([^\]\s]+:\d+)\]", result.stderr.decode(errors="replace"))
        where = f"at {', '.join(dict.fromkeys(places))}" if places else f"exit {result.returncode}"
        raise LocalClusterError(f"{path}: HAProxy refuses the re-rendered configuration ({where}); "
                                "the running HAProxy keeps the previous one")


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
