#!/usr/bin/env python3
"""Time the node target's `up` to verified failover-ready (goal: under 60 s for 3 nodes, warm image).

    sudo python benchmarks/bench_node_up.py [--nodes 3] [--runs 3]

The image is built first, outside the timing (a cold build is reported separately). Each run boots
the nodes from fresh disks, waits for the SentinelQuorum provider's verification through the
node-exec channel, and stops everything before the next. Prints one JSON line per run, then the
median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from components.node import image
from components.node.cluster import NodeCluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    cold = not (image.image_path() / "etc/os-release").exists()
    image.ensure_image()
    if cold:
        print(json.dumps({"image_build_s": round(time.monotonic() - started, 1)}), flush=True)
    figures = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-node-up-") as tmp:
            cluster = NodeCluster(Path(tmp) / "state", progress=lambda m: None)
            t0 = time.monotonic()
            try:
                outputs = cluster.up({"nodeCount": args.nodes}, timeout_s=240)
                took = time.monotonic() - t0
            finally:
                cluster.down()
        figures.append(took)
        print(json.dumps({"run": run + 1, "nodes": args.nodes, "up_to_verified_s": round(took, 1),
                          "verify_attempts": outputs["quorum"]["attempts"]}), flush=True)
    print(json.dumps({"nodes": args.nodes, "median_up_to_verified_s": round(statistics.median(figures), 1),
                      "runs": args.runs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
