"""The bundle's observers on the local target: both redis_exporters and the failover-event listener
of every node, started after the cluster's daemons when this machine has what they need.

The CloudWatch collector and the snapshot job are not run as daemons here: `local_cluster.py
backup` calls the snapshot job's own round (`components.runtime.backup.backup_once`), and the tests
call the collector's (`components.runtime.metrics.collect`) against these exporters.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from components.bundle.observe import PYTHON
from components.local.errors import LocalClusterError
from components.local.nodes import LocalNode
from components.local.processes import ProcessRecord
from components.local.state import write_file

__all__ = ["OBSERVERS", "adopt_exec", "missing_requirement", "wait_listening"]

OBSERVERS = ("redis-exporter", "sentinel-exporter", "events")
EXPORTER = "prometheus-redis-exporter"


def missing_requirement(step: str) -> str | None:
    """Why this machine cannot run an observer step (None: it can)."""
    if step.endswith("-exporter") and shutil.which(EXPORTER) is None:
        return f"{EXPORTER} is not installed (apt-get install {EXPORTER}); the nodes run without metrics exporters"
    if step == "events":
        probe = subprocess.run([PYTHON, "-c", "import redis"], capture_output=True, check=False)
        if probe.returncode != 0:
            return f"{PYTHON} cannot import redis (apt-get install python3-redis); no failover events"
    return None


def wait_listening(node: LocalNode, alive: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """The event listener is ready once it has subscribed (it says so in its log)."""
    log = node.log("events.out")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and "listening to" in log.read_text(errors="replace"):
            return
        if not alive():
            break
        time.sleep(0.05)
    raise LocalClusterError(f"{node.name} events listener did not subscribe to its Sentinel; see {log}")


def adopt_exec(record: ProcessRecord, pid_file: Path, timeout_s: float = 10.0) -> ProcessRecord:
    """The exporter's wrapper fetches the password, then execs the exporter in the same process: once
    the process runs the exporter, record THAT (a process is ours by pid, start time AND executable)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            exe = psutil.Process(record.pid).exe()
        except psutil.NoSuchProcess:
            break
        if exe.endswith(EXPORTER):
            adopted = ProcessRecord.of(record.pid, record.argv)
            write_file(pid_file, adopted.dump(), 0o644)
            return adopted
        time.sleep(0.02)
    raise LocalClusterError(
        f"pid {record.pid} ({' '.join(record.argv)}) did not start {EXPORTER} within {timeout_s:g}s"
    )
