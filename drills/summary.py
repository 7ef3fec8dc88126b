"""The medians and worst cases of a drill's runs (what `scripts/drill.py` prints first)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from drills.client_kinds import CLIENT_KINDS

__all__ = ["SUMMARY_FIELDS", "summarize"]


SUMMARY_FIELDS = ("recovery_s", "acked", "lost", "refused", "failovers")


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the figures over the runs, the recovery range, and the worst case of what must be zero."""
    done = [r for r in runs if "skipped" not in r]
    if not done:
        return {"runs": len(runs), "skipped": runs[0].get("skipped") if runs else "no runs"}
    summary: dict[str, Any] = {"drill": done[0]["drill"], "config": done[0]["config"],
                               "down_after_ms": done[0]["down_after_ms"], "runs": len(done)}
    for key in SUMMARY_FIELDS:
        values = [r[key] for r in done if r.get(key) is not None]
        summary[f"{key}_median"] = round(statistics.median(values), 3) if values else None
    recoveries = [r["recovery_s"] for r in done if r.get("recovery_s") is not None]
    summary["recovery_s_range"] = [round(min(recoveries), 3), round(max(recoveries), 3)] if recoveries else None
    summary["runs_without_recovery"] = len(done) - len(recoveries)
    summary["lost_max"] = max(r["lost"] for r in done)
    summary["runs_with_loss"] = sum(1 for r in done if r["lost"])
    summary["lost_in_flight_at_fault_max"] = max(r.get("lost_in_flight_at_fault", 0) for r in done)
    summary["false_failover_runs"] = sum(1 for r in done if r["false_failover"])
    kinds = [k for k in CLIENT_KINDS if any(k in (r.get("recovery_by_kind") or {}) for r in done)]
    for field, how in (("recovery_by_kind", "median"), ("longest_gap_by_kind_s", "median"), ("lost_by_kind", "max")):
        per: dict[str, Any] = {}
        for kind in kinds:
            values = [r[field][kind] for r in done if (r.get(field) or {}).get(kind) is not None]
            per[kind] = (round(statistics.median(values), 3) if how == "median" else max(values)) if values else None
        summary[f"{field}_{how}"] = per
    unnamed = [r["sets_on_unnamed_master"] for r in done if r.get("sets_on_unnamed_master") is not None]
    summary["sets_on_unnamed_master_max"] = max(unnamed) if unnamed else None
    return summary
