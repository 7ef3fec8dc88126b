"""The restart drills: every way a Redis, or a whole node, comes back.

8. `restart-race`: SIGTERM of the primary's Redis, restarted 0.6-2 s later (a crash plus systemd's
   `Restart=always`, or an operator's restart), right into the failover it set off.
9. `node-restart`: the primary's whole node (Redis, Sentinel, HAProxy) SIGKILLed; after the
   failover it is started again by the operators' path (`local_cluster.py up`), its HAProxy fresh.
10. `rolling-restart`: every node in turn, the primary's first, by the README's path: stop the
    node's daemons (SIGTERM, as `systemctl stop` does), `up`, and the next one only once `up` has
    verified the cluster failover-ready again.

Each runs with every client kind (drills/clients.py) and returns the harness's figures plus its own.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drills.drill import Drill

__all__ = ["RESTART_DRILLS", "drill_node_restart", "drill_restart_race", "drill_rolling_restart"]

RESTART_DELAY_S = (0.6, 2.0)


def _budget(d: Drill) -> float:
    return d.failover_budget() + 5.0  # a failover, the start gate's wait, and every HAProxy following


def _address(d: Drill, index: int) -> str:
    host, port = d.cluster.redis_endpoints[index]
    return f"{host}:{port}"


def _gate_log(d: Drill, index: int) -> list[str]:
    """What node `index`'s Redis start gate decided, start by start."""
    try:
        text = (Path(d.cluster.nodes[index].layout.log) / "redis-pre-start.out").read_text(errors="replace")
    except OSError:
        return []
    return [line.split(": ", 1)[-1] for line in text.splitlines() if "hst-ha-redis-start-gate" in line]


def drill_restart_race(d: Drill, tail_s: float) -> str:
    """8. SIGTERM of the primary's Redis, restarted after a random 0.6-2 s into its own failover."""
    delay = round(random.uniform(*RESTART_DELAY_S), 2)
    d.extra["restart_after_s"] = delay
    d.fault(f"SIGTERM node-1 redis (the primary), restart after {delay:g}s",
            lambda: d.cluster.kill(0, "redis", signal.SIGTERM))
    time.sleep(max(0.0, delay - d.since_fault()))
    restarted = time.monotonic()
    d.cluster.start_step(0, "redis")  # the start gate runs first, as ExecStartPre does on AWS
    d.extra["redis_back_s"] = round(d.since_fault(), 3)
    d.extra["gate_waited_s"] = round(time.monotonic() - restarted, 3)
    d.extra["gate"] = _gate_log(d, 0)[-3:]
    d.writers.wait_recovered(_budget(d), d.t_injected)
    d.extra["old_primary_settled_s"] = d.wait_for(
        "old primary settled", lambda: d.follows_primary(0) or d.cluster.view.current_primary() == _address(d, 0),
        _budget(d), 0.02)
    time.sleep(tail_s)
    d.writers.stop_all()
    primary = d.settle()
    d.expected_failovers = 1 if d.events.promotions(d.t_fault) else 0
    return primary


def drill_node_restart(d: Drill, tail_s: float) -> str:
    """9. The primary's whole node killed; after the failover, started again with `up`."""

    def kill_node() -> None:
        for step in ("haproxy", "sentinel", "redis"):
            d.cluster.kill(0, step, signal.SIGKILL)

    d.recovery_from = (1, 2)  # node-1's HAProxy is down with its node; see node1_haproxy_recovered_s
    d.fault("SIGKILL node-1's redis, sentinel and haproxy (the primary's node)", kill_node)
    d.writers.wait_recovered(_budget(d), d.t_injected, nodes=(1, 2))
    d.extra["failover_seen_s"] = d.wait_for(
        "failover", lambda: d.cluster.view.current_primary() not in (None, _address(d, 0)), _budget(d))
    time.sleep(0.5)
    restarted = time.monotonic()
    d.cluster.up(timeout_s=_budget(d))  # starts what is missing, Redis through its gate, then verifies
    d.extra["restart_to_failover_ready_s"] = round(time.monotonic() - restarted, 3)
    d.extra["gate"] = _gate_log(d, 0)[-3:]
    d.writers.wait_recovered(_budget(d), restarted, nodes=(0,))
    first = d.writers.first_ack_via(0, restarted)
    d.extra["node1_haproxy_recovered_s"] = round(first - restarted, 3) if first is not None else None
    time.sleep(tail_s)
    d.writers.stop_all()
    return d.settle()


def drill_rolling_restart(d: Drill, tail_s: float) -> str:
    """10. Every node restarted in turn by the operators' path, the primary's node first. The fault
    clock starts at the primary's node's stop; `longest_gap_by_kind_s` covers the whole procedure."""
    # A restart of the node that is primary at that moment may cost one failover (back later than
    # downAfterMs); a replica's restart never may. When node-1's restart fails over, the primary is
    # then on a node the roll restarts later, and that restart is a primary's restart again.
    d.expected_failovers = 0
    primary = d.cluster.addresses[0]
    steps: list[dict[str, Any]] = []

    def stop(index: int) -> None:
        for step in ("haproxy", "sentinel", "redis"):  # what `systemctl stop` of the three units does
            d.cluster.kill(index, step, signal.SIGTERM)

    for index in range(d.nodes):
        began = time.monotonic()
        was_primary = d.cluster.addresses[index] == primary
        d.expected_failovers += was_primary
        if index == 0:
            d.fault("rolling restart: stop node-1 (the primary), `up`, then node-2 and node-3 alike", lambda: stop(0))
        else:
            stop(index)
        outputs = d.cluster.up(timeout_s=_budget(d))  # starts what is missing, then verifies failover-ready
        primary = str(outputs["quorum"]["primary"]).rsplit(":", 1)[0]
        steps.append({"node": index + 1, "was_primary": was_primary,
                      "failover_ready_s": round(time.monotonic() - began, 3), "gate": _gate_log(d, index)[-1:]})
        if index == 0:
            d.writers.wait_recovered(_budget(d), d.t_injected)
    d.extra["restarts"] = steps
    d.extra["rolling_restart_s"] = round(d.since_fault(), 3)
    d.writers.wait_recovered(_budget(d), time.monotonic())
    time.sleep(tail_s)
    d.writers.stop_all()
    return d.settle()


RESTART_DRILLS = {
    "restart-race": drill_restart_race,
    "node-restart": drill_node_restart,
    "rolling-restart": drill_rolling_restart,
}
