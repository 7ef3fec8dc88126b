"""Provisioning a local node as cloud-init does a new instance: write the bundle's files (first
boot only), then run the boot script (the `prepare` step) to its end."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from components.bundle import tls
from components.local.errors import LocalClusterError
from components.local.nodes import LocalNode
from components.local.processes import log_tail
from components.local.state import StateDir, write_file

__all__ = ["check_haproxy_cfg", "ensure_tls", "prepare", "refresh_bundle", "write_bundle"]


def ensure_tls(state: StateDir, addresses: Sequence[str]) -> None:
    """tlsEnabled: make the cluster's CA and one certificate per node address, once, as the AWS
    deployment keeps them in Secrets Manager: the CA with its key in one secret file, what the
    nodes read (CA certificate, node certificates and keys) in another, both 0600. A later `up`
    keeps them, and signs a certificate for an address that has none with the same CA."""
    if state.tls_ca_file.exists():
        ca = tls.load_ca(json.loads(state.tls_ca_file.read_text()))
    else:
        ca = tls.make_ca(f"hst-ha local {state.path.name} CA")
        write_file(state.tls_ca_file, json.dumps(tls.ca_secret_document(ca), indent=1) + "\n", 0o600)
    document: dict[str, str] = json.loads(state.tls_file.read_text()) if state.tls_file.exists() else {}
    missing = [a for a in addresses if tls.check_tls_document(document, a)]
    if missing:
        document = {**document, **tls.tls_secret_document(missing, ca)}
        write_file(state.tls_file, json.dumps(document, indent=1) + "\n", 0o600)
    write_file(state.tls_ca_cert_file, ca.cert_pem, 0o600)


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
