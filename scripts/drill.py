#!/usr/bin/env python3
"""Fault drills on the local cluster, with figures: prints JSON (medians of the runs, then each run).

    python scripts/drill.py kill-primary                      # 5 runs at downAfterMs 1000, ours
    python scripts/drill.py zombie-primary --naive            # the naive comparison baseline
    python scripts/drill.py all --down-after-ms 1000 5000 --compare --runs 5 --out results.json

Drills: kill-primary (1), zombie-primary (2), short-pause (3), one-sentinel-down (4a),
two-sentinels-down (4b), old-primary-rejoins (5), replica-rebuilt (6), partition (7), restart-race (8),
node-restart (9), rolling-restart (10), switchover (11, planned), or `all`.
Every run starts a fresh cluster on the loopback hosts 127.0.0.11.. (the local target's), so do not
run this while something else uses those hosts, or pass --private-netns: each run then lives in a
network namespace of its own (needs root or CAP_SYS_ADMIN; the partition drill always does).
Progress goes to stderr. Figures are medians; recovery time depends on the machine, losses do not.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from drills.runner import run_drill
from drills.scenarios import DRILL_ALIASES, DRILLS
from drills.summary import summarize

RUN_FIELDS = (
    "recovery_s", "recovery_by_haproxy", "acked", "lost", "lost_in_flight_at_fault", "refused", "refused_by_kind",
    "failovers", "promoted", "false_failover", "run_s",
    "recovery_by_kind", "lost_by_kind", "longest_gap_by_kind_s", "sets_on_unnamed_master",
)


def say(message: str) -> None:
    print(f"drill: {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    def version(*command: str) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return {
        "cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
        "redis": version("redis-server", "--version"), "haproxy": version("haproxy", "-v"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }


def markdown(document: dict[str, Any]) -> str:
    """The summaries as Markdown tables, one per downAfterMs, ours and the naive baseline side by side."""
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    out = [f"Command: `{document['command']}`", ""]
    by_setting: dict[int, list[dict[str, Any]]] = {}
    for result in document["results"]:
        by_setting.setdefault(result["summary"]["down_after_ms"], []).append(result["summary"])
    for down_after, summaries in sorted(by_setting.items()):
        out += [
            f"### downAfterMs {down_after}", "",
            ("| drill | config | runs | recovery s, median [min-max] | acked, median "
             "| lost, median (max; runs with loss) "
             "| refused, median | failovers, median (runs with a false one) |"),
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in summaries:
            if "skipped" in s:
                out.append(f"| {s['drill']} | {s['config']} | 0 | skipped: {s['skipped']} | | | | |")
                continue
            if not s.get("runs"):
                out.append(f"| {s['drill']} | {s['config']} | 0 | every run failed ({s.get('failed_runs')}) | | | | |")
                continue
            span = s.get("recovery_s_range")
            recovery = cell(s.get("recovery_s_median")) + (f" [{cell(span[0])}-{cell(span[1])}]" if span else "")
            if s.get("runs_without_recovery"):
                recovery += f", {s['runs_without_recovery']} run(s) none"
            runs = str(s["runs"]) + (f" (+{s['failed_runs']} failed)" if s.get("failed_runs") else "")
            in_flight = s.get("lost_in_flight_at_fault_max")
            out.append(
                f"| {s['drill']} | {s['config']} | {runs} "
                f"| {recovery} | {cell(s.get('acked_median'))} "
                f"| {cell(s.get('lost_median'))} ({s['lost_max']}; {s['runs_with_loss']}"
                f"{'; in flight at the fault: up to ' + str(in_flight) if in_flight else ''}) "
                f"| {cell(s.get('refused_median'))} | {cell(s.get('failovers_median'))} ({s['false_failover_runs']}) |"
            )
        out.append("")
        with_kinds = [s for s in summaries if s.get("recovery_by_kind_median")]
        if with_kinds:
            kinds = list(with_kinds[0]["recovery_by_kind_median"])
            out += [
                f"Per client kind, downAfterMs {down_after}: recovery s, median / longest time without an "
                "acknowledgement s, median / lost, max; and SETs executed by a master no Sentinel majority named, "
                "max", "",
                "| drill | config | " + " | ".join(kinds) + " | SETs on unnamed master |",
                "|---|---|" + "---|" * len(kinds) + "---|",
            ]
            for s in with_kinds:
                cells = [f"{cell(s['recovery_by_kind_median'].get(k))} / "
                         f"{cell(s['longest_gap_by_kind_s_median'].get(k))} / {cell(s['lost_by_kind_max'].get(k))}"
                         for k in kinds]
                unnamed = cell(s.get("sets_on_unnamed_master_max"))
                out.append(f"| {s['drill']} | {s['config']} | " + " | ".join(cells) + f" | {unnamed} |")
            out.append("")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drill", nargs="*", help=f"one or more of: {', '.join(DRILLS)}, their numbers, or all")
    parser.add_argument("--report", metavar="JSON", help="print the Markdown tables of an earlier --out file and exit")
    parser.add_argument("--down-after-ms", type=int, nargs="+", default=[1000], metavar="MS",
                        help="Sentinel down-after-milliseconds; several values run each in turn (default 1000)")
    parser.add_argument("--runs", type=int, default=5, help="runs per drill and setting (default 5)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--naive", action="store_true",
                      help="the comparison baseline only: plain role:master HAProxy check, min-replicas-to-write 0")
    mode.add_argument("--compare", action="store_true", help="ours and the naive baseline, side by side")
    parser.add_argument("--tail-s", type=float, default=1.0, help="seconds of writes after recovery (default 1)")
    parser.add_argument("--private-netns", action="store_true", help="run every drill in its own network namespace")
    parser.add_argument("--full", action="store_true", help="keep each run's full figures (event timeline included)")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument("--keep-logs-on-loss", metavar="DIR",
                        help="copy the nodes' logs of any run that lost an acknowledged write into DIR")
    return parser


def drill_names(parser: argparse.ArgumentParser, asked: list[str]) -> list[str]:
    names = []
    for name in asked:
        if name == "all":
            names += list(DRILLS)
        elif DRILL_ALIASES.get(name, name) in DRILLS:
            names.append(DRILL_ALIASES.get(name, name))
        else:
            parser.error(f"unknown drill {name!r}; known: {', '.join(DRILLS)}, 1-10 (4a, 4b) or all")
    return names


def one_run(name: str, down_after: int, naive: bool, args: argparse.Namespace, label: str) -> dict[str, Any]:
    say(label)
    try:
        return run_drill(name, down_after, naive=naive, tail_s=args.tail_s, private_netns=args.private_netns,
                         progress=say, keep_on_loss=args.keep_logs_on_loss)
    except Exception as exc:  # noqa: BLE001 - one failed run is a finding, not the end of the batch
        say(f"{label}: FAILED: {type(exc).__name__}: {exc}")
        return {"drill": name, "config": "naive" if naive else "ours",
                "down_after_ms": down_after, "error": f"{type(exc).__name__}: {exc}"}


def kept_figures(figures: dict[str, Any], full: bool) -> dict[str, Any]:
    # The event timeline is kept where something went wrong (or with --full).
    keep_timeline = full or "error" in figures or figures.get("lost") or figures.get("false_failover")
    return {
        **{k: figures.get(k) for k in RUN_FIELDS},
        **{k: v for k, v in figures.items() if k not in RUN_FIELDS and k not in (
            "timeline", "drill", "config", "down_after_ms")},
        **({"timeline": figures.get("timeline")} if keep_timeline else {}),
    }


def series(name: str, down_after: int, naive: bool, args: argparse.Namespace) -> dict[str, Any]:
    """`--runs` runs of one drill in one configuration, and their summary."""
    runs = []
    for i in range(args.runs):
        label = f"{name} {'naive' if naive else 'ours'} downAfterMs {down_after} run {i + 1}/{args.runs}"
        figures = one_run(name, down_after, naive, args, label)
        if "skipped" in figures:
            say(f"{label}: skipped: {figures['skipped']}")
            runs.append(figures)
            break
        if "error" not in figures:
            say(f"{label}: recovery {figures['recovery_s']} s, acked {figures['acked']}, "
                f"lost {figures['lost']}, refused {figures['refused']}, failovers {figures['failovers']}")
        runs.append(kept_figures(figures, args.full))
    ok = [r for r in runs if "error" not in r]
    summary = summarize([{**r, "drill": name, "config": "naive" if naive else "ours",
                          "down_after_ms": down_after} for r in ok]) if ok else {}
    summary.update({"drill": name, "config": "naive" if naive else "ours", "down_after_ms": down_after,
                    "failed_runs": len(runs) - len(ok)})
    return {"summary": summary, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return 0
    if not args.drill:
        parser.error("name a drill (or all), or pass --report")

    names = drill_names(parser, args.drill)
    configs = [False, True] if args.compare else [args.naive]

    started = time.time()
    results: list[dict[str, Any]] = [
        series(name, down_after, naive, args)
        for down_after in args.down_after_ms for name in names for naive in configs
    ]
    document = {
        "command": "python scripts/drill.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "results": results,
    }
    text = json.dumps(document, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if all(r["summary"].get("failed_runs", 0) == 0 for r in results) else 1

if __name__ == "__main__":
    sys.exit(main())
