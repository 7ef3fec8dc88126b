#!/usr/bin/env python3
"""Fault drills on the node target (the user data booted in systemd-nspawn nodes), with cross-zone
latency between the nodes; prints JSON (summaries, then each run). Root only.

    sudo python scripts/node_drill.py all --down-after-ms 1000 5000 --runs 3 --split-vote 20 \\
        --out benchmarks/results/node-drills.json
    python scripts/node_drill.py --report benchmarks/results/node-drills.json   # the Markdown tables

Drills (drills/node_target.py): kill (SIGKILL of the primary's redis-server; systemd restarts
it), zombie (SIGSTOP past detection, then SIGCONT), partition (the primary's node cut off by the
switch for downAfterMs + 4 s), node-restart (stop-node of the primary, then start-node). One
cluster is booted per downAfterMs (`--latency-ms`/`--jitter-ms`, default 1 and 0.5: every frame
between nodes delayed 0.5-1.5 ms one way) and shared by its drills, verified again before each.
`--guard-flaps S` loads every node's CPU for S seconds and counts guard checks that fell.
`--split-vote N` then stops the primary's Redis unit N times and counts the Sentinels' aborted
elections (`-failover-abort-not-elected`). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from components.node.cluster import NodeCluster, NodeTargetError, check_environment
from drills.node_target import (
    NODE_DRILLS,
    NodeTargetView,
    guard_flaps,
    in_hub,
    run_node_drill,
    split_vote_trial,
)
from drills.summary import summarize

RUN_FIELDS = ("recovery_s", "recovery_by_haproxy", "acked", "lost", "lost_in_flight_at_fault", "refused",
              "refused_by_kind", "failovers", "promoted", "false_failover", "primary_at_fault", "run_s")
EXTRA_FIELDS = ("paused_s", "resumed_at_s", "old_primary_demoted_s", "partition_s",
                "acked_via_minority_during_partition", "minority_last_ack_s", "failovers_during_partition",
                "minority_recovered_after_heal_s",
                "stopped_s", "start_node_at_s", "node_clients_back_s", "rejoined_as_replica_s", "not_recovered",
                "timeouts", "lost_by_haproxy", "switch")


def say(message: str) -> None:
    print(f"node-drill: {message}", file=sys.stderr, flush=True)


def markdown(document: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    out = [f"Command: `{document['command']}`", ""]
    for block in document["settings"]:
        out += [(f"### downAfterMs {block['down_after_ms']}, latency {block['latency_ms']:g} ms "
                f"+- {block['jitter_ms']:g} ms (up to verified: {block['up_s']} s)"), "",
                ("| drill | runs | recovery s, median [min-max] | acked, median | lost, max (in flight at the fault) "
                "| refused, median | failovers, median (false) | drill's own figures, median |"),
                "|---|---|---|---|---|---|---|---|"]
        for result in block["results"]:
            s, runs = result["summary"], [r for r in result["runs"] if "error" not in r]
            if not runs:
                error = result["runs"][0].get("error", "")[:120]
                out.append(f"| {s['drill']} | 0 | every run failed: {error} | | | | | |")
                continue
            span = s.get("recovery_s_range")
            recovery = cell(s.get("recovery_s_median")) + (f" [{cell(span[0])}-{cell(span[1])}]" if span else "")
            own = []
            for key in ("old_primary_demoted_s", "minority_last_ack_s", "minority_recovered_after_heal_s",
                        "node_clients_back_s", "rejoined_as_replica_s"):
                values = [r[key] for r in runs if r.get(key) is not None]
                if values:
                    own.append(f"{key} {statistics.median(values):g}")
            failed = len(result["runs"]) - len(runs)
            out.append(
                f"| {s['drill']} | {len(runs)}{f' (+{failed} failed)' if failed else ''} | {recovery} "
                f"| {cell(s.get('acked_median'))} | {s['lost_max']} ({s['lost_in_flight_at_fault_max']}) "
                f"| {cell(s.get('refused_median'))} | {cell(s.get('failovers_median'))} ({s['false_failover_runs']}) "
                f"| {'; '.join(own)} |")
        votes = block.get("split_vote")
        if votes:
            out += ["", f"Split leader vote (stop the primary's Redis unit, N times): {votes['summary']}"]
        if block.get("guard_flaps"):
            out += ["", f"Guard checks under CPU load, no fault: {block['guard_flaps']}"]
        out.append("")
    return "\n".join(out)


def split_votes(cluster: NodeCluster, view: NodeTargetView, trials: int) -> dict[str, Any]:
    runs = []
    for i in range(trials):
        say(f"split-vote trial {i + 1}/{trials}")
        try:
            runs.append(split_vote_trial(cluster, view, say))
        except Exception as exc:  # noqa: BLE001 - a failed trial is a finding
            runs.append({"error": f"{type(exc).__name__}: {exc}"})
    done = [r for r in runs if "error" not in r]
    times = sorted(r["new_primary_s"] for r in done if r["new_primary_s"] is not None)
    summary = {
        "trials": len(done), "failed_trials": len(runs) - len(done),
        "trials_with_abort_not_elected": sum(1 for r in done if r["abort_not_elected"]),
        "abort_not_elected_events": sum(r["abort_not_elected"] for r in done),
        "no_new_primary_within_120_s": sum(1 for r in done if r["new_primary_s"] is None),
        "new_primary_s_median": round(statistics.median(times), 3) if times else None,
        "new_primary_s_max": times[-1] if times else None,
    }
    return {"summary": summary, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drill", nargs="*", help=f"one or more of: {', '.join(NODE_DRILLS)}, or all")
    parser.add_argument("--report", metavar="JSON", help="print the Markdown tables of an earlier --out file and exit")
    parser.add_argument("--down-after-ms", type=int, nargs="+", default=[1000], metavar="MS")
    parser.add_argument("--runs", type=int, default=3, help="runs per drill and setting (default 3)")
    parser.add_argument("--latency-ms", type=float, default=1.0, help="one way, per frame (default 1)")
    parser.add_argument("--jitter-ms", type=float, default=0.5, help="+- uniform, per frame (default 0.5)")
    parser.add_argument("--split-vote", type=int, default=0, metavar="N",
                        help="then N stop-the-primary failovers counting aborted elections (default 0)")
    parser.add_argument("--guard-flaps", type=float, default=0, metavar="SECONDS",
                        help="then, with no fault, SECONDS of CPU load inside every node (--busy loops each): "
                             "count the guard checks that fell (default 0: not measured)")
    parser.add_argument("--busy", type=int, default=4, help="busy loops per node for --guard-flaps (default 4)")
    parser.add_argument("--tail-s", type=float, default=1.0)
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return 0
    names = [n for name in args.drill for n in (list(NODE_DRILLS) if name == "all" else [name])]
    unknown = [n for n in names if n not in NODE_DRILLS]
    if unknown or not (names or args.split_vote):
        parser.error(f"name drills among {', '.join(NODE_DRILLS)} or all (or --split-vote N); unknown: {unknown}")
    try:
        check_environment()
    except NodeTargetError as exc:
        print(f"node-drill: error: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    settings = []
    for down_after in args.down_after_ms:
        with tempfile.TemporaryDirectory(prefix="hst-node-drill-") as tmp:
            cluster = NodeCluster(Path(tmp) / "state", progress=say)
            block: dict[str, Any] = {"down_after_ms": down_after, "latency_ms": args.latency_ms,
                                     "jitter_ms": args.jitter_ms, "results": []}
            try:
                t0 = time.monotonic()
                cluster.up({"downAfterMs": down_after}, timeout_s=300, latency_ms=args.latency_ms,
                           jitter_ms=args.jitter_ms)
                block["up_s"] = round(time.monotonic() - t0, 1)
                with in_hub(cluster):
                    view = NodeTargetView(cluster)
                    for name in names:
                        runs = []
                        for i in range(args.runs):
                            label = f"{name} downAfterMs {down_after} run {i + 1}/{args.runs}"
                            say(label)
                            try:
                                figures = run_node_drill(cluster, view, name, tail_s=args.tail_s, progress=say)
                                say(f"{label}: recovery {figures['recovery_s']} s, acked {figures['acked']}, "
                                    f"lost {figures['lost']}, refused {figures['refused']}, "
                                    f"failovers {figures['failovers']}")
                                # The timeline is kept where something went wrong: a loss, a false
                                # failover, or a recovery well past detection plus promotion.
                                slow = figures["recovery_s"] is None or figures["recovery_s"] > down_after / 1000 + 5
                                keep = figures.get("lost") or figures.get("false_failover") or slow
                                runs.append({**{k: figures.get(k) for k in RUN_FIELDS},
                                             **{k: figures[k] for k in EXTRA_FIELDS if k in figures},
                                             **({"timeline": figures.get("timeline")} if keep else {})})
                            except Exception as exc:  # noqa: BLE001 - one failed run is a finding
                                say(f"{label}: FAILED: {type(exc).__name__}: {exc}")
                                runs.append({"error": f"{type(exc).__name__}: {exc}"})
                        ok = [r for r in runs if "error" not in r]
                        summary = summarize([{**r, "drill": name, "config": "ours", "down_after_ms": down_after}
                                             for r in ok]) if ok else {}
                        summary.update({"drill": name, "down_after_ms": down_after, "failed_runs": len(runs) - len(ok)})
                        block["results"].append({"summary": summary, "runs": runs})
                    if args.split_vote:
                        block["split_vote"] = split_votes(cluster, view, args.split_vote)
                    if args.guard_flaps:
                        block["guard_flaps"] = guard_flaps(cluster, view, args.guard_flaps, args.busy, say)
            finally:
                cluster.down()
            settings.append(block)
    document = {
        "command": "python scripts/node_drill.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "settings": settings,
    }
    text = json.dumps(document, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    failed = any(r["summary"].get("failed_runs") for b in settings for r in b["results"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
