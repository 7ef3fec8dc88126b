"""A drill run's figures: what the clients lost and were refused, how long each HAProxy took to
take writes again, what Sentinel promoted, and the timeline and fence log behind them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.bundle import GUARD_BACKEND_PREFIX, node_name
from components.local.cluster import LocalCluster
from drills.client_kinds import CLIENT_KINDS, writer_kind
from drills.clients import Ack, endpoint, read_back
from drills.drill import Drill

__all__ = ["IN_FLIGHT_S", "REPLY_DELIVERY_S", "fence_log", "figures", "in_flight_at_fault", "timeline"]

# Redis acknowledges a write and streams it to its replicas in the same event-loop pass, not in
# that order for every client: a primary frozen or killed between the two has acknowledged a write
# no replica ever received. That is asynchronous replication itself, which no configuration closes
# (only WAIT does). Lost writes acknowledged this shortly BEFORE the fault, or sent before it was in
# force and read just after (REPLY_DELIVERY_S), are counted apart as in flight (`in_flight_at_fault`);
# any other is a real loss.
IN_FLIGHT_S = 0.1
# The writer stamps an acknowledgement when it reads the reply, not when the primary sent it: a
# reply sent just before a SIGKILL or SIGSTOP can be read a moment after the fault. The writers are
# a dozen threads of one interpreter on two cores, so that moment is the wait for the GIL: 13 ms was
# seen in CI. A request SENT before the fault can only be answered by the primary it reached, which
# answers nothing once killed or frozen, and a frozen one is resumed seconds later, after detection:
# its reply read this soon after the fault was sent before it.
REPLY_DELIVERY_S = 0.25

# The Sentinel events worth a line in a timeline.
TIMELINE_EVENTS = {
    "+sdown", "-sdown", "+odown", "-odown", "+try-failover", "+elected-leader", "+promoted-slave",
    "+switch-master", "+failover-end", "+convert-to-slave", "-failover-abort-no-good-slave",
    "+failover-end-for-timeout", "-failover-abort-not-elected", "+tilt", "-tilt", "+reboot",
}


def figures(d: Drill, primary: str) -> dict[str, Any]:
    """The run's figures, read from the final primary `primary` once every writer has stopped."""
    writers = d.writers.writers
    missing = read_back(endpoint(primary), d.password, writers, d.tls_ca_file)
    t0 = d.t_fault if d.faulted else d.t_start
    landed = d.t_injected if d.faulted else t0
    lost = {
        f"{node_name(w.node or 0)} {WRITER_LABELS[writer_kind(w)]}"
        f"{' ' + w.tag if w.tag.count('g') else ''}": {
            "count": len(gone), "seq": [gone[0][0], gone[-1][0]],
            "acked_s": [round(gone[0][2] - t0, 3), round(gone[-1][2] - t0, 3)]}
        for w, gone in zip(writers, missing, strict=True) if gone
    }
    promotions = d.events.promotions(t0)
    recovery: dict[str, float | None] = {}
    for i in range(d.nodes):
        first = d.writers.first_ack_via(i, d.t_injected) if d.faulted else None
        recovery[node_name(i)] = round(first - t0, 3) if first is not None else None
    counted = [recovery[node_name(i)] for i in (range(d.nodes) if d.recovery_from is None else d.recovery_from)]
    refused = Counter(e[3] for w in writers for e in w.errors)
    result: dict[str, Any] = {
        "drill": d.name,
        "config": "naive" if d.naive else "ours",
        "down_after_ms": d.settings.down_after_ms,
        "recovery_s": None if None in counted or not counted else max(c for c in counted if c is not None),
        "recovery_by_haproxy": recovery,
        "acked": sum(len(w.acked) for w in writers),
        # per node's HAProxy: [long-lived connection, new connection per write]
        "acked_by_haproxy": {
            node_name(i): [sum(len(w.acked) for w in d.writers.of_node(i) if w.connection_per_write == per)
                           for per in (False, True)]
            for i in range(d.nodes)
        },
        "lost": sum(len(gone) for gone in missing),
        # In flight when the primary died or froze (a whole node's three daemons are killed in turn).
        "lost_in_flight_at_fault": sum(in_flight_at_fault(ack, t0, landed) for gone in missing for ack in gone),
        "lost_by_haproxy": lost,  # seq range and acknowledgement times (since the fault) of the lost writes
        "refused": sum(refused.values()),
        "refused_by_kind": dict(refused),
        "failovers": len(promotions),
        "promoted": [address for _, address in promotions],
        "false_failover": len(promotions) > d.expected_failovers,
        "final_primary": primary,
        "timeline": timeline(d, t0),
        "fence": fence_log(d.cluster),
        "writers_ended_by": sorted({w.ended_by for w in writers}),
    }
    result.update(by_kind(d, t0, missing))
    result.update(d.extra)
    return result


