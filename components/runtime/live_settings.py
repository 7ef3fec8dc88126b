"""Apply changed cluster settings to a running cluster, without restarting a daemon.

Plain Python (no Pulumi import): the local target (`scripts/local_cluster.py up` with changed options)
and the AWS `LiveSettings` dynamic provider (components/aws/providers/live_settings.py, over SSM Run
Command) both plan with `plan()` and refuse with the same messages.

What can change on a running cluster, and how:
- Sentinel timings and quorum: `SENTINEL SET <master> down-after-milliseconds|failover-timeout|
  parallel-syncs|quorum`, on every Sentinel (Sentinel persists its config itself on SET);
- Redis `min-replicas-to-write`, `min-replicas-max-lag` (and `repl-diskless-sync-max-replicas`,
  which follows nodeCount): `CONFIG SET` then `CONFIG REWRITE`, on every Redis;
- HAProxy: haproxy.cfg re-rendered (`render_haproxy_cfg`, its checks' timings follow downAfterMs and
  its servers and guards the membership) and reloaded without a restart: the target's reload (SIGUSR2
  to HAProxy's master process, which keeps its pid). The former worker keeps the sessions it carries:
  it runs no health check, so its fence follows the new worker's verdicts (hst-ha-fence.lua);
- nodeCount: the membership (grow or shrink), which the target runs with the steps of
  `components.runtime.membership` around its own way of starting and stopping nodes.

What cannot (`ImmutableSettingError`, raised by `plan()` before anything is applied): the ports and
masterName (every daemon, every peer and every client names them), the existing nodes' addresses
and the network they live in. Settings that only shape cloud resources (CIDRs, alarms, tokens,
backups) or that need new instances (instance type, AMI, HST Server) are not this module's: the
plan names them under `elsewhere`.

Every command is sent as the operator role through `components.runtime.switchover.Commands`
(redis-py from here with `direct_commands`, or redis-cli on a node); no password is ever in a
message.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.bundle.live import REDIS_OPTIONS, SENTINEL_OPTIONS
from components.bundle.render import node_settings, render_haproxy_cfg
from components.bundle.users import ROLE_KEYS, placeholder
from components.runtime.membership import LiveSettingsError, reply_fields, send_checked
from components.runtime.switchover import Commands
from components.settings import ClusterSettings, TokenSettings

__all__ = [
    "REDIS_OPTIONS", "SENTINEL_OPTIONS", "Change", "ImmutableSettingError", "LiveSettingsError", "Plan",
    "apply_settings", "filled_haproxy_cfg", "plan", "reply_fields", "read_redis", "read_sentinel",
    "settings_from_json", "settings_to_json",
]

Progress = Callable[[str], None]

_NEW_CLUSTER = ("deploy a new cluster with the new value (a new stack, or `local_cluster.py restore` into a new "
                "--state-dir from a `backup`), move the clients to it, then remove this one")
# Fields that no running cluster can change, and why.
IMMUTABLE: dict[str, str] = {
    "redis_port": "every Redis listens on it, and every replica, Sentinel and HAProxy check names it",
    "sentinel_port": "every Sentinel listens on it, and every Sentinel and HAProxy guard names its peers by it",
    "haproxy_port": "it is HST Server's db_port: clients connect to it",
    "master_name": "the Sentinels know the primary set by this name, and so do Sentinel-aware clients",
    "vpc_id": "the nodes live in this VPC",
    "vpc_cidr": "the nodes' subnets are cut from it",
    "subnet_ids": "the nodes are placed round-robin over these subnets",
    "tls_enabled": "a TLS-only node and a plaintext one cannot replicate or vote together (README: TLS)",
}
# Fields this module leaves to others, and who applies them.
_NEW_INSTANCES = "needs new instances (Pulumi replaces them; README 'Apply changed settings', the roll)"
_CLOUD = "shapes cloud resources only (Pulumi updates them); nothing to apply on the nodes"
ELSEWHERE: dict[str, str] = {
    **dict.fromkeys(("instance_type", "ami_id", "ami_has_packages", "hst_installer_url", "hst_installer_sha256",
                     "hst_license_secret_arn", "hst_redis_password_setting"), _NEW_INSTANCES),
    **dict.fromkeys(("admin_cidrs", "transfer_cidrs", "package_mirror_prefix_list_ids", "tokens",
                     "secret_recovery_window_days", "metrics_cidrs", "alarm_topic_arn", "replication_lag_alarm_seconds",
                     "backup_retention_days", "backup_reader_arns"), _CLOUD),
    "backup_interval_minutes": "the node's snapshot job reads it at its start (node.env): it takes effect when "
                               "the job restarts, not through this module",
}
LIVE = ("down_after_ms", "failover_timeout_ms", "parallel_syncs", "sentinel_quorum", "min_replicas_to_write",
        "min_replicas_max_lag", "node_count", "node_private_ips")


def settings_to_json(settings: ClusterSettings) -> dict[str, Any]:
    """Every setting, JSON-ready, by its ClusterSettings name: the local target's record of what it runs
    and the LiveSettings resource's input. (What reaches the nodes is the cluster document,
    components/bundle/document.py.)"""
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(settings)))
    return data


def settings_from_json(data: Mapping[str, Any]) -> ClusterSettings:
    def tuples(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

    fields = dict(data)
    tokens = TokenSettings(**tuples(fields.pop("tokens")))
    return ClusterSettings(**tuples(fields), tokens=tokens)


def camel(field_name: str) -> str:
    """The stack config key of a ClusterSettings field (down_after_ms -> downAfterMs)."""
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), field_name)


class ImmutableSettingError(LiveSettingsError):
    """Settings that a running cluster cannot take; nothing was applied."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            f"{len(problems)} setting(s) cannot change on a running cluster; nothing was applied:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class Change:
    key: str  # the stack config key
    old: Any
    new: Any
    note: str = ""  # for a change this module does not apply: who does

    def __str__(self) -> str:
        return f"{self.key} {self.old!r} -> {self.new!r}" + (f": {self.note}" if self.note else "")


