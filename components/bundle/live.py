"""What a running node's daemons take live, by option name: the one table both targets apply.

Stdlib only: the node's own apply (`python3 -m components.bundle.boot --apply`, from the code
archive) computes the values from the cluster document with it, and the deploy side
(components/runtime/live_settings.py) sets and checks the same options on the local target and
judges what the nodes report on AWS. Each value is a function of the settings; `ClusterSettings`
and the document's `NodeSettings` carry the same attribute names for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["REDIS_OPTIONS", "SENTINEL_OPTIONS", "config_set_words", "sentinel_set_words"]

# Redis options that follow the settings; each is CONFIG SET on a running Redis and CONFIG REWRITE persists it.
REDIS_OPTIONS: dict[str, Callable[[Any], int]] = {
    "min-replicas-to-write": lambda s: s.min_replicas_to_write,
    "min-replicas-max-lag": lambda s: s.min_replicas_max_lag,
    "repl-diskless-sync-max-replicas": lambda s: s.node_count - 1,
}
# Sentinel's per-master options: SENTINEL SET takes them, and SENTINEL MASTER reports them, by these names.
SENTINEL_OPTIONS: dict[str, Callable[[Any], int]] = {
    "down-after-milliseconds": lambda s: s.down_after_ms,
    "failover-timeout": lambda s: s.failover_timeout_ms,
    "parallel-syncs": lambda s: s.parallel_syncs,
    "quorum": lambda s: s.sentinel_quorum,
}


def sentinel_set_words(settings: Any) -> list[str]:
    """`option value ...` for SENTINEL SET <master>."""
    return [w for o, f in SENTINEL_OPTIONS.items() for w in (o, str(f(settings)))]


def config_set_words(settings: Any) -> list[str]:
    """`option value ...` for CONFIG SET."""
    return [w for o, f in REDIS_OPTIONS.items() for w in (o, str(f(settings)))]
