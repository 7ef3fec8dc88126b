"""Time the evaluation of `__main__.py` under Pulumi mocks, imports included, by node count.

Each run is a fresh interpreter, so importing pulumi and pulumi_aws is counted as a real
`pulumi preview` would pay it. Prints JSON: median of --runs per node count, and the ratio of
each median to the 3-node one (linear growth in node count would give ratio n/3 at most).

    .venv/bin/python benchmarks/bench_program.py [--runs 5] [--nodes 3 5 9 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child: the clock starts before the first Pulumi import.
CHILD = """
import sys, time
start = time.perf_counter()
from tests.pulumi_harness import run_program
program = run_program({{"nodeCount": {nodes}}})
assert len(program.outputs["instanceIds"]) == {nodes}
print(time.perf_counter() - start)
"""


def evaluate(nodes: int) -> float:
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(root=str(ROOT), nodes=nodes)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"evaluation with {nodes} nodes failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 5, 9, 15])
    args = parser.parse_args()
    medians = {}
    for nodes in args.nodes:
        samples = []
        for run in range(args.runs):
            samples.append(evaluate(nodes))
            print(f"{nodes} nodes, run {run + 1}/{args.runs}: {samples[-1]:.2f} s", file=sys.stderr)
        medians[nodes] = statistics.median(samples)
    base = medians[min(medians)]
    print(json.dumps({
        "benchmark": "program evaluation under mocks, imports included",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": args.runs,
        "median_s": {str(n): round(s, 3) for n, s in medians.items()},
        "ratio_to_smallest": {str(n): round(s / base, 2) for n, s in medians.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