def in_flight_at_fault(ack: Ack, t_fault: float, t_landed: float) -> bool:
    """Whether a lost write was in flight at the fault: acknowledged just before it (IN_FLIGHT_S), or
    sent before it was in force (`t_landed`: a node's daemons are killed one after the other) and its
    reply read just after (REPLY_DELIVERY_S). Anything else lost is a real loss."""
    _, sent, acked = ack
    return t_fault - IN_FLIGHT_S <= acked and sent < t_landed and acked < t_landed + REPLY_DELIVERY_S


WRITER_LABELS = {"haproxy": "long-lived", "haproxy-new-conn": "new connections",
                 "haproxy-blocking": "blocking long-lived", "sentinel": "sentinel client"}


def by_kind(d: Drill, t0: float, missing: Sequence[Sequence[Ack]]) -> dict[str, Any]:
    """Per client kind: recovery (fault to the first acknowledged write sent after it, the slowest
    node deciding), acknowledged, lost, and the longest time without an acknowledgement; and the
    SETs run by a master no Sentinel majority named."""
    nodes = range(d.nodes) if d.recovery_from is None else d.recovery_from
    recovery: dict[str, float | None] = {}
    acked: dict[str, int] = {}
    lost: dict[str, int] = {}
    gap: dict[str, float] = {}
    for kind in CLIENT_KINDS:
        firsts = [d.writers.first_ack_via(i, d.t_injected, (kind,)) if d.faulted else None for i in nodes]
        known = [f for f in firsts if f is not None]
        recovery[kind] = round(max(known) - t0, 3) if known and len(known) == len(firsts) else None
        of_kind = [(w, gone) for w, gone in zip(d.writers.writers, missing, strict=True) if writer_kind(w) == kind]
        acked[kind] = sum(len(w.acked) for w, _ in of_kind)
        lost[kind] = sum(len(gone) for _, gone in of_kind)
        gaps = [b[2] - a[2] for w, _ in of_kind for a, b in zip(w.acked, w.acked[1:], strict=False) if b[2] >= t0]
        gap[kind] = round(max(gaps), 3) if gaps else 0.0
    return {
        "recovery_by_kind": recovery, "acked_by_kind": acked, "lost_by_kind": lost, "longest_gap_by_kind_s": gap,
        "sets_on_unnamed_master": sum(d.masters.unnamed_sets.values()),
        "sets_on_unnamed_master_by_node": dict(d.masters.unnamed_sets),
    }


def fence_log(cluster: LocalCluster) -> dict[str, list[str]]:
    """What each node's HAProxy fence did (its warnings in the HAProxy log), by node."""
    out = {}
    for i, node in enumerate(cluster.nodes):
        try:
            text = (Path(node.layout.log) / "haproxy.out").read_text(errors="replace")
        except OSError:
            continue
        lines = [line.split("hst-ha fence: ", 1)[1] for line in text.splitlines() if "hst-ha fence: " in line]
        if lines:
            out[node_name(i)] = lines
    return out


def timeline(d: Drill, t0: float) -> list[str]:
    """Key Sentinel events and HAProxy changes after `t0`, in seconds since it (for investigation)."""
    lines = []
    for when, sentinel, channel, data in d.events.since(t0):
        if channel in TIMELINE_EVENTS and not (channel in ("+sdown", "-sdown") and data.startswith("sentinel ")):
            lines.append((when - t0, f"sentinel@{sentinel} {channel} {data}"))
    for when, index, backend, server, status in d.watch.changes:
        if when >= t0 and (backend.startswith(GUARD_BACKEND_PREFIX) or backend == "redis_primary"):
            lines.append((when - t0, f"haproxy@{node_name(index)} {backend}/{server} {status}"))
    return [f"{t:7.3f} {text}" for t, text in sorted(lines)]
