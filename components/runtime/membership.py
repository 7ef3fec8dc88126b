"""Change who is in a running cluster: move the primary off the nodes that leave, wait for the
Sentinels to settle, and make the remaining Sentinels forget the nodes that left.

Plain Python (no Pulumi import) and nothing a node lacks: besides the local target
(components/local/cluster.py, `up --nodes 3`), it runs on the nodes themselves, from the code archive
with Debian's python3-redis, as `python3 -m components.runtime.membership` (started over SSM Run
Command by components/runtime/ssm_membership.py through files/membership.sh): on AWS the Redis and
Sentinel ports are open only between cluster members, so one remaining node does the cluster-wide
steps for the deployer. The same command is the AWS switchover (`switchover`, README "Switch over
before maintenance").

Every command goes through `components.runtime.switchover.Commands`, as the operator role; no
password is an argument or in a message: on a node it is read with the node's own secret command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from components.bundle.users import OPERATOR
from components.runtime.nodeenv import role_password
from components.runtime.switchover import Commands, SwitchoverError, direct_commands, switchover

__all__ = [
    "LiveSettingsError", "move_primary_off", "reply_fields", "reset_sentinels", "send_checked", "sentinel_topology",
    "staying_target", "wait_settled",
]

Progress = Callable[[str], None]
POLL_S = 0.1


class LiveSettingsError(RuntimeError):
    """Applying the settings or the membership failed; says on which server and at which step (never a
    password)."""


def reply_fields(reply: Any) -> dict[str, str]:
    """A field-value reply (SENTINEL MASTER, CONFIG GET) as a dict, whether RESP2 gave a flat list or not."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    items = list(reply or [])
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def send_checked(what: str, endpoint: str, call: Callable[..., Any], *args: Any) -> Any:
    """`call(endpoint, *args)`, a failure raised as LiveSettingsError naming the server and the step."""
    try:
        return call(endpoint, *args)
    except (redis.RedisError, OSError) as exc:
        text = str(exc).split("\n", 1)[0][:200]
        raise LiveSettingsError(f"{endpoint}: {what} failed: {type(exc).__name__}: {text}") from None


def sentinel_topology(commands: Commands, endpoint: str, master_name: str) -> tuple[set[str], set[str]]:
    """(replicas, other Sentinels) that Sentinel knows, as host:port, flagged neither down nor disconnected."""
    def healthy(reply: Any) -> set[str]:
        out = set()
        for entry in reply or []:
            fields = reply_fields(entry)
            flags = set(fields.get("flags", "").split(","))
            if not flags & {"s_down", "o_down", "disconnected"}:
                out.add(f"{fields.get('ip')}:{fields.get('port')}")
        return out

    replicas = healthy(commands.sentinel(endpoint, ("SENTINEL", "REPLICAS", master_name)))
    others = healthy(commands.sentinel(endpoint, ("SENTINEL", "SENTINELS", master_name)))
    return replicas, others


def wait_settled(commands: Commands, sentinels: Sequence[str], master_name: str, timeout_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 may_be_gone: Sequence[str] = ()) -> str:
    """Wait until every Sentinel answers, names the same primary and has no failover in progress; that
    primary (host:port). A membership change waits for it: the leader of a failover keeps naming the old
    primary until it has reconfigured every replica, and a SENTINEL RESET in that window leaves it naming
    the old primary for good (it already holds the new configuration epoch, so its peers' news is not news).
    A Sentinel in `may_be_gone` (a leaving node's, stopped by an earlier attempt of the same shrink) may
    not answer; if it answers, it must agree."""
    deadline = clock() + timeout_s
    views: dict[str, str] = {}
    while True:
        views = {}
        for endpoint in sentinels:
            try:
                fields = reply_fields(commands.sentinel(endpoint, ("SENTINEL", "MASTER", master_name)))
                flags = set(fields.get("flags", "").split(","))
                busy = flags & {"failover_in_progress", "s_down", "o_down", "promoted"}
                views[endpoint] = f"{fields.get('ip')}:{fields.get('port')}" + (f" ({','.join(sorted(busy))})"
                                                                                 if busy else "")
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:  # no Sentinel there
                if endpoint not in may_be_gone:
                    views[endpoint] = f"no answer ({type(exc).__name__})"
            except redis.RedisError as exc:
                views[endpoint] = f"no answer ({type(exc).__name__})"
        named = set(views.values())
        if len(named) == 1 and ":" in (only := next(iter(named))) and " " not in only:
            return only
        if clock() >= deadline:
            raise LiveSettingsError(f"the Sentinels do not agree on a settled primary after {timeout_s:g}s ("
                                    + "; ".join(f"{e} names {v}" for e, v in views.items())
                                    + "); nothing changed in the membership (run `status`)")
        sleep(POLL_S)


