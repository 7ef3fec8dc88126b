"""Process supervision for the local target: start daemons in their own sessions, record them, and
signal or stop only those.

A process is ours while it has the pid AND the creation time AND the executable we recorded when
we started it: a later process that merely reuses the pid is never signalled. psutil does the
reading (`create_time()`, `exe()`), and re-checks the creation time itself right before each
signal it sends.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from components.local.errors import LocalClusterError
from components.local.ports import listens
from components.local.state import write_file

__all__ = [
    "HAPROXY_RELOAD_TIMEOUT_S", "ProcessRecord", "Supervisor", "deferred_interrupts", "log_tail", "run_to_end",
]

HAPROXY_RELOAD_TIMEOUT_S = 10.0
STOP_WAIT_S = 5.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ProcessRecord:
    """A process we started: its pid plus the creation time that tells it apart from a later reuse of the pid."""

    pid: int
    create_time: float
    exe: str
    argv: tuple[str, ...]

    @classmethod
    def of(cls, pid: int, argv: Iterable[str]) -> ProcessRecord:
        argv = tuple(argv)
        # Popen returns after the exec succeeded, so the process already runs the new program.
        try:
            process = psutil.Process(pid)
            # Not the command line: Redis rewrites its own title, and a read during the rewrite sees garbage.
            record = cls(pid, process.create_time(), process.exe(), argv)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            record = None
        if record is None or not record.exe:
            raise LocalClusterError(f"process {pid} ({' '.join(argv)}) vanished right after it started")
        return record

    def process(self) -> psutil.Process | None:
        """The running process if it is still ours (same creation time and executable; a zombie counts as gone)."""
        try:
            process = psutil.Process(self.pid)
            if process.create_time() != self.create_time or process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process if process.exe() == self.exe else None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def dump(self) -> str:
        # The first line alone is a conventional pid file (`kill $(head -1 redis.pid)`).
        extra = {"create_time": self.create_time, "exe": self.exe, "argv": list(self.argv)}
        return f"{self.pid}\n{json.dumps(extra)}\n"

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        try:
            first, second = path.read_text().splitlines()[:2]
            extra = json.loads(second)
            return cls(int(first), float(extra["create_time"]), str(extra["exe"]), tuple(extra["argv"]))
        except (OSError, ValueError, KeyError):
            return None


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return list(process.children())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # a zombie that is not our child: its parent reaps it
    except psutil.NoSuchProcess:
        return True


def wait_gone(processes: Sequence[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait (reaping our children) until the processes have ended; those still running after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    pending = list(processes)
    while pending:
        _, alive = psutil.wait_procs(pending, timeout=max(0.0, min(0.05, deadline - time.monotonic())))
        pending = [p for p in alive if not _gone(p)]
        if time.monotonic() >= deadline:
            break
    return pending


class Supervisor:
    """Starts daemons as children in their own sessions, and signals or stops only processes it recorded."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # pid -> child, to reap what we start

    def spawn(self, argv: Sequence[str], cwd: str, log_path: Path, pid_file: Path) -> ProcessRecord:
        """Start `argv` with stdout and stderr appended to `log_path`; record it in `pid_file`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            # Own session: a Ctrl-C at the terminal reaches only us, and we stop the daemons in order.
            child = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=cwd,
            )
        self._children[child.pid] = child
        record = ProcessRecord.of(child.pid, argv)
        write_file(pid_file, record.dump(), 0o644)
        return record

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    def exited(self, record: ProcessRecord) -> bool:
        """Whether a process we started has ended (our child: by its exit status; else by the record)."""
        child = self._children.get(record.pid)
        return child.poll() is not None if child is not None else not record.alive()

    def alive(self, pid_file: Path) -> ProcessRecord | None:
        """The process recorded in `pid_file`, if it still runs and is still ours."""
        self._reap()
        record = ProcessRecord.load(pid_file)
        return record if record is not None and record.alive() else None

    def signal(self, record: ProcessRecord, sig: int) -> psutil.Process | None:
        """Send `sig` if the process is still ours; the process signalled, or None."""
        process = record.process()
        if process is None:
            return None
        try:
            process.send_signal(sig)  # psutil checks the creation time again right before the kill
        except psutil.NoSuchProcess:
            return None
        return process

    def reload(self, record: ProcessRecord, address: str, port: int, timeout_s: float = HAPROXY_RELOAD_TIMEOUT_S,
               ) -> None:
        """Reload a master-worker HAProxy: SIGUSR2 to its master (whose pid stays), then wait until a NEW
        worker listens on address:port. The former workers stopped listening and end by themselves once
        their last session has."""
        process = record.process()
        if process is None:
            raise LocalClusterError(f"pid {record.pid} ({record.argv[0]}) is not running: nothing to reload")
        before = {(c.pid, c.create_time()) for c in _children(process)}
        self.signal(record, signal.SIGUSR2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for child in _children(process):
                try:
                    new = (child.pid, child.create_time()) not in before
                except psutil.NoSuchProcess:
                    continue
                if new and listens(child, address, port):
                    return
            time.sleep(0.02)
        raise LocalClusterError(f"HAProxy (master pid {record.pid}) started no new worker listening on "
                                f"{address}:{port} within {timeout_s:g}s of SIGUSR2")

    def kill(self, record: ProcessRecord, sig: int, wait_s: float) -> list[psutil.Process] | None:
        """Send `sig`; when it ends the process, wait (up to `wait_s`) for it and its children. None when
        it was not running; else the processes still running after the wait."""
        process = record.process()
        children = _children(process) if process is not None else []
        if self.signal(record, sig) is None or process is None:
            return None
        if sig not in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            return []
        return wait_gone([process, *children], wait_s)

    def stop(self, records: Sequence[ProcessRecord], grace_s: float) -> None:
        """SIGTERM, then SIGKILL whatever is left after `grace_s` (Redis refuses SIGTERM while it
        cannot save, e.g. writing its first AOF). Only processes still ours. Their children (HAProxy's
        workers, which hold its ports) are waited for too: the master ends them itself."""
        children = [c for r in records if (p := r.process()) is not None for c in _children(p)]
        signalled = [(r, p) for r in records if (p := self.signal(r, signal.SIGTERM)) is not None]
        left = wait_gone([p for _, p in signalled], grace_s)
        for record, process in signalled:
            if process in left:
                self._progress(f"pid {record.pid} ({record.argv[0]}) ignored SIGTERM for {grace_s:g}s; sending SIGKILL")
                self.signal(record, signal.SIGKILL)
        stuck = wait_gone(left, 5.0) + wait_gone(children, grace_s)
        self._reap()
        if stuck:
            raise LocalClusterError(f"could not stop pids {[p.pid for p in stuck]}")


def run_to_end(argv: Sequence[str], log_path: Path, timeout_s: float) -> int | None:
    """Run a one-shot step (a post-start hook) to its end; its exit code, or None on timeout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        try:
            return subprocess.run(list(argv), check=False, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout_s, start_new_session=True).returncode
        except subprocess.TimeoutExpired:
            return None


def log_tail(home: Path, step: str, lines: int = 6) -> str:
    """The last lines of a step's log, for an error message."""
    for candidate in (home / "log" / f"{step}.log", home / "log" / f"{step}.out"):
        try:
            text = candidate.read_text(errors="replace").strip().splitlines()
        except OSError:
            continue
        if text:
            return f"\n    last lines of {candidate}:\n      " + "\n      ".join(text[-lines:])
    return ""


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while cleaning up; deliver one afterwards as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt
