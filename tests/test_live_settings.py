"""The live-settings module (components/runtime/live_settings.py) against a scripted transport: what a
change plans, what is refused before anything is sent, what is sent and read back, and how a
Sentinel reset waits for each Sentinel to know exactly the remaining nodes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
import redis

from components.runtime import live_settings, membership
from components.runtime.live_settings import ImmutableSettingError, LiveSettingsError, plan
from components.runtime.switchover import Commands
from components.settings import ClusterSettings, parse_settings

NODES = [f"10.0.0.{i}" for i in range(1, 6)]


def settings(**raw: Any) -> Any:
    return parse_settings({k: v if isinstance(v, list) else str(v) for k, v in raw.items()})


class FakeCluster:
    """Redis CONFIG and Sentinel per-master options per endpoint; every command recorded in order."""

    def __init__(self, redis_nodes: Sequence[str], sentinels: Sequence[str], master: str = "myprimary") -> None:
        self.master = master
        self.config = {e: {"min-replicas-to-write": "1", "min-replicas-max-lag": "10",
                           "repl-diskless-sync-max-replicas": "2"} for e in redis_nodes}
        self.sentinel_options = {e: {"down-after-milliseconds": "5000", "failover-timeout": "15000",
                                     "parallel-syncs": "1", "quorum": "2"} for e in sentinels}
        self.sent: list[tuple[str, tuple[str, ...]]] = []
        self.ignore_set: set[str] = set()  # endpoints that answer OK to a SET but keep their values

    def redis(self, endpoint: str, words: Sequence[str]) -> Any:
        self.sent.append((endpoint, tuple(words)))
        if words[:2] == ("CONFIG", "SET"):
            if endpoint not in self.ignore_set:
                pairs = list(words[2:])
                self.config[endpoint].update(dict(zip(pairs[::2], pairs[1::2], strict=True)))
            return True
        if words[:2] == ("CONFIG", "GET"):
            return {k: v for k, v in self.config[endpoint].items() if k in words[2:]}
        if words[:2] == ("CONFIG", "REWRITE"):
            return True
        raise AssertionError(words)

    def sentinel(self, endpoint: str, words: Sequence[str]) -> Any:
        self.sent.append((endpoint, tuple(words)))
        if words[:2] == ("SENTINEL", "SET"):
            assert words[2] == self.master
            pairs = list(words[3:])
            self.sentinel_options[endpoint].update(dict(zip(pairs[::2], pairs[1::2], strict=True)))
            return True
        if words[:2] == ("SENTINEL", "MASTER"):
            flat: list[str] = ["name", self.master]
            for k, v in self.sentinel_options[endpoint].items():
                flat += [k, v]
            return flat
        raise AssertionError(words)

    def commands(self) -> Commands:
        return Commands(redis=self.redis, sentinel=self.sentinel)


def test_a_timing_change_plans_sentinel_set_and_config_set_only() -> None:
    old = settings()
    new = settings(downAfterMs=2000, minReplicasMaxLag=5)
    p = plan(old, new)
    assert [str(c) for c in p.changes] == ["downAfterMs 5000 -> 2000", "minReplicasMaxLag 10 -> 5"]
    assert p.sentinel == (("down-after-milliseconds", 2000),)
    assert p.redis == (("min-replicas-max-lag", 5),)
    assert p.added == () and p.removed == () and p.elsewhere == ()
    assert plan(old, settings()).empty


def test_growing_plans_the_new_nodes_the_quorum_and_the_diskless_sync() -> None:
    p = plan(settings(), settings(nodeCount=5))
    assert p.added == (3, 4) and p.removed == ()
    assert ("quorum", 3) in p.sentinel
    assert p.redis == (("repl-diskless-sync-max-replicas", 4),)
    back = plan(settings(nodeCount=5), settings())
    assert back.removed == (3, 4) and back.added == () and ("quorum", 2) in back.sentinel


def test_immutable_settings_are_refused_together_naming_old_new_and_what_to_do() -> None:
    with pytest.raises(ImmutableSettingError) as caught:
        plan(settings(), settings(redisPort=31416, masterName="other", downAfterMs=2000))
    text = str(caught.value)
    assert "nothing was applied" in text
    assert "redisPort 31415 -> 31416: cannot change on a running cluster" in text
    assert "masterName 'myprimary' -> 'other'" in text
    assert "deploy a new cluster" in text
    assert len(caught.value.problems) == 2  # the timing is not a problem, and is not applied either


def test_node_addresses_may_grow_at_the_end_only() -> None:
    # Round-robin over the new VPC's three subnets: nodes 1 and 4 share the first.
    five = ["10.42.0.10", "10.42.64.10", "10.42.128.10", "10.42.0.11", "10.42.64.11"]
    p = plan(settings(nodePrivateIps=five[:3]), settings(nodeCount=5, nodePrivateIps=five))
    assert p.added == (3, 4)
    with pytest.raises(ImmutableSettingError, match="nodePrivateIps .* the addresses of the nodes that stay"):
        plan(settings(nodePrivateIps=five[:3]), settings(nodePrivateIps=[*five[:2], "10.42.128.11"]))


def test_cloud_only_settings_are_named_but_not_applied_on_the_nodes() -> None:
    p = plan(settings(), settings(replicationLagAlarmSeconds=30))
    assert p.empty and [str(c) for c in p.elsewhere] == [
        "replicationLagAlarmSeconds 10 -> 30: shapes cloud resources only (Pulumi updates them); nothing to apply "
        "on the nodes"]


def test_apply_sets_every_node_and_reads_back() -> None:
    redis_nodes = [f"{a}:31415" for a in NODES[:3]]
    sentinels = [f"{a}:41415" for a in NODES[:3]]
    fake = FakeCluster(redis_nodes, sentinels)
    new = settings(downAfterMs=2000, failoverTimeoutMs=9000, parallelSyncs=2, minReplicasToWrite=2,
                   minReplicasMaxLag=4)
    live_settings.apply_settings(fake.commands(), redis_nodes, sentinels, new)
    for endpoint in sentinels:
        assert live_settings.read_sentinel(fake.commands(), endpoint, "myprimary") == {
            "down-after-milliseconds": 2000, "failover-timeout": 9000, "parallel-syncs": 2, "quorum": 2}
    for endpoint in redis_nodes:
        assert live_settings.read_redis(fake.commands(), endpoint) == {
            "min-replicas-to-write": 2, "min-replicas-max-lag": 4, "repl-diskless-sync-max-replicas": 2}
        # CONFIG REWRITE after every CONFIG SET: the change survives a restart.
        words = [w for e, w in fake.sent if e == endpoint]
        assert words.index(("CONFIG", "REWRITE")) > next(i for i, w in enumerate(words) if w[:2] == ("CONFIG", "SET"))


def test_a_node_that_does_not_take_the_value_fails_the_apply_naming_it() -> None:
    redis_nodes = [f"{a}:31415" for a in NODES[:3]]
    fake = FakeCluster(redis_nodes, [])
    fake.ignore_set.add(redis_nodes[1])
    with pytest.raises(LiveSettingsError, match=f"Redis {redis_nodes[1]} runs .* after CONFIG SET"):
        live_settings.apply_settings(fake.commands(), redis_nodes, [], settings(minReplicasMaxLag=4))


class ResettingSentinels:
    """Sentinels that, after SENTINEL RESET, relearn the topology over a few polls; `stale` keeps one
    removed Sentinel in their view for ever (a Sentinel still running on a removed node)."""

    def __init__(self, sentinels: list[str], replicas: list[str], stale: str | None = None) -> None:
        self.sentinels, self.replicas, self.stale = sentinels, replicas, stale
        self.polls: dict[str, int] = {}
        self.order: list[str] = []

    def sentinel(self, endpoint: str, words: Sequence[str]) -> Any:
        if words[1] == "RESET":
            self.order.append(endpoint)
            self.polls[endpoint] = 0
            return 1
        if words[1] == "GET-MASTER-ADDR-BY-NAME":
            self.polls[endpoint] = self.polls.get(endpoint, 0) + 1
            return ["10.0.0.1", "31415"]
        learned = self.polls.get(endpoint, 0) >= 3
        if words[1] == "REPLICAS":
            return [["ip", r.split(":")[0], "port", r.split(":")[1], "flags", "slave"]
                    for r in self.replicas] if learned else []
        others = [s for s in self.sentinels if s != endpoint] + ([self.stale] if self.stale else [])
        if not learned:
            return []
        return [["ip", s.split(":")[0], "port", s.split(":")[1], "flags", "sentinel"] for s in others]

    def commands(self) -> Commands:
        return Commands(redis=lambda e, w: None, sentinel=self.sentinel)


def test_reset_goes_one_sentinel_at_a_time_until_each_knows_the_remaining_nodes() -> None:
    sentinels = [f"{a}:41415" for a in NODES[:3]]
    redis_nodes = [f"{a}:31415" for a in NODES[:3]]
    fake = ResettingSentinels(sentinels, redis_nodes[1:])
    clock = [0.0]
    membership.reset_sentinels(fake.commands(), sentinels, redis_nodes, "myprimary", timeout_s=5,
                               clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert fake.order == sentinels
    assert all(polls >= 3 for polls in fake.polls.values())


def test_reset_fails_naming_what_the_sentinel_still_knows() -> None:
    sentinels = [f"{a}:41415" for a in NODES[:3]]
    redis_nodes = [f"{a}:31415" for a in NODES[:3]]
    fake = ResettingSentinels(sentinels, redis_nodes[1:], stale="10.0.0.5:41415")
    clock = [0.0]
    with pytest.raises(LiveSettingsError, match="10.0.0.5:41415"):
        membership.reset_sentinels(fake.commands(), sentinels, redis_nodes, "myprimary", timeout_s=2,
                                   clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert fake.order == sentinels[:1]  # the others were not reset meanwhile


def settled_sentinels(gone: set[str], views: dict[str, str]) -> Commands:
    """Sentinels naming `views[endpoint]` as primary (no flag beyond master); those in `gone` refuse."""
    def sentinel(endpoint: str, words: Sequence[str]) -> Any:
        if endpoint in gone:
            raise redis.ConnectionError(f"Error 111 connecting to {endpoint}. Connection refused.")
        host, port = views[endpoint].split(":")
        return ["name", "myprimary", "ip", host, "port", port, "flags", "master"]
    return Commands(redis=lambda e, w: None, sentinel=sentinel)


def test_a_shrink_started_again_settles_without_the_leaving_sentinels_it_stopped() -> None:
    sentinels = [f"{a}:41415" for a in NODES[:5]]
    views = dict.fromkeys(sentinels, f"{NODES[0]}:31415")
    gone = set(sentinels[3:])  # node-4 and node-5's Sentinels, stopped by the first attempt
    commands = settled_sentinels(gone, views)
    leaving = {f"{a}:31415" for a in NODES[3:5]}
    assert membership.move_primary_off(commands, sentinels, [], "myprimary", leaving) == f"{NODES[0]}:31415"
    # A Sentinel that stays must answer, though: nothing is moved past one that does not.
    clock = [0.0]
    with pytest.raises(LiveSettingsError, match=f"{NODES[1]}:41415 names no answer"):
        membership.wait_settled(settled_sentinels({sentinels[1]}, views), sentinels, "myprimary", timeout_s=1,
                                clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s),
                                may_be_gone=sentinels[3:])
    # And one that may be gone but answers must agree.
    disagreeing = {**views, sentinels[4]: f"{NODES[4]}:31415"}
    with pytest.raises(LiveSettingsError, match="do not agree"):
        membership.wait_settled(settled_sentinels(set(), disagreeing), sentinels, "myprimary", timeout_s=1,
                                clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s),
                                may_be_gone=sentinels[3:])


def test_every_setting_is_either_applied_live_refused_or_left_to_someone_named() -> None:
    fields = {f.name for f in dataclasses.fields(ClusterSettings)}
    kinds = [set(live_settings.LIVE), set(live_settings.IMMUTABLE), set(live_settings.ELSEWHERE)]
    assert set().union(*kinds) == fields  # a new setting must be classified here, not silently ignored
    assert sum(len(k) for k in kinds) == len(fields)  # and in one class only