@dataclass(frozen=True)
class Plan:
    """What `apply_settings` and the target's membership steps will do. `changes` are the live ones."""

    changes: tuple[Change, ...]
    redis: tuple[tuple[str, int], ...]  # (option, new value) for CONFIG SET, only those that change
    sentinel: tuple[tuple[str, int], ...]  # (option, new value) for SENTINEL SET
    added: tuple[int, ...]  # node indexes that join (grow)
    removed: tuple[int, ...]  # node indexes that leave (shrink), last in order
    elsewhere: tuple[Change, ...]  # changed, but applied by the cloud resources, not by this module

    @property
    def empty(self) -> bool:
        return not self.changes

    def describe(self) -> list[str]:
        lines = []
        if self.added:
            lines.append(f"grow: nodes {', '.join(str(i + 1) for i in self.added)} join")
        if self.removed:
            lines.append(f"shrink: nodes {', '.join(str(i + 1) for i in self.removed)} leave")
        if self.sentinel:
            lines.append("Sentinel: " + ", ".join(f"{k} {v}" for k, v in self.sentinel))
        if self.redis:
            lines.append("Redis: " + ", ".join(f"{k} {v}" for k, v in self.redis))
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "changes": [str(c) for c in self.changes], "redis": dict(self.redis), "sentinel": dict(self.sentinel),
            "added": list(self.added), "removed": list(self.removed), "elsewhere": [str(c) for c in self.elsewhere],
        }


def _value(settings: ClusterSettings, name: str) -> Any:
    value = getattr(settings, name)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def plan(old: ClusterSettings, new: ClusterSettings) -> Plan:
    """What changes from the running cluster's settings `old` to `new`. Raises ImmutableSettingError,
    naming every setting that cannot change on a running cluster with its old and new values and what
    to do instead, before anything is applied."""
    problems = []
    for name, why in IMMUTABLE.items():
        if getattr(old, name) != getattr(new, name):
            problems.append(f"{camel(name)} {getattr(old, name)!r} -> {getattr(new, name)!r}: cannot change on a "
                            f"running cluster ({why}); keep {getattr(old, name)!r}, or {_NEW_CLUSTER}")
    kept = min(old.node_count, new.node_count)
    if old.node_private_ips and new.node_private_ips and old.node_private_ips[:kept] != new.node_private_ips[:kept]:
        problems.append(
            f"nodePrivateIps {list(old.node_private_ips)!r} -> {list(new.node_private_ips)!r}: the addresses of the "
            f"nodes that stay (the first {kept}) cannot change on a running cluster (every peer names them); keep "
            "them and add or remove addresses at the end only, or replace the node (README 'Replace a node')")
    if problems:
        raise ImmutableSettingError(problems)
    changes = tuple(Change(camel(n), getattr(old, n), getattr(new, n))
                    for n in LIVE if getattr(old, n) != getattr(new, n))
    elsewhere = tuple(Change(camel(n), _value(old, n), _value(new, n), note) for n, note in ELSEWHERE.items()
                      if getattr(old, n) != getattr(new, n))
    redis_changes = tuple((o, f(new)) for o, f in REDIS_OPTIONS.items() if f(old) != f(new))
    sentinel_changes = tuple((o, f(new)) for o, f in SENTINEL_OPTIONS.items() if f(old) != f(new))
    return Plan(
        changes, redis_changes, sentinel_changes,
        tuple(range(old.node_count, new.node_count)), tuple(range(new.node_count, old.node_count)), elsewhere,
    )


