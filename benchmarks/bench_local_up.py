#!/usr/bin/env python3
"""Time from `up` to a verified failover-ready local cluster, for N = 3 and 5 nodes.

    .venv/bin/python benchmarks/bench_local_up.py [--runs 5] [--nodes 3 5]

Each run starts a fresh cluster in a new state directory (real redis-server, redis-sentinel and
haproxy on 127.0.0.11...), times `LocalCluster.up()` (render, boot scripts, daemons, then the
quorum verification every Sentinel, replica and HAProxy must pass), and takes it down again.
Prints JSON on stdout (the median of the runs per N, against GOALS_S); progress on stderr.
Needs the ports free: it refuses, like `up`, when another cluster holds them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

from components.local.cluster import LocalCluster
from components.settings import parse_settings

# The local target's promise: verified failover-ready in under 3 s (3 nodes), 5 s (5 nodes).
GOALS_S = {3: 3.0, 5: 5.0}


def time_up(nodes: int) -> dict[str, float]:
    state_dir = tempfile.mkdtemp(prefix="hst-ha-bench-", dir="/tmp")
    cluster = LocalCluster(parse_settings({"nodeCount": nodes}), state_dir)
    try:
        started = time.perf_counter()
        outputs = cluster.up(timeout_s=60)
        total = time.perf_counter() - started
        return {"up_s": total, "verify_s": outputs["quorum"]["elapsed_s"], "attempts": outputs["quorum"]["attempts"]}
    finally:
        cluster.down()
        shutil.rmtree(state_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    args = parser.parse_args()
    results = {}
    for nodes in args.nodes:
        runs = []
        for run in range(args.runs):
            runs.append(time_up(nodes))
            print(f"N={nodes} run {run + 1}/{args.runs}: verified in {runs[-1]['up_s']:.2f}s", file=sys.stderr)
        up = [r["up_s"] for r in runs]
        median = statistics.median(up)
        goal = GOALS_S.get(nodes)
        results[f"n{nodes}"] = {
            "nodes": nodes,
            "runs": args.runs,
            "median_s": round(median, 3),
            "min_s": round(min(up), 3),
            "max_s": round(max(up), 3),
            "median_verify_s": round(statistics.median(r["verify_s"] for r in runs), 3),
            "up_s": [round(u, 3) for u in up],
            "goal_s": goal,
            "meets_goal": None if goal is None else median < goal,
        }
    print(json.dumps({
        "benchmark": "local up to verified failover-ready",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
