"""The fault drills, one function each: inject one fault into a running `Drill`, wait for what
must follow, record the drill's own figures in `d.extra`, and return the final primary.

1 kill-primary, 2 zombie-primary, 2b zombie-mid-failover, 3 short-pause, 4a one-sentinel-down,
4b two-sentinels-down, 5 old-primary-rejoins, 6 replica-rebuilt, 7 partition.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from components.bundle import node_name
from components.bundle.users import MONITOR
from components.local.cluster import LocalClusterError
from components.runtime import haproxy_admin
from components.runtime.quorum import QuorumError, one_shot_client
from drills.drill import Drill
from drills.figures import REPLY_DELIVERY_S
from drills.restart_drills import RESTART_DRILLS
from drills.switchover_drill import drill_switchover

__all__ = ["DRILLS", "DRILL_ALIASES", "NETNS_ENV"]

NETNS_ENV = "HST_DRILL_PRIVATE_NETNS"  # set in the child that runs inside its own network namespace


def drill_kill_primary(d: Drill, tail_s: float) -> str:
    """1. SIGKILL of the primary's Redis."""
    d.fault("SIGKILL node-1 redis (the primary)", lambda: d.cluster.kill(0, "redis", signal.SIGKILL))
    if not d.wait_recovered():
        d.extra["not_recovered"] = True
    time.sleep(tail_s)
    d.writers.stop_all()
    return d.settle()


def drill_zombie_primary(d: Drill, tail_s: float) -> str:
    """2. SIGSTOP of the primary for 2 x downAfterMs but at least downAfterMs + 3 s, then SIGCONT.
    At 1000 ms a 2 s pause often ends before the promotion (detection, the up-to-1 s start desync
    and election, then promotion seen at the next 1 s INFO); the extra 3 s make the old primary
    resume after the failover, as a zombie: it still says role:master until Sentinel demotes it."""
    stop_s = max(2 * d.down_after_s, d.down_after_s + 3.0)
    d.extra["paused_s"] = stop_s
    d.fault(f"SIGSTOP node-1 redis for {stop_s:g}s", lambda: d.cluster.kill(0, "redis", signal.SIGSTOP))
    try:
        time.sleep(stop_s)
    finally:
        d.cluster.kill(0, "redis", signal.SIGCONT)
    resumed = time.monotonic()
    d.extra["resumed_at_s"] = round(resumed - d.t_fault, 3)
    d.extra["failovers_before_resume"] = len(d.events.promotions(d.t_fault))
    return _after_zombie_resumed(d, resumed, tail_s)


def _after_zombie_resumed(d: Drill, resumed: float, tail_s: float) -> str:
    """Both zombie drills end alike: recovery, the old primary's demotion, and which node's
    HAProxy still took writes after it resumed."""
    d.wait_recovered()
    d.extra["old_primary_demoted_s"] = d.wait_for(
        "old primary demoted", lambda: (d.role(0) or {}).get("role") == "slave", d.failover_budget())
    time.sleep(tail_s)
    d.writers.stop_all()
    d.extra["acked_after_resume_via"] = {
        node_name(i): d.writers.acked_via(i, resumed, time.monotonic()) for i in range(d.nodes)
    }
    return d.settle()


def drill_zombie_mid_failover(d: Drill, tail_s: float) -> str:
    """2b. The nastiest zombie: SIGSTOP of the primary, SIGCONT the moment the failover leader has
    told a replica to become primary (+failover-state-wait-promotion), i.e. before any Sentinel
    names the new primary. The old primary resumes with its other replica still attached."""
    resumed: list[float] = []

    def stop() -> None:
        d.cluster.kill(0, "redis", signal.SIGSTOP)

    d.fault("SIGSTOP node-1 redis until the failover leader promotes a replica", stop)
    try:
        deadline = time.monotonic() + d.failover_budget()
        while time.monotonic() < deadline and not d.events.since(d.t_fault, "+failover-state-wait-promotion"):
            time.sleep(0.005)
    finally:
        d.cluster.kill(0, "redis", signal.SIGCONT)
        resumed.append(time.monotonic())
    d.extra["resumed_at_s"] = round(resumed[0] - d.t_fault, 3)
    return _after_zombie_resumed(d, resumed[0], tail_s)


