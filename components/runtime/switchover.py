"""A planned switchover that loses nothing: writes paused on the primary (not refused), the chosen
replica caught up to the last byte, `SENTINEL FAILOVER`, a Sentinel majority following, pause lifted.

Plain Python (no Pulumi import). Every command goes through a `Commands` transport: `direct_commands`
speaks redis-py to the endpoints from here as the operator user (the local target, the drills); on
AWS the same `switchover` runs with a transport that sends each command with redis-cli on a node over
SSM. Replies are what redis-py returns (INFO parsed to a dict), whichever transport fetched them.

Why each step is there:
- SENTINEL FAILOVER picks the replica itself, by replica-priority then offset. To promote the chosen
  one, every other replica gets `replica-priority 0` first (restored at the end), and the Sentinel
  asked must have seen that in its replicas' INFO (refreshed every 10 s) before the failover starts.
- `CLIENT PAUSE <ms> WRITE` holds writes in the primary's input buffers; nothing new enters the
  replication stream, so the target's offset can equal the primary's, and then nothing acknowledged
  is missing from it. The pause has its own timeout: if this process dies, writes resume by themselves.
- Before the pause is lifted the old primary must be a replica (of the new primary): writes it held
  would otherwise run on it and be lost when Sentinel demotes it. `REPLICAOF` is what Sentinel sends
  it anyway, only sooner.
- The moment of `SENTINEL FAILOVER` is chosen (before the pause) from the asked Sentinel's last INFO of
  the target (`info-refresh` in SENTINEL REPLICAS). Sentinel notices the promotion only in an INFO reply
  from the target; while a failover is in progress it sends a replica INFO at the first timer tick
  (every 50-100 ms) at which its last reply is over 1 s old (sentinel.c sentinelSendPeriodicCommands).
  The failover advances one state per tick and sends `REPLICAOF NO ONE` at the third tick, before the
  replicas' INFO of that tick; so when the second tick (at most 0.2 s after SENTINEL FAILOVER) still
  finds the last INFO under 1 s old, the next INFO is the first after `REPLICAOF NO ONE` and sees
  role:master, 1 - INFO_AGE_AIM_S s after the failover started, instead of one more INFO period (1 s)
  when an INFO goes out first (always, untimed: a replica's INFO is normally 0-10 s old). When the phase
  cannot be read (no `info-refresh`, a slow transport), the failover starts at once, untimed.
- The primary sends its replicas a PING every `repl-ping-replica-period` (10 s), paused or not (Redis
  skips it only in its own FAILOVER): 14 bytes after the target caught up would move the fork past the
  paused offset, and the proof below could not tell them from a lost write. So the primary's period is
  raised to the largest Redis takes for the switchover (restored at the end; Redis PINGs when its
  seconds counter is a multiple of it): while paused, its stream cannot grow.
- Any failure unpauses the primary and restores the priorities and the ping period before the error
  is raised.

The password never appears in a message: it is only handed to redis-py (or the remote transport).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from components.bundle.users import HST, OPERATOR
from components.runtime.quorum import one_shot_client

__all__ = ["Commands", "SwitchoverError", "SwitchoverReport", "direct_commands", "switchover"]

Progress = Callable[[str], None]
Send = Callable[[str, Sequence[str]], Any]  # ("host:port", command words) -> redis-py's reply

PRIORITY_SEEN_TIMEOUT_S = 15.0  # Sentinel refreshes a replica's INFO every 10 s
CATCH_UP_TIMEOUT_S = 2.0
FAILOVER_TIMEOUT_S = 10.0
PAUSE_MARGIN_S = 5.0  # the pause's own timeout outlives every wait it covers by this much
QUIET_PING_PERIOD_S = 2**31 - 1  # repl-ping-replica-period while switching: the largest Redis takes (above)
POLL_S = 0.01
# Timing SENTINEL FAILOVER against the asked Sentinel's INFO of the target (module docstring).
FAILOVER_INFO_PERIOD_S = 1.0  # sentinel.c: a replica's INFO period while its master fails over
INFO_AGE_AIM_S = 0.75  # the INFO's age when SENTINEL FAILOVER arrives; the ticks up to REPLICAOF NO ONE fit in the rest
INFO_AGE_TOLERANCE_S = 0.05  # later than the aim by more is reported
INFO_FRESH_S = 0.15  # the timing's first step ends on an INFO reply this recent (3 polls wide)
PHASE_TIMEOUT_S = 12.0  # a healthy replica's INFO period is 10 s (sentinel_info_period)
PHASE_POLL_S = 0.05
PHASE_MAX_RTT_S = 0.15  # slower (a remote transport): LEAD_RTTS round trips would not fit before the aim
PHASE_SLOW_READINGS = 3  # that many slow round trips in a row: the transport is slow, not one moment of it
LEAD_RTTS = 4  # round trips from the phase's last reading to SENTINEL FAILOVER: pause, catch-up (2), FAILOVER


class SwitchoverError(RuntimeError):
    """The switchover did not complete; the message says at which step and in what state it left the
    cluster (always unpaused, priorities restored where it could reach the nodes)."""


@dataclass(frozen=True)
class Commands:
    """How commands reach the nodes: `redis` to a Redis, `sentinel` to a Sentinel, both as the operator."""

    redis: Send
    sentinel: Send


def direct_commands(password: str, timeout_s: float = 1.0, tls_ca_file: str | None = None, *,
                    reuse_connections: bool = False) -> Commands:
    """Commands over redis-py from this machine, as the operator user on Redis and on Sentinel
    (over TLS, verified with `tls_ca_file`, under tlsEnabled). Each command on a new connection, or with
    `reuse_connections` on one kept per endpoint: one round trip instead of three (connect, AUTH,
    command), which counts in a process busy with other threads (the drills' writers), where each
    round trip waits for the GIL. A kept connection that the server closed meanwhile (Sentinel's
    `CLIENT KILL TYPE normal` on a replica it reconfigures) is replaced when it is next taken: redis-py
    checks it before each command."""

    def send(user: str | None) -> Send:
        kept: dict[str, redis.Redis] = {}
        lock = threading.Lock()

        def run(endpoint: str, words: Sequence[str]) -> Any:
            host, port = endpoint.rsplit(":", 1)
            if not reuse_connections:
                client = one_shot_client((host, int(port)), password, timeout_s, user, tls_ca_file)
                try:
                    return client.execute_command(*words)
                finally:
                    client.close()
            with lock:
                if endpoint not in kept:
                    kept[endpoint] = one_shot_client((host, int(port)), password, timeout_s, user, tls_ca_file)
                reused = kept[endpoint]
            return reused.execute_command(*words)
        return run

    return Commands(redis=send(OPERATOR.redis_user), sentinel=send(OPERATOR.sentinel_user))


@dataclass(frozen=True)
class SwitchoverReport:
    """What was done. `to_dict()` is the JSON form."""

    master_name: str
    old_primary: str
    new_primary: str
    asked_sentinel: str
    offset: int  # the replication offset both held when the failover started
    promoted_at_offset: int  # the new primary's history forks there (second_repl_offset - 1): == offset
    write_pause_s: float  # CLIENT PAUSE to CLIENT UNPAUSE on the old primary
    catch_up_s: float
    failover_s: float  # SENTINEL FAILOVER to a majority naming the new primary
    elapsed_s: float
    # How old the asked Sentinel's last INFO of the target was when SENTINEL FAILOVER was sent (-1: not
    # known, the failover was not timed), and how long the switchover waited for that moment (nothing paused).
    info_age_at_failover_s: float = -1.0
    phase_wait_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _as_dict(reply: Any) -> dict[str, Any]:
    if isinstance(reply, dict):
        return {str(k): v for k, v in reply.items()}
    items = list(reply or [])
    return {str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _addr(host: Any, port: Any) -> str:
    return f"{host}:{port}"


class _Switch:
    def __init__(self, sentinels: Sequence[str], redis_nodes: Sequence[str], master_name: str, commands: Commands,
                 progress: Progress, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.sentinels = list(sentinels)
        self.redis_nodes = list(redis_nodes)
        self.master_name = master_name
        self.c = commands
        self.progress = progress
        self.clock = clock
        self.sleep = sleep
        self.restore: dict[tuple[str, str], str] = {}  # (node, option) -> its value before we set it

    # --- reading

    def named(self) -> list[str | None]:
        out: list[str | None] = []
        for sentinel in self.sentinels:
            try:
                host, port = self.c.sentinel(sentinel, ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name))
                out.append(_addr(host, port))
            except (redis.RedisError, OSError, TypeError, ValueError):
                out.append(None)
        return out

    def majority_primary(self) -> str | None:
        named = self.named()
        counts = Counter(p for p in named if p)
        if counts:
            primary, votes = counts.most_common(1)[0]
            if votes > len(self.sentinels) // 2:
                return primary
        return None

    def info(self, node: str) -> dict[str, Any]:
        return _as_dict(self.c.redis(node, ("INFO", "replication")))

    def wait(self, what: str, timeout_s: float, check: Callable[[], bool]) -> float:
        started = self.clock()
        while True:
            try:
                if check():
                    return self.clock() - started
            except (redis.RedisError, OSError):
                pass
            if self.clock() - started >= timeout_s:
                raise SwitchoverError(f"{what}: not within {timeout_s:g}s")
            self.sleep(POLL_S)

    # --- steps

    def choose(self, primary: str, to: str | None) -> tuple[str, list[str]]:
        """The target replica and the other replicas. Healthy: online at the primary, its own link up,
        priority not 0; by default the most caught-up one."""
        info = self.info(primary)
        if info.get("role") != "master":
            raise SwitchoverError(f"{primary}, named by a Sentinel majority, says role:{info.get('role')}; "
                                  "wait until the cluster is settled (status)")
        replicas = {_addr(v["ip"], v["port"]): v for k, v in info.items()
                    if k.startswith("slave") and isinstance(v, dict)}
        healthy: dict[str, int] = {}
        faults: list[str] = []
        for replica, entry in replicas.items():
            problem = self.replica_problem(replica, entry, primary)
            if problem:
                faults.append(f"{replica} {problem}")
            else:
                healthy[replica] = int(entry.get("offset", 0))
        if to is not None:
            if self.redis_nodes and to not in self.redis_nodes:
                raise SwitchoverError(f"--to {to} is not one of the cluster's Redis nodes "
                                      f"({', '.join(self.redis_nodes)})")
            if to == primary:
                raise SwitchoverError(f"--to {to} is the current primary already; nothing to switch over")
            if to not in healthy:
                why = next((f for f in faults if f.startswith(f"{to} ")), f"{to} is not a replica of {primary}")
                raise SwitchoverError(f"cannot switch over to {to}: {why}; pick another replica or none "
                                      f"(healthy: {', '.join(sorted(healthy)) or 'none'})")
            target = to
        elif healthy:
            target = max(sorted(healthy), key=lambda r: healthy[r])
        else:
            raise SwitchoverError(f"no healthy replica of {primary} to switch over to ({'; '.join(faults)})")
        return target, sorted(r for r in replicas if r != target)

    def replica_problem(self, replica: str, entry: dict[str, Any], primary: str) -> str | None:
        if entry.get("state") != "online":
            return f"is {entry.get('state')} at the primary"
        try:
            own = self.info(replica)
            priority = _as_dict(self.c.redis(replica, ("CONFIG", "GET", "replica-priority"))).get("replica-priority")
        except (redis.RedisError, OSError) as exc:
            return f"does not answer ({type(exc).__name__})"
        if own.get("master_link_status") != "up" or _addr(own.get("master_host"), own.get("master_port")) != primary:
            return f"has its link {own.get('master_link_status')} to {own.get('master_host')}:{own.get('master_port')}"
        if str(priority) == "0":
            return "has replica-priority 0 (never promoted)"
        return None

    def exclude_others(self, others: Sequence[str], sentinel: str) -> float:
        """replica-priority 0 on the others, and wait until `sentinel` sees it."""
        for replica in others:
            self.set_config(replica, "replica-priority", "0")
        if not others:
            return 0.0
        self.progress(f"replica-priority 0 on {', '.join(others)}; waiting for Sentinel {sentinel} to see it")

        def seen() -> bool:
            listed = [_as_dict(r) for r in self.c.sentinel(sentinel, ("SENTINEL", "REPLICAS", self.master_name))]
            priorities = {_addr(r.get("ip"), r.get("port")): str(r.get("slave-priority")) for r in listed}
            return all(priorities.get(r) == "0" for r in others)

        return self.wait(f"Sentinel {sentinel} seeing replica-priority 0 on {', '.join(others)}",
                         PRIORITY_SEEN_TIMEOUT_S, seen)

    def set_config(self, node: str, option: str, value: str) -> None:
        """CONFIG SET for the switchover's duration: the value before is kept for `restore_config`."""
        if (node, option) not in self.restore:
            before = _as_dict(self.c.redis(node, ("CONFIG", "GET", option)))[option]
            self.restore[(node, option)] = str(before)
        self.c.redis(node, ("CONFIG", "SET", option, value))

    def restore_config(self) -> list[str]:
        """Every option `set_config` changed back to its value before; what could not be, by node."""
        failed = []
        for (node, option), value in self.restore.items():
            try:
                self.c.redis(node, ("CONFIG", "SET", option, value))
            except (redis.RedisError, OSError) as exc:
                failed.append(f"{node} ({type(exc).__name__}; set {option} {value} by hand)")
        self.restore.clear()
        return failed

    def info_age(self, sentinel: str, target: str) -> tuple[float, float, float] | None:
        """How old `sentinel`'s last INFO reply from `target` is (estimated at the returned clock time),
        and the round trip that read it; None when the Sentinel does not say or cannot be read."""
        try:
            sent = self.clock()
            listed = [_as_dict(r) for r in self.c.sentinel(sentinel, ("SENTINEL", "REPLICAS", self.master_name))]
            received = self.clock()
            rtt = received - sent
            for replica in listed:
                if _addr(replica.get("ip"), replica.get("port")) == target and "info-refresh" in replica:
                    return int(replica["info-refresh"]) / 1000 + rtt / 2, received, rtt
        except (redis.RedisError, OSError, TypeError, ValueError):
            pass
        self.progress(f"Sentinel {sentinel} does not say when it last read {target}'s INFO; failing over untimed")
        return None

    def await_fresh_info(self, sentinel: str, target: str) -> bool:
        """Wait (nothing paused) for `sentinel`'s next INFO reply from `target` (a healthy replica's comes
        every 10 s): the timing's first step, leaving `on_pause` most of INFO_AGE_AIM_S. False when the
        phase cannot be known (fail over untimed)."""
        deadline = self.clock() + PHASE_TIMEOUT_S
        slow = 0
        while (reading := self.info_age(sentinel, target)) is not None:
            age, _, rtt = reading
            slow = slow + 1 if rtt > PHASE_MAX_RTT_S else 0
            if slow >= PHASE_SLOW_READINGS:
                self.progress(f"round trips to Sentinel {sentinel} take {rtt:.3f}s: too slow to time the "
                              "failover against its INFO; failing over untimed")
                return False
            if not slow and age <= INFO_FRESH_S:
                return True
            if self.clock() >= deadline:
                self.progress(f"Sentinel {sentinel} did not read {target}'s INFO within {PHASE_TIMEOUT_S:g}s; "
                              "failing over untimed")
                return False
            self.sleep(PHASE_POLL_S)
        return False

    def time_failover(self, sentinel: str, target: str) -> float | None:
        """Wait (nothing paused) until SENTINEL FAILOVER, after LEAD_RTTS more round trips, reaches
        `sentinel` when its last INFO of `target` is INFO_AGE_AIM_S old. Returns the clock time of that
        INFO reply (None: not known)."""
        reading = self.info_age(sentinel, target)
        if reading is None:
            return None
        age, at, rtt = reading
        wait = INFO_AGE_AIM_S - age - LEAD_RTTS * rtt - (self.clock() - at)
        if wait < -INFO_AGE_TOLERANCE_S:  # at once is the best left; likely one INFO period more
            self.progress(f"Sentinel {sentinel}'s INFO of {target} is already {age:.3f}s old "
                          f"(aimed at {INFO_AGE_AIM_S:g}s): failing over at once")
        self.sleep(max(0.0, wait))
        return at - age

    def sentinel_to_ask(self, primary: str) -> str:
        """The first Sentinel that answers and names `primary` (the one that sees the priorities)."""
        for sentinel, named in zip(self.sentinels, self.named(), strict=True):
            if named == primary:
                return sentinel
        raise SwitchoverError(f"no Sentinel answers naming {primary}")


def switchover(
    sentinels: Sequence[str], redis_nodes: Sequence[str], master_name: str, commands: Commands, *,
    to: str | None = None, progress: Progress | None = None, on_pause: Callable[[], None] | None = None,
    client_user: str = HST.redis_user or "default",
    catch_up_timeout_s: float = CATCH_UP_TIMEOUT_S, failover_timeout_s: float = FAILOVER_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> SwitchoverReport:
    """Switch the primary of `master_name` over to a caught-up replica (`to`, "host:port", or the most
    caught-up healthy one), losing no acknowledged write and refusing none at the primary. `on_pause` is
    called shortly before the writes are paused (the drills start their clock there): up to
    INFO_AGE_AIM_S before, while SENTINEL FAILOVER is timed. `client_user` is the
    applications' Redis user, whose connections to the old primary are ended before the pause is lifted."""
    say = progress or (lambda message: None)
    s = _Switch(sentinels, redis_nodes, master_name, commands, say, clock, sleep)
    started = clock()
    primary = s.majority_primary()
    if primary is None:
        raise SwitchoverError(f"no primary named by a majority of Sentinels ({s.named()}); run status first")
    target, others = s.choose(primary, to)
    sentinel = s.sentinel_to_ask(primary)
    say(f"switching over from {primary} to {target} (Sentinel {sentinel})")
    pause_ms = int((catch_up_timeout_s + failover_timeout_s + PAUSE_MARGIN_S) * 1000)
    paused_at: float | None = None
    try:
        s.exclude_others(others, sentinel)
        # In two steps, nothing paused: a fresh INFO (up to 10 s), then `on_pause`, whose duration is
        # unknown, then exactly to the aim less what follows until SENTINEL FAILOVER.
        timing = clock()
        timed = s.await_fresh_info(sentinel, target)
        if on_pause is not None:
            on_pause()
        info_at = s.time_failover(sentinel, target) if timed else None
        phase_wait_s = clock() - timing
        s.set_config(primary, "repl-ping-replica-period", str(QUIET_PING_PERIOD_S))
        s.c.redis(primary, ("CLIENT", "PAUSE", str(pause_ms), "WRITE"))
        paused_at = clock()
        say(f"writes paused on {primary} (at most {pause_ms} ms); waiting for {target} to catch up")
        offsets: dict[str, int] = {}
        histories: list[str] = []

        def caught_up() -> bool:
            primary_info = s.info(primary)
            histories.append(str(primary_info.get("master_replid", "")))  # paused: it cannot change
            offsets["primary"] = int(primary_info["master_repl_offset"])
            offsets["target"] = int(s.info(target).get("slave_repl_offset", -1))
            return offsets["primary"] == offsets["target"]

        try:
            catch_up_s = s.wait(f"{target} catching up with {primary}", catch_up_timeout_s, caught_up)
        except SwitchoverError as exc:
            raise SwitchoverError(f"{exc} (offsets {offsets}); nothing switched") from None
        info_age_s = -1.0 if info_at is None else clock() - info_at
        say(f"{target} caught up at offset {offsets['primary']} in {catch_up_s:.3f}s; SENTINEL FAILOVER"
            + ("" if info_at is None else f" (Sentinel's INFO of {target} {info_age_s:.3f}s old)"))
        try:
            s.c.sentinel(sentinel, ("SENTINEL", "FAILOVER", master_name))
        except redis.ResponseError as exc:
            raise SwitchoverError(f"Sentinel {sentinel} refused the failover: {exc}; nothing switched") from None
        failed_over = clock()
        s.wait(f"{target} promoted by Sentinel {sentinel}", failover_timeout_s,
               lambda: s.info(target).get("role") == "master")
        _demote(s, primary, target)  # at once: the new primary needs a replica for min-replicas-to-write
        _wait_switched(s, target, max(0.0, failover_timeout_s - (clock() - failed_over)), sentinel)
        failover_s = clock() - failed_over
        say(f"a Sentinel majority names {target} after {failover_s:.3f}s")
        # The clients still connected to the old primary (through HAProxy, or Sentinel-aware ones) would
        # have their held writes refused (READONLY) and keep writing to a replica until HAProxy ends
        # their sessions: end them now, so they reconnect to the new primary; their held writes never ran.
        s.c.redis(primary, ("CLIENT", "KILL", "USER", client_user))
        s.c.redis(primary, ("CLIENT", "UNPAUSE"))
        pause_s = clock() - paused_at
        paused_at = None
        say(f"writes resumed after {pause_s:.3f}s; {primary} is a replica of {target}")
        # The proof that nothing was lost, read once writes resume (it does not change with them).
        promoted_at = _promoted_at(s, target, histories[-1])
    except BaseException:
        _recover(s, primary, target, paused_at, say)
        raise
    failed = s.restore_config()
    if failed:
        raise SwitchoverError(f"switched over to {target}, but could not restore the configuration of {failed}")
    if promoted_at != offsets["primary"]:
        raise SwitchoverError(f"switched over to {target}, but it took over the old history at offset {promoted_at}, "
                              f"not at {offsets['primary']} where writes were paused: check for lost writes")
    return SwitchoverReport(master_name, primary, target, sentinel, offsets["primary"], promoted_at, pause_s,
                            catch_up_s, failover_s, clock() - started, info_age_s, phase_wait_s)


def _promoted_at(s: _Switch, target: str, history: str) -> int:
    """Where the new primary took over the old primary's history (`history`, its replication id): the
    proof that it was promoted holding every write the old one had, whatever Sentinel did meanwhile."""
    info = s.info(target)
    if str(info.get("master_replid2")) != history:
        return -1
    return int(info.get("second_repl_offset", 0)) - 1


def _wait_switched(s: _Switch, target: str, timeout_s: float, asked: str) -> float:
    # Asked Sentinel first (it names the target first), and no further than a majority: each round trip
    # here is paused time.
    order = [asked, *(x for x in s.sentinels if x != asked)]
    needed = len(s.sentinels) // 2 + 1

    def switched() -> bool:
        votes = 0
        for sentinel in order:
            try:
                host, port = s.c.sentinel(sentinel, ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.master_name))
            except (redis.RedisError, OSError, TypeError, ValueError):
                continue
            votes += _addr(host, port) == target
            if votes >= needed:
                return True
        return False

    try:
        return s.wait(f"a Sentinel majority naming {target}", timeout_s, switched)
    except SwitchoverError as exc:
        raise SwitchoverError(f"{exc} after SENTINEL FAILOVER (Sentinels name {s.named()})") from None


def _demote(s: _Switch, primary: str, target: str) -> None:
    """The old primary a replica of `target` before its held writes may run."""
    host, port = target.rsplit(":", 1)
    if s.info(primary).get("role") != "slave":
        s.c.redis(primary, ("REPLICAOF", host, port))
    s.wait(f"{primary} following {target}", 2.0, lambda: s.info(primary).get("role") == "slave")


def _recover(s: _Switch, primary: str, target: str, paused_at: float | None, say: Progress) -> None:
    """After a failure: never unpause a primary that may have been replaced while still master."""
    if paused_at is not None:
        try:
            if (s.info(target).get("role") == "master") and s.info(primary).get("role") == "master":
                say(f"{target} was promoted: making {primary} its replica before resuming writes")
                _demote(s, primary, target)
            s.c.redis(primary, ("CLIENT", "UNPAUSE"))
            say(f"writes resumed on {primary}")
        except (redis.RedisError, OSError, SwitchoverError) as exc:
            say(f"could not resume writes on {primary} ({exc}); its pause ends by itself")
    for line in s.restore_config():
        say(f"could not restore the configuration of {line}")
