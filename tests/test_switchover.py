"""components/runtime/switchover.py against a scripted transport: every failure leaves the primary
unpaused and the priorities restored, and nothing is paused when the input is wrong. The live
switchover, with writers of every client kind, is tests/test_drills.py's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from components.runtime.switchover import Commands, SwitchoverError, switchover

P, T, R = "10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"
SENTINELS = ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]


class FakeCluster:
    """A primary P with replicas T and R; T stays `lag` bytes behind P."""

    def __init__(self, lag: int = 0, named: str | None = P) -> None:
        self.lag = lag
        self.named = named
        self.priority = {T: "100", R: "100"}
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
        if command == ("CONFIG", "GET"):
            return {"replica-priority": self.priority[endpoint]}
        if command == ("CONFIG", "SET"):
            self.priority[endpoint] = words[3]
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
    assert to_primary[-1] == ("CLIENT", "UNPAUSE")
    assert cluster.priority == {T: "100", R: "100"}
    assert ("CONFIG", "SET", "replica-priority", "0") in cluster.to(R)  # R was excluded meanwhile


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