def drill_short_pause(d: Drill, tail_s: float) -> str:
    """3. SIGSTOP of the primary for half of downAfterMs: shorter than detection, so no failover."""
    d.expected_failovers = 0
    pause_s = d.down_after_s / 2
    d.extra["paused_s"] = pause_s
    d.fault(f"SIGSTOP node-1 redis for {pause_s:g}s", lambda: d.cluster.kill(0, "redis", signal.SIGSTOP))
    try:
        time.sleep(pause_s)
    finally:
        d.cluster.kill(0, "redis", signal.SIGCONT)
    d.wait_recovered()
    # Watch long enough for a failover that a pause wrongly started to show: detection + election.
    time.sleep(max(tail_s, d.down_after_s + 3.0))
    d.writers.stop_all()
    d.extra["sdown_of_primary"] = len([e for e in d.events.since(d.t_fault, "+sdown") if e[3].startswith("master ")])
    return d.settle()


def drill_one_sentinel_down(d: Drill, tail_s: float) -> str:
    """4a. One Sentinel (node-3's) killed, then the primary's Redis: the two left still fail over."""
    d.cluster.kill(2, "sentinel", signal.SIGKILL)
    time.sleep(0.2)
    d.fault("SIGKILL node-1 redis with node-3's Sentinel down", lambda: d.cluster.kill(0, "redis", signal.SIGKILL))
    if not d.wait_recovered():
        d.extra["not_recovered"] = True
    time.sleep(tail_s)
    d.writers.stop_all()
    primary = d.settle()
    d.extra["sentinels_naming_new_primary"] = sum(1 for p in d.cluster.view.sentinel_primaries() if p == primary)
    return primary


def drill_two_sentinels_down(d: Drill, tail_s: float) -> str:
    """4b. Two Sentinels killed (node-1's and node-3's), then the primary's Redis: the one Sentinel
    left (next to a healthy replica) cannot fail over alone, and the quorum verification says so.
    Then everything is restarted; nothing acknowledged may be missing afterwards."""
    d.expected_failovers = 0
    d.recovery_from = ()  # no recovery while the Sentinels are down: recovery_s is None; see restored_s
    d.cluster.kill(0, "sentinel", signal.SIGKILL)
    d.cluster.kill(2, "sentinel", signal.SIGKILL)
    time.sleep(0.2)
    d.fault("SIGKILL node-1 redis with two Sentinels down", lambda: d.cluster.kill(0, "redis", signal.SIGKILL))
    time.sleep(d.down_after_s + 4.0)  # detection, election and promotion would all be over by now
    d.extra["failovers_while_down"] = len(d.events.promotions(d.t_fault))
    try:
        d.cluster.verify(timeout_s=3.0)
        d.extra["quorum_error"] = None
    except QuorumError as exc:
        d.extra["quorum_error"] = str(exc)
    # From one reply-delivery time after the kill: a reply the primary sent just before it died can
    # be read a moment later (figures.REPLY_DELIVERY_S), and it was acknowledged while it was up.
    since = d.t_injected + REPLY_DELIVERY_S
    d.extra["acked_while_down"] = sum(d.writers.acked_via(i, since, time.monotonic()) for i in range(d.nodes))
    # Restore: Redis first (so the returning Sentinels find the primary alive), then the Sentinels.
    d.cluster.start_step(0, "redis")
    d.cluster.start_step(0, "sentinel")
    d.cluster.start_step(2, "sentinel")
    restored = time.monotonic()
    # Writes may flow again before the last Sentinel is back (two of three already name the
    # primary): wait for writes SENT after the restore, or the figure is read before they come.
    d.wait_recovered(since=restored)
    firsts = [d.writers.first_ack_via(i, restored) for i in range(d.nodes)]
    acked = [f for f in firsts if f is not None]
    d.extra["restored_s"] = round(max(acked) - restored, 3) if acked and len(acked) == len(firsts) else None
    time.sleep(tail_s)
    d.writers.stop_all()
    return d.settle()