def reset_sentinels(commands: Commands, sentinels: Sequence[str], redis_nodes: Sequence[str], master_name: str,
                    timeout_s: float = 60.0, progress: Progress | None = None,
                    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> float:
    """`SENTINEL RESET <master>` on each of `sentinels`, one at a time, each time waiting until it knows
    exactly the other `sentinels` and, as replicas, exactly the `redis_nodes` other than the primary it
    names: the Sentinels forget removed nodes, and at no moment do two of them relearn at once. Seconds taken."""
    say = progress or (lambda message: None)
    started = clock()
    for endpoint in sentinels:
        reset_at = clock()
        send_checked("SENTINEL RESET", endpoint, commands.sentinel, ("SENTINEL", "RESET", master_name))
        deadline = clock() + timeout_s
        seen: tuple[set[str], set[str], str] = (set(), set(), "")
        while True:
            try:
                host, port = commands.sentinel(endpoint, ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name))
                primary = f"{host}:{port}"
                replicas, others = sentinel_topology(commands, endpoint, master_name)
                seen = (replicas, others, primary)
                if (others == {s for s in sentinels if s != endpoint}
                        and replicas == {r for r in redis_nodes if r != primary}):
                    break
            except (redis.RedisError, OSError, TypeError, ValueError):
                pass
            if clock() >= deadline:
                raise LiveSettingsError(
                    f"Sentinel {endpoint} after SENTINEL RESET knows replicas {sorted(seen[0])} and Sentinels "
                    f"{sorted(seen[1])} (primary {seen[2] or 'unknown'}), not the remaining nodes, "
                    f"after {timeout_s:g}s")
            sleep(POLL_S)
        say(f"Sentinel {endpoint} reset: knows {len(seen[1])} other Sentinels and {len(seen[0])} replicas "
            f"after {clock() - reset_at:.1f}s")
    return clock() - started


