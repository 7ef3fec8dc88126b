"""components/runtime/switchover.py against a scripted transport: every failure leaves the primary
unpaused and the priorities restored, nothing is paused when the input is wrong, and SENTINEL
FAILOVER is timed against the asked Sentinel's INFO of the target. The live switchover, with writers
of every client kind, is tests/test_drills.py's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import redis

from components.runtime import switchover as switchover_module
from components.runtime.switchover import INFO_AGE_AIM_S, Commands, SwitchoverError, direct_commands, switchover

P, T, R = "10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"
SENTINELS = ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]


class FakeCluster:
    """A primary P with replicas T and R; T stays `lag` bytes behind P."""

    def __init__(self, lag: int = 0, named: str | None = P) -> None:
        self.lag = lag
        self.named = named
        self.priority = {T: "100", R: "100"}
        self.ping_period = {P: "10", T: "10", R: "10"}  # repl-ping-replica-period
        self.sent: list[tuple[str, tuple[str, ...]]] = []

    def redis(self, endpoint: str, words: Sequence[str]) -> Any:
        self.sent.append((endpoint, tuple(words)))
        command = tuple(w.upper() for w in words[:2])
        if command == ("INFO", "REPLICATION"):
            if endpoint == P:
                return {"role": "master", "master_repl_offset": 1000, "master_replid": "abc",
                        "slave0": {"ip": "10.0.0.2", "port": 6379, "state": "online", "offset": 1000 - self.lag},
                        "slave1": {"ip": "10.0.0.3", "port": 6379, "state": "online", "offset": 900}}
            return {"role": "slave", "master_host": "10.0.0.1", "master_port": 6379, "master_link_status": "up",
                    "slave_repl_offset": 1000 - self.lag if endpoint == T else 900}
        options = {"replica-priority": self.priority, "repl-ping-replica-period": self.ping_period}
        if command == ("CONFIG", "GET"):
            return {words[2]: options[words[2]][endpoint]}
        if command == ("CONFIG", "SET"):
            options[words[2]][endpoint] = words[3]
        return "OK"

    def sentinel(self, endpoint: str, words: Sequence[str]) -> Any:
        if words[1] == "GET-MASTER-ADDR-BY-NAME":
            if self.named is None:
                raise ConnectionError("down")
            return self.named.split(":")
        if words[1] == "REPLICAS":
            return [{"ip": h, "port": p, "slave-priority": self.priority[f"{h}:{p}"]}
                    for h, p in (T.split(":"), R.split(":"))]
        raise AssertionError(f"unexpected Sentinel command {words}")

    def commands(self) -> Commands:
        return Commands(redis=self.redis, sentinel=self.sentinel)

    def to(self, endpoint: str) -> list[tuple[str, ...]]:
        return [words for e, words in self.sent if e == endpoint]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(cluster: FakeCluster, **options: Any) -> Any:
    clock = Clock()
    return switchover(SENTINELS, [P, T, R], "myprimary", cluster.commands(), clock=clock, sleep=clock.sleep, **options)


def test_a_replica_that_never_catches_up_leaves_the_primary_unpaused_and_the_priorities_restored():
    cluster = FakeCluster(lag=10)
    with pytest.raises(SwitchoverError, match="catching up .* nothing switched"):
        run(cluster, to=T)
    to_primary = cluster.to(P)
    assert ("CLIENT", "PAUSE", "17000", "WRITE") in to_primary
    assert ("CLIENT", "UNPAUSE") in to_primary
    assert cluster.priority == {T: "100", R: "100"}
    assert ("CONFIG", "SET", "replica-priority", "0") in cluster.to(R)  # R was excluded meanwhile
    # The primary sent its replicas no PING while paused, and its period is back.
    quiet = ("CONFIG", "SET", "repl-ping-replica-period", "2147483647")
    assert to_primary.index(quiet) < to_primary.index(("CLIENT", "PAUSE", "17000", "WRITE"))
    assert to_primary[-1] == ("CONFIG", "SET", "repl-ping-replica-period", "10")
    assert cluster.ping_period[P] == "10"


@pytest.mark.parametrize(("options", "named", "message"), [
    ({"to": P}, P, "is the current primary already"),
    ({"to": "10.0.0.9:6379"}, P, "is not one of the cluster's Redis nodes"),
    ({}, None, "no primary named by a majority of Sentinels"),
])
def test_wrong_input_is_refused_before_anything_is_paused(options, named, message):
    cluster = FakeCluster(named=named)
    with pytest.raises(SwitchoverError, match=message):
        run(cluster, **options)
    assert not any(words[0] in ("CLIENT", "CONFIG") and words[1] != "GET" for _, words in cluster.sent)


def test_the_most_caught_up_replica_is_chosen_by_default():
    cluster = FakeCluster(lag=10)  # T behind; R further behind: T is still the best, and never catches up
    with pytest.raises(SwitchoverError, match=f"{T} catching up"):
        run(cluster)


class TimedCluster(FakeCluster):
    """FakeCluster whose Sentinels say how old their last INFO of T is (`info-refresh`): read every
    `period_s`, the last time `age_s` before the start; each SENTINEL REPLICAS takes `rtt_s`. The
    Sentinel refuses the failover, after recording when it came: the tests end there."""

    def __init__(self, clock: Clock, age_s: float, period_s: float = 10.0, rtt_s: float = 0.0,
                 slow_rtts: int | None = None) -> None:
        super().__init__()
        self.clock, self.age_s, self.period_s, self.rtt_s = clock, age_s, period_s, rtt_s
        self.slow_rtts = slow_rtts  # only the first SENTINEL REPLICAS take rtt_s (None: all)
        self.failover_at: float | None = None
        self.paused_at: float | None = None

    def info_age(self) -> float:
        return (self.age_s + self.clock.now) % self.period_s

    def redis(self, endpoint: str, words: Sequence[str]) -> Any:
        if tuple(words[:2]) == ("CLIENT", "PAUSE"):
            self.paused_at = self.clock.now
        return super().redis(endpoint, words)

    def sentinel(self, endpoint: str, words: Sequence[str]) -> Any:
        if words[1] == "REPLICAS":
            if self.slow_rtts is None or self.slow_rtts > 0:
                self.clock.now += self.rtt_s
                self.slow_rtts = None if self.slow_rtts is None else self.slow_rtts - 1
            return [{**r, "info-refresh": str(int(self.info_age() * 1000)) if r["ip"] == "10.0.0.2" else "0"}
                    for r in super().sentinel(endpoint, words)]
        if words[1] == "FAILOVER":
            self.failover_at = self.clock.now
            raise redis.ResponseError("stop here")
        return super().sentinel(endpoint, words)


def timed_run(age_s: float, rtt_s: float = 0.0, on_pause_s: float = 0.0, slow_rtts: int | None = None) -> TimedCluster:
    clock = Clock()
    cluster = TimedCluster(clock, age_s, rtt_s=rtt_s, slow_rtts=slow_rtts)
    with pytest.raises(SwitchoverError, match="refused the failover: stop here; nothing switched"):
        switchover(SENTINELS, [P, T, R], "myprimary", cluster.commands(), to=T, clock=clock, sleep=clock.sleep,
                   on_pause=lambda: clock.sleep(on_pause_s))
    assert cluster.to(P)[-2:] == [("CLIENT", "UNPAUSE"), ("CONFIG", "SET", "repl-ping-replica-period", "10")]
    return cluster


@pytest.mark.parametrize("age_s", [0.0, 0.2, 3.0, 9.95])
def test_the_failover_reaches_the_sentinel_when_its_info_of_the_target_is_the_aimed_age(age_s):
    # Whether the last INFO is fresh or 3 s old (the next one 7 s away), SENTINEL FAILOVER comes when it
    # is INFO_AGE_AIM_S old: Sentinel's next INFO of the target is then the first after REPLICAOF NO ONE.
    cluster = timed_run(age_s, on_pause_s=0.1)
    assert cluster.failover_at is not None and cluster.paused_at is not None
    age_at_failover = (age_s + cluster.failover_at) % cluster.period_s
    assert INFO_AGE_AIM_S - 0.02 <= age_at_failover <= INFO_AGE_AIM_S + 0.01
    assert cluster.failover_at - cluster.paused_at < 0.05  # the timing's waits happen before the pause
    assert cluster.failover_at < 10.0 + INFO_AGE_AIM_S + 0.2  # at most one INFO period waited


def test_a_slow_transport_fails_over_untimed_without_waiting_for_the_next_info():
    cluster = timed_run(0.9, rtt_s=0.2)  # the next INFO is 9.1 s away
    assert cluster.failover_at is not None and cluster.failover_at < 3.0


def test_one_slow_round_trip_is_read_again_and_the_failover_still_timed():
    # Slow: the exclusion's check and the first two of the timing's readings.
    cluster = timed_run(0.3, rtt_s=0.3, slow_rtts=3)
    assert cluster.failover_at is not None
    assert INFO_AGE_AIM_S - 0.02 <= (0.3 + cluster.failover_at) % cluster.period_s <= INFO_AGE_AIM_S + 0.01


def test_an_on_pause_outlasting_the_aim_fails_over_at_once_rather_than_a_period_later():
    cluster = timed_run(0.0, on_pause_s=2.0)
    assert cluster.failover_at is not None and cluster.paused_at is not None
    assert cluster.failover_at - cluster.paused_at < 0.05 and cluster.failover_at < 3.0


class SwitchingCluster(TimedCluster):
    """TimedCluster whose failover succeeds: T says role:master from SENTINEL FAILOVER on, holding P's
    history up to the paused offset; the asked (second) Sentinel names T at once, the others `follow_s`
    later; the first does not answer until the failover."""

    def __init__(self, clock: Clock, follow_s: float = 0.2) -> None:
        super().__init__(clock, age_s=0.0)
        self.follow_s = follow_s
        self.demoted = False
        self.naming: list[tuple[str, ...]] = []  # the Sentinels asked to name the primary, in order

    def redis(self, endpoint: str, words: Sequence[str]) -> Any:
        if self.failover_at is not None and tuple(words) == ("INFO", "replication"):
            self.sent.append((endpoint, tuple(words)))
            if endpoint == T:
                return {"role": "master", "master_replid": "def", "master_replid2": "abc",
                        "second_repl_offset": 1001, "master_repl_offset": 1000}
            if endpoint == P and not self.demoted:
                return super().redis(endpoint, words)
            return {"role": "slave", "master_host": "10.0.0.2", "master_port": 6379}
        if tuple(words[:1]) == ("REPLICAOF",) and endpoint == P:
            self.demoted = True
        return super().redis(endpoint, words)

    def sentinel(self, endpoint: str, words: Sequence[str]) -> Any:
        if words[1] == "FAILOVER":
            self.failover_at = self.clock.now
            return "OK"
        if words[1] == "GET-MASTER-ADDR-BY-NAME":
            if self.failover_at is None and endpoint == SENTINELS[0]:
                raise ConnectionError("restarting")  # so the second Sentinel is the one asked
            if self.failover_at is not None:
                self.naming.append((endpoint, str(self.clock.now)))
            switched = self.failover_at is not None and (
                endpoint == SENTINELS[1] or self.clock.now >= self.failover_at + self.follow_s)
            return (T if switched else P).split(":")
        return super().sentinel(endpoint, words)


def test_a_switchover_demotes_and_ends_sessions_before_the_unpause_and_reports_the_timing():
    clock = Clock()
    cluster = SwitchingCluster(clock)
    report = switchover(SENTINELS, [P, T, R], "myprimary", cluster.commands(), to=T, clock=clock, sleep=clock.sleep)
    assert report.asked_sentinel == SENTINELS[1]
    assert (report.old_primary, report.new_primary, report.offset, report.promoted_at_offset) == (P, T, 1000, 1000)
    to_primary = cluster.to(P)
    unpause = to_primary.index(("CLIENT", "UNPAUSE"))
    assert to_primary.index(("REPLICAOF", "10.0.0.2", "6379")) < to_primary.index(
        ("CLIENT", "KILL", "USER", "default")) < unpause
    assert INFO_AGE_AIM_S - 0.02 <= report.info_age_at_failover_s <= INFO_AGE_AIM_S + 0.01
    assert cluster.priority == {T: "100", R: "100"} and cluster.ping_period == {P: "10", T: "10", R: "10"}
    # The majority wait asks the failover's Sentinel first and stops once a majority names T.
    last_poll = [e for e, at in cluster.naming if float(at) == max(float(a) for _, a in cluster.naming)]
    assert last_poll == [SENTINELS[1], SENTINELS[0]]  # not the third
    assert report.failover_s >= cluster.follow_s


def test_kept_connections_are_one_per_endpoint_and_user(monkeypatch):
    made: list[tuple[Any, ...]] = []

    class Client:
        def __init__(self, *args: Any) -> None:
            made.append(args)

        def execute_command(self, *words: str) -> str:
            return "PONG"

        def close(self) -> None:
            pass

    monkeypatch.setattr(switchover_module, "one_shot_client", Client)
    kept = direct_commands("pw", reuse_connections=True)
    for _ in range(3):
        kept.redis(P, ("PING",))
        kept.redis(T, ("PING",))
        kept.sentinel(SENTINELS[0], ("PING",))
    assert len(made) == 3
    fresh = direct_commands("pw")
    for _ in range(3):
        fresh.redis(P, ("PING",))
    assert len(made) == 6