def drill_old_primary_rejoins(d: Drill, tail_s: float) -> str:
    """5. SIGKILL of the primary, failover, then the old primary restarted with its old data: it must
    become a replica, and no HAProxy may route a connection to it while it is stale."""
    d.fault("SIGKILL node-1 redis (the primary)", lambda: d.cluster.kill(0, "redis", signal.SIGKILL))
    if not d.wait_recovered():
        d.extra["not_recovered"] = True
    time.sleep(0.5)
    sockets = [n.layout.haproxy_socket for n in d.cluster.nodes]
    before = [int(haproxy_admin.stat(s)[("redis_primary", "node-1")]["stot"] or 0) for s in sockets]
    restarted = time.monotonic()
    d.cluster.start_step(0, "redis")
    d.extra["restarted_at_s"] = round(d.since_fault(), 3)
    stale_seen: list[float] = []
    sets: list[int] = []  # SET calls the old primary executed, sampled while it still said role:master

    def follows() -> bool:
        info = d.role(0) or {}
        if info.get("role") == "master":
            stale_seen.append(time.monotonic())
            client = one_shot_client(d.cluster.redis_endpoints[0], d.monitor_password, 0.5, MONITOR.redis_user,
                                     d.tls_ca_file)
            try:
                sets.append(int(client.info("commandstats").get("cmdstat_set", {}).get("calls", 0)))
            finally:
                client.close()
        primary = d.cluster.view.current_primary()
        return (info.get("role") == "slave" and info.get("master_link_status") == "up"
                and primary is not None and f"{info.get('master_host')}:{info.get('master_port')}" == primary)

    d.extra["old_primary_replica_s"] = d.wait_for("old primary follows the new one", follows, d.failover_budget(), 0.02)
    d.extra["old_primary_said_master_for_s"] = round(stale_seen[-1] - restarted, 3) if stale_seen else 0.0
    time.sleep(tail_s)
    d.writers.stop_all()
    after = [int(haproxy_admin.stat(s)[("redis_primary", "node-1")]["stot"] or 0) for s in sockets]
    # HAProxy's own count (show stat, stot) of sessions it assigned to the old primary's server. It also
    # counts attempts while the server is still DOWN (assigned, never connected: clients reconnecting
    # during the outage), so the Redis side is the proof: the SETs the old primary itself executed
    # between its restart and its demotion.
    d.extra["haproxy_sessions_assigned_to_old_primary"] = {
        node_name(i): a - b for i, (a, b) in enumerate(zip(after, before, strict=True))}
    d.extra["writes_executed_by_stale_old_primary"] = (sets[-1] - sets[0]) if sets else 0
    d.extra["old_primary_role"] = (d.role(0) or {}).get("role")
    return d.settle()


def drill_replica_rebuilt(d: Drill, tail_s: float) -> str:
    """6. After a failover (node-2 primary), node-1 (now a replica) is wiped and re-rendered from its
    INITIAL bundle, which names itself as primary: it must follow the current primary instead."""
    d.expected_failovers = 0  # the setup failover happens before the drill's clock starts

    def terminate() -> None:  # the instance goes away, and its clients (HST Server) with it
        d.writers.stop_node(0)
        for step in ("haproxy", "sentinel", "redis"):
            d.cluster.kill(0, step, signal.SIGKILL)

    d.fault("node-1's instance terminated", terminate)
    d.progress("replica-rebuilt: reprovisioning node-1 from its initial bundle (wiped home)")
    failure: list[BaseException] = []

    def reprovision() -> None:
        try:
            d.cluster.wipe_and_reprovision(0)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failure.append(exc)

    worker = threading.Thread(target=reprovision, name="reprovision", daemon=True)
    worker.start()
    redis_answers: list[float] = []

    def follows() -> bool:
        info = d.role(0) or {}
        if info and not redis_answers:
            redis_answers.append(round(d.since_fault(), 3))
        primary = d.cluster.view.current_primary()
        return (info.get("role") == "slave" and info.get("master_link_status") == "up"
                and primary is not None and f"{info.get('master_host')}:{info.get('master_port')}" == primary)

    d.extra["rebuilt_replica_follows_s"] = d.wait_for(
        "rebuilt node follows the primary", follows, d.failover_budget(), 0.02)
    d.extra["rebuilt_redis_answers_s"] = redis_answers[0] if redis_answers else None
    worker.join(d.failover_budget() + 60)
    if failure:
        raise failure[0]
    d.extra["reprovisioned_s"] = round(d.since_fault(), 3)  # boot script run and every daemon ready
    d.writers.add_node(0)  # the new instance's clients
    d.wait_recovered()
    time.sleep(tail_s)
    d.writers.stop_all()
    primary = d.settle()
    info = d.role(0) or {}
    d.extra["rebuilt_role"] = info.get("role")
    d.extra["rebuilt_master"] = f"{info.get('master_host')}:{info.get('master_port')}"
    try:
        d.cluster.verify(timeout_s=20.0)
        d.extra["quorum_after_rebuild"] = "ok"
    except QuorumError as exc:
        d.extra["quorum_after_rebuild"] = str(exc)
    return primary