def staying_target(commands: Commands, primary: str, leaving: set[str]) -> str:
    """The most caught-up online replica of `primary` that stays (host:port)."""
    info = send_checked("INFO replication", primary, commands.redis, ("INFO", "replication"))
    offsets = {f"{v['ip']}:{v['port']}": int(v.get("offset", 0)) for k, v in dict(info).items()
               if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"}
    staying = {r: o for r, o in offsets.items() if r not in leaving}
    if not staying:
        raise LiveSettingsError(f"the primary {primary} is on a leaving node and no replica that stays is online "
                                "to switch over to; nothing removed (run `status`)")
    return max(sorted(staying), key=lambda r: staying[r])


def move_primary_off(commands: Commands, sentinels: Sequence[str], redis_nodes: Sequence[str], master_name: str,
                     leaving: set[str], progress: Progress | None = None, settle_timeout_s: float = 60.0) -> str:
    """Before nodes leave: a settled primary that stays. Waits until every Sentinel names the same primary
    with no failover under way; if that primary is on a leaving node (`leaving`, its Redis host:port), a
    planned switchover (nothing lost) moves it to the most caught-up replica that stays, and the Sentinels
    settle again. Returns the primary (host:port). The leaving nodes' Sentinels may be gone already (a
    shrink started again after it stopped them), the others must answer."""
    say = progress or (lambda message: None)
    started = time.monotonic()
    hosts = {r.rsplit(":", 1)[0] for r in leaving}
    gone_ok = [s for s in sentinels if s.rsplit(":", 1)[0] in hosts]
    primary = wait_settled(commands, sentinels, master_name, settle_timeout_s, may_be_gone=gone_ok)
    if primary in leaving:
        target = staying_target(commands, primary, leaving)
        say(f"the primary {primary} is on a leaving node: switching over to {target} first")
        try:
            switchover(sentinels, redis_nodes, master_name, commands, to=target, progress=say)
        except SwitchoverError as exc:
            raise LiveSettingsError(f"switching over off the leaving primary {primary}: {exc}; nothing removed") \
                from None
        primary = wait_settled(commands, sentinels, master_name, settle_timeout_s, may_be_gone=gone_ok)
    say(f"every Sentinel names {primary}, no failover under way ({time.monotonic() - started:.1f}s)")
    return primary


# ----------------------------------------------------------------- on a node (SSM Run Command)

def _endpoints(text: str) -> list[str]:
    return [e for e in text.split(",") if e]


def _operator_password(secret_script: str) -> str:
    """The operator's password through the node's own secret command (its instance role), never argv."""
    try:
        return role_password(secret_script, OPERATOR.key)
    except RuntimeError as exc:
        raise LiveSettingsError(f"the node {exc}: check its instance role") from None


def main(argv: Sequence[str] | None = None) -> int:
    """`python3 -m components.runtime.membership STEP ...` on a node: prints one JSON object (what was done,
    with the progress lines under "log"); on failure the last stderr line says why, exit 1."""
    parser = argparse.ArgumentParser(prog="python3 -m components.runtime.membership")
    parser.add_argument("step", choices=("switchover", "move-primary-off", "forget"))
    parser.add_argument("--sentinels", type=_endpoints, required=True, help="every Sentinel to ask, host:port,...")
    parser.add_argument("--redis", type=_endpoints, required=True, help="every Redis of the cluster, host:port,...")
    parser.add_argument("--master-name", required=True)
    parser.add_argument("--secret-script", required=True, help="the node's hst-ha-secret")
    parser.add_argument("--tls-ca-file", default="", help="the cluster CA file (tlsEnabled)")
    parser.add_argument("--to", default=None, help="switchover: the replica to promote, host:port")
    parser.add_argument("--leaving", type=_endpoints, default=[], help="move-primary-off: leaving Redis, host:port,...")
    args = parser.parse_args(argv)
    log: list[str] = []
    try:
        # One kept connection per endpoint: the switchover times SENTINEL FAILOVER against Sentinel's INFO
        # and counts round trips inside the pause; this process lives for one step (no rotation to miss).
        commands = direct_commands(_operator_password(args.secret_script), tls_ca_file=args.tls_ca_file or None,
                                   reuse_connections=True)
        result: dict[str, Any]
        if args.step == "switchover":
            report = switchover(args.sentinels, args.redis, args.master_name, commands, to=args.to,
                                progress=log.append)
            result = report.to_dict()
        elif args.step == "move-primary-off":
            result = {"primary": move_primary_off(commands, args.sentinels, args.redis, args.master_name,
                                                  set(args.leaving), log.append)}
        else:
            result = {"reset_s": round(reset_sentinels(commands, args.sentinels, args.redis, args.master_name,
                                                       progress=log.append), 3)}
    except (LiveSettingsError, SwitchoverError, redis.RedisError, OSError) as exc:
        for line in log:
            print(line, file=sys.stderr)
        print(f"{args.step}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**result, "log": log}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
