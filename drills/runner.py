"""Running the drills: one fresh cluster per run, in this process or, for the partition drill (or
on request), in a child process inside a network namespace of its own.

`python -m drills.runner --child REQUEST` is that child's entry point (internal); people use
`scripts/drill.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.local.cluster import DEFAULT_BASE_ADDRESS, LocalClusterError
from components.settings import ClusterSettings, parse_settings
from drills.drill import Drill, Progress
from drills.figures import figures as drill_figures
from drills.scenarios import DRILL_ALIASES, DRILLS, NETNS_ENV
from drills.transforms import (
    DrillCluster,
    Transform,
    naive_transform,
    pin_source_transform,
)

__all__ = ["drill_settings", "run_drill"]

REPO = Path(__file__).resolve().parent.parent


def drill_settings(down_after_ms: int, **overrides: Any) -> ClusterSettings:
    raw: dict[str, Any] = {"downAfterMs": down_after_ms}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return parse_settings(raw)


def run_drill(
    name: str, down_after_ms: int = 1000, *, naive: bool = False, tail_s: float = 1.0,
    base_address: str = DEFAULT_BASE_ADDRESS, private_netns: bool = False, keep_dir: str | None = None,
    progress: Progress | None = None, writer_seconds: float = 120.0, socket_timeout: float = 0.5,
    keep_on_loss: str | None = None,
    settings_overrides: dict[str, Any] | None = None, transforms: Sequence[Transform] = (),
) -> dict[str, Any]:
    """One run of one drill on a fresh cluster; returns its figures. The partition drill (and any
    drill with private_netns=True) runs in a child process inside its own network namespace, so its
    routing rules and its loopback addresses touch nothing outside it."""
    name = DRILL_ALIASES.get(name, name)
    if name not in DRILLS:
        raise ValueError(f"unknown drill {name!r}; known: {', '.join(DRILLS)}")
    progress = progress or (lambda message: None)
    if (name == "partition" or private_netns) and os.environ.get(NETNS_ENV) != "1":
        return _run_in_private_netns(name, down_after_ms, naive=naive, tail_s=tail_s, base_address=base_address,
                                     writer_seconds=writer_seconds, socket_timeout=socket_timeout,
                                     settings_overrides=settings_overrides, keep_on_loss=keep_on_loss,
                                     progress=progress)
    settings = drill_settings(down_after_ms, **(settings_overrides or {}))
    transforms = list(transforms)  # experiments only; in-process runs
    if naive:
        transforms.append(naive_transform)
    if name == "partition":
        transforms.append(pin_source_transform)
    state_dir = tempfile.mkdtemp(prefix=f"hst-drill-{name}-")
    cluster = DrillCluster(settings, state_dir, transforms=transforms, base_address=base_address,
                           start_gate=not naive, progress=lambda m: progress(f"  {m}"))
    started = time.monotonic()
    drill: Drill | None = None
    try:
        cluster.up(timeout_s=60.0)
        if name == "replica-rebuilt":
            cluster.failover(timeout_s=60.0)  # setup: the current primary is no longer the initial one
        drill = Drill(name, cluster, naive, progress, writer_seconds, socket_timeout)
        drill.start()
        primary = DRILLS[name](drill, tail_s)
        figures = drill_figures(drill, primary)
        figures["run_s"] = round(time.monotonic() - started, 1)
        if keep_on_loss and figures["lost"]:
            keep_dir = str(Path(keep_on_loss) / Path(state_dir).name)
            figures["kept_logs"] = keep_dir
        return figures
    finally:
        if drill is not None:
            drill.close()
        if keep_dir:
            cluster.down(keep=True)
            Path(keep_dir).mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", f"{state_dir}/.", keep_dir], check=False)
            shutil.rmtree(state_dir, ignore_errors=True)
        else:
            cluster.down()
            # The temporary directory is ours, not the local target's: down() leaves it (emptied).
            shutil.rmtree(state_dir, ignore_errors=True)


def _run_in_private_netns(name: str, down_after_ms: int, *, progress: Progress, **options: Any) -> dict[str, Any]:
    """Run one drill in `unshare --net` (a network namespace of its own, gone when the child exits)."""
    request = json.dumps({"name": name, "down_after_ms": down_after_ms, **options})
    env = {**os.environ, NETNS_ENV: "1", "PYTHONPATH": str(REPO)}
    command = ["unshare", "--net", "--", sys.executable, "-m", "drills.runner", "--child", request]
    try:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        return {"drill": name, "skipped": f"cannot start `unshare --net`: {exc}"}
    assert child.stderr is not None
    for line in child.stderr:  # progress lines, passed on as they come
        progress(line.rstrip("\n"))
    out = child.stdout.read() if child.stdout else ""
    code = child.wait()
    if code != 0 and not out.strip():
        reason = "unshare --net refused (needs CAP_SYS_ADMIN)" if code in (1, 126) else f"child exited {code}"
        return {"drill": name, "skipped": reason}
    result = json.loads(out)
    if "error" in result:
        raise LocalClusterError(f"{name} in a private network namespace failed: {result['error']}")
    return result


def _child(request_text: str) -> int:
    """Inside the private namespace: bring loopback up, run the drill, print its figures as JSON."""
    request = json.loads(request_text)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Routing rules are consulted before the `local` table only if that table moves behind them.
    subprocess.run(["ip", "rule", "add", "pref", "100", "lookup", "local"], check=True)
    subprocess.run(["ip", "rule", "del", "pref", "0"], check=True)
    name = request.pop("name")
    down_after_ms = request.pop("down_after_ms")
    try:
        figures = run_drill(name, down_after_ms, progress=lambda m: print(m, file=sys.stderr, flush=True), **request)
        figures["private_netns"] = True
    except Exception as exc:  # noqa: BLE001 - reported to the parent as JSON
        figures = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(figures))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "--child":
        return _child(argv[1])
    print("usage: python scripts/drill.py <drill> [options]  (this module's --child mode is internal)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