def _partition_rules(action: str, isolated: str, others: Sequence[str]) -> None:
    for other in others:
        for src, dst in ((isolated, other), (other, isolated)):
            subprocess.run(["ip", "rule", action, "from", src, "to", dst, "blackhole", "pref", "10"],
                           check=True, capture_output=True)


def drill_partition(d: Drill, tail_s: float, hold_factor: float = 0.0) -> str:
    """7. Network partition: node-1 (the primary) cut off from node-2 and node-3 (packets silently
    dropped both ways; each node's clients still reach their own HAProxy), then healed.
    Runs only inside a private network namespace (see run_drill)."""
    if os.environ.get(NETNS_ENV) != "1":
        raise LocalClusterError(
            "the partition drill changes routing rules; it runs only in a private network namespace")
    isolated = d.cluster.addresses[0]
    others = d.cluster.addresses[1:]
    hold_s = max(hold_factor * d.down_after_s, d.down_after_s + 4.0)
    d.extra["partition_s"] = hold_s
    d.recovery_from = (1, 2)  # the majority side; node-1's clients are cut off with their primary
    d.fault(f"partition node-1 from node-2 and node-3 for {hold_s:g}s",
            lambda: _partition_rules("add", isolated, others))
    try:
        time.sleep(hold_s)
    finally:
        _partition_rules("del", isolated, others)
    healed = time.monotonic()
    d.extra["acked_via_minority_during_partition"] = [
        w.acked_between(d.t_injected, healed) for w in d.writers.of_node(0)]
    # When node-1's clients last got an acknowledgement while cut off: the fence's figure.
    minority_acks = [acked for w in d.writers.of_node(0) for _, _, acked in w.acked if d.t_injected <= acked < healed]
    d.extra["minority_last_ack_s"] = round(max(minority_acks) - d.t_fault, 3) if minority_acks else None
    d.extra["failovers_during_partition"] = len(d.events.promotions(d.t_fault))
    d.extra["old_primary_demoted_s"] = d.wait_for(
        "old primary demoted", lambda: (d.role(0) or {}).get("role") == "slave", d.failover_budget())
    d.wait_recovered()
    first = d.writers.first_ack_via(0, healed)
    d.extra["minority_recovered_after_heal_s"] = round(first - healed, 3) if first is not None else None
    time.sleep(tail_s)
    d.writers.stop_all()
    return d.settle()


DRILLS: dict[str, Callable[..., str]] = {
    "kill-primary": drill_kill_primary,
    "zombie-primary": drill_zombie_primary,
    "zombie-mid-failover": drill_zombie_mid_failover,
    "short-pause": drill_short_pause,
    "one-sentinel-down": drill_one_sentinel_down,
    "two-sentinels-down": drill_two_sentinels_down,
    "old-primary-rejoins": drill_old_primary_rejoins,
    "replica-rebuilt": drill_replica_rebuilt,
    "partition": drill_partition,
    **RESTART_DRILLS,
    "switchover": drill_switchover,
}
DRILL_ALIASES = {"1": "kill-primary", "2": "zombie-primary", "2b": "zombie-mid-failover", "3": "short-pause",
                 "4a": "one-sentinel-down", "4b": "two-sentinels-down", "5": "old-primary-rejoins",
                 "6": "replica-rebuilt", "7": "partition", "8": "restart-race", "9": "node-restart",
                 "10": "rolling-restart", "11": "switchover"}
