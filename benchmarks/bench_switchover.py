#!/usr/bin/env python3
"""The planned switchover, measured: N runs of the `switchover` drill (drills/switchover_drill.py), each
on a fresh local cluster, with every client kind writing. Prints a Markdown report on stdout.

    unshare --net -- bash -c 'ip link set lo up && PYTHONPATH=$PWD python benchmarks/bench_switchover.py --runs 10'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from typing import Any

from drills.client_kinds import CLIENT_KINDS
from drills.runner import run_drill


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def report(runs: list[dict[str, Any]], command: str) -> str:
    pauses = [r["write_pause_s"] for r in runs]
    failovers = [r["switchover"]["failover_s"] for r in runs]
    out = [f"Command: `{command}`", "", f"{len(runs)} runs. Module write pause (CLIENT PAUSE to UNPAUSE): "
           f"p50 {p50(pauses)} s, min {min(pauses)} s, max {max(pauses)} s. SENTINEL FAILOVER to a majority "
           f"naming the new primary: p50 {p50(failovers)} s, min {min(failovers)} s, max {max(failovers)} s.", "",
           "| run | pause s | SENTINEL FAILOVER to majority s | Sentinel's INFO of the target, age at FAILOVER s "
           "| acked | lost | " + " | ".join(f"{k} gap s / failed" for k in CLIENT_KINDS) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(CLIENT_KINDS)]
    totals: dict[str, Counter[str]] = {k: Counter() for k in CLIENT_KINDS}
    for i, r in enumerate(runs, 1):
        cells = []
        for kind in CLIENT_KINDS:
            failed = r["failed_writes_by_client_kind"][kind]
            totals[kind].update(failed)
            cells.append(f"{r['longest_gap_by_kind_s'][kind]} / {sum(failed.values())}")
        age = r["switchover"].get("info_age_at_failover_s", -1)
        out.append(f"| {i} | {r['write_pause_s']} | {r['switchover']['failover_s']} | "
                   f"{age if age >= 0 else 'untimed'} | {r['acked']} | {r['lost']} | "
                   + " | ".join(cells) + " |")
    out += ["", "Longest time without an acknowledgement per client kind, p50: "
            + ", ".join(f"{k} {p50([r['longest_gap_by_kind_s'][k] for r in runs])} s" for k in CLIENT_KINDS), "",
            "Failed writes over all runs, by client kind and error (not acknowledged):", ""]
    out += [f"- {kind}: {dict(totals[kind]) or 'none'}" for kind in CLIENT_KINDS]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--down-after-ms", type=int, default=1000)
    parser.add_argument("--json", help="also write every run's figures to this file")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        figures = run_drill("switchover", args.down_after_ms, tail_s=0.5,
                            progress=lambda m: print(m, file=sys.stderr, flush=True))
        for key in ("timeline", "fence", "before_fault"):
            figures.pop(key, None)
        print(f"run {i + 1}: pause {figures['write_pause_s']} s, lost {figures['lost']}", file=sys.stderr, flush=True)
        runs.append(figures)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(runs, handle, indent=1)
    command = ("unshare --net -- bash -c 'ip link set lo up && PYTHONPATH=$PWD python benchmarks/bench_switchover.py "
               f"--runs {args.runs}'")
    print(report(runs, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