# ----------------------------------------------------------------- reading back

def read_redis(commands: Commands, endpoint: str) -> dict[str, int]:
    """The REDIS_OPTIONS as that Redis runs them now (CONFIG GET)."""
    values = reply_fields(commands.redis(endpoint, ("CONFIG", "GET", *REDIS_OPTIONS)))
    return {option: int(values[option]) for option in REDIS_OPTIONS if option in values}


def read_sentinel(commands: Commands, endpoint: str, master_name: str) -> dict[str, int]:
    """The SENTINEL_OPTIONS as that Sentinel runs them now (SENTINEL MASTER)."""
    values = reply_fields(commands.sentinel(endpoint, ("SENTINEL", "MASTER", master_name)))
    return {option: int(values[option]) for option in SENTINEL_OPTIONS if option in values}


# ----------------------------------------------------------------- applying

def apply_redis(commands: Commands, endpoints: Sequence[str], settings: ClusterSettings, progress: Progress) -> None:
    """CONFIG SET every REDIS_OPTION to its new value, then CONFIG REWRITE, on every Redis; read back."""
    words: list[str] = []
    for option, value_of in REDIS_OPTIONS.items():
        words += [option, str(value_of(settings))]
    wanted = {o: f(settings) for o, f in REDIS_OPTIONS.items()}
    for endpoint in endpoints:
        send_checked("CONFIG SET", endpoint, commands.redis, ("CONFIG", "SET", *words))
        send_checked("CONFIG REWRITE", endpoint, commands.redis, ("CONFIG", "REWRITE"))
        now = send_checked("CONFIG GET", endpoint, lambda e: read_redis(commands, e))
        if now != wanted:
            raise LiveSettingsError(f"Redis {endpoint} runs {now} after CONFIG SET, not {wanted}")
    progress(f"Redis on {len(endpoints)} nodes: " + ", ".join(f"{k} {v}" for k, v in wanted.items()))


def apply_sentinel(commands: Commands, endpoints: Sequence[str], settings: ClusterSettings,
                   progress: Progress) -> None:
    """SENTINEL SET every SENTINEL_OPTION on every Sentinel (it rewrites sentinel.conf itself); read back."""
    words: list[str] = []
    for option, value_of in SENTINEL_OPTIONS.items():
        words += [option, str(value_of(settings))]
    wanted = {o: f(settings) for o, f in SENTINEL_OPTIONS.items()}
    name = settings.master_name
    for endpoint in endpoints:
        send_checked("SENTINEL SET", endpoint, commands.sentinel, ("SENTINEL", "SET", name, *words))
        now = send_checked("SENTINEL MASTER", endpoint, lambda e: read_sentinel(commands, e, name))
        if now != wanted:
            raise LiveSettingsError(f"Sentinel {endpoint} runs {now} after SENTINEL SET, not {wanted}")
    progress(f"Sentinel on {len(endpoints)} nodes: " + ", ".join(f"{k} {v}" for k, v in wanted.items()))


def apply_settings(commands: Commands, redis_endpoints: Sequence[str], sentinel_endpoints: Sequence[str],
                   settings: ClusterSettings, progress: Progress | None = None) -> None:
    """Every running Redis and Sentinel takes `settings`' runtime values, each read back. Idempotent:
    a node already running them is set again to the same values (a node that joined meanwhile is covered)."""
    say = progress or (lambda message: None)
    apply_sentinel(commands, sentinel_endpoints, settings, say)
    apply_redis(commands, redis_endpoints, settings, say)


def filled_haproxy_cfg(settings: ClusterSettings, place: Any, layout: Any, secrets: Mapping[str, str]) -> str:
    """haproxy.cfg as the boot script renders it: the bundle's template with each role's password
    put in for its placeholder (the file is 0600 on the node)."""
    text = render_haproxy_cfg(node_settings(settings, place.addresses), place, layout)
    for key in ROLE_KEYS:
        text = text.replace(placeholder(key), secrets[key])
    return text
