#!/usr/bin/env python3
"""Run the hst-ha cluster on this machine: the AWS target's node bundles as real processes on loopback.

    python scripts/local_cluster.py up [--nodes 3] [--down-after-ms 5000] ...   # JSON outputs on stdout
    python scripts/local_cluster.py status [--json | --watch [--interval 2]]
    python scripts/local_cluster.py failover
    python scripts/local_cluster.py switchover [--to node-2]   # planned: writes paused, none lost or refused
    python scripts/local_cluster.py rotate-password [--role ROLE]   # every role unless told
    python scripts/local_cluster.py backup [--to DIR]        # a snapshot from a replica, as the nodes take it
    python scripts/local_cluster.py restore --from FILE --state-dir NEW [up options]
    python scripts/local_cluster.py down [--keep]

`up` on a running cluster changes only the options it is given, live (components/runtime/live_settings.py):
`--down-after-ms 2000` takes effect on every node without a restart, `--nodes 5` grows it, `--nodes 3`
shrinks it; a setting no running cluster can change (ports, masterName) is refused before anything is applied.

Progress goes to stderr. Exit status: 0 done, 1 the cluster is not as asked (the message says why),
2 bad options or settings (nothing was started), 130 interrupted (what this run started is stopped).
A thin CLI over components.local.cluster.LocalCluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

from components.bundle.users import OPERATOR, ROLE_KEYS
from components.local.cluster import (
    DEFAULT_BASE_ADDRESS,
    LocalCluster,
    LocalClusterError,
    PortBusyError,
)
from components.local.state import TOKEN_STORE, StateDir
from components.outputs import LocalOutputs
from components.runtime import backup as backups
from components.runtime.bootstrap import local_bootstrap_tokens
from components.runtime.live_settings import ImmutableSettingError, LiveSettingsError
from components.runtime.metrics import parse_prometheus
from components.runtime.nodeenv import node_env
from components.runtime.quorum import QuorumError
from components.runtime.rotation import RotationError
from components.runtime.secret_store import LocalSecretStore
from components.runtime.switchover import SwitchoverError, direct_commands, switchover
from components.settings import SCHEMA_BY_KEY, SettingsError, majority, parse_settings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO / ".state" / "local-cluster"
DEFAULT_BACKUP_DIR = REPO / ".state" / "backups"
WATCH_MAX_ROUNDS = 100_000  # bounded even when nobody presses Ctrl-C

# The stack config keys that mean something on one machine; the rest (VPC, AMI, CIDRs, HSTS) are
# AWS-only. Each becomes --kebab-case, passed to parse_settings as given, so a bad value fails with
# the very message `pulumi up` would print. The token settings only shape the bootstrap bearer
# tokens minted after `up`: they may change on a running cluster (the tokens are minted again).
LOCAL_SETTINGS = (
    "nodeCount", "redisPort", "sentinelPort", "haproxyPort", "masterName", "sentinelQuorum",
    "downAfterMs", "failoverTimeoutMs", "parallelSyncs", "minReplicasToWrite", "acceptWriteLossOnFailover",
    "minReplicasMaxLag",
    "accessKeyId", "tokenUserIds", "tokenGroupIds", "tokenScopeRole", "tokenLifetimeHours", "tokenExpiresAt",
    "tokenKeyLength",
)


# Where each token option sits in the recorded settings (ClusterSettings.tokens).
TOKEN_FIELDS = {"accessKeyId": "access_key_id", "tokenUserIds": "user_ids", "tokenGroupIds": "group_ids",
                "tokenScopeRole": "scope_role", "tokenLifetimeHours": "lifetime_hours",
                "tokenExpiresAt": "expires_at", "tokenKeyLength": "key_length"}


def recorded_options(state_dir: str) -> dict[str, Any]:
    """The options a running cluster was brought up (or last changed) with, as raw config values, so
    that `up` changes only what it is given: `up` alone re-verifies, `up --nodes 5` grows and keeps the
    timings. A quorum that was the majority follows the node count (0); minReplicasToWrite 0 was accepted."""
    state = StateDir(state_dir).read()
    if state is None:
        return {}
    recorded = state["settings"]
    raw: dict[str, Any] = {}
    for key in LOCAL_SETTINGS:
        if key in TOKEN_FIELDS:
            value = recorded["tokens"][TOKEN_FIELDS[key]]
        elif key == "acceptWriteLossOnFailover":
            value = recorded["min_replicas_to_write"] == 0
        else:
            value = recorded[re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)]
        if key == "sentinelQuorum" and value == majority(recorded["node_count"]):
            value = 0
        if isinstance(value, list):
            raw[key] = [str(v) for v in value]
        elif isinstance(value, bool):
            raw[key] = "true" if value else "false"
        elif value is not None:
            raw[key] = str(value)
    return raw


def kebab(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), key)


def say(message: str) -> None:
    print(f"local-cluster: {message}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                        help="where the nodes' files, logs and the password live: a new directory (created) or an "
                        f"empty one (default {DEFAULT_STATE_DIR})")
    main = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", parents=[common],
                             help="start (or re-verify) the cluster; prints the outputs as JSON")
    restore = commands.add_parser(
        "restore", parents=[common],
        help="start a NEW cluster (a new --state-dir) whose data is a snapshot; prints its outputs")
    restore.add_argument("--from", dest="snapshot", required=True,
                         help="the .rdb snapshot (from `backup`, or downloaded from S3)")
    for key in LOCAL_SETTINGS:
        spec = SCHEMA_BY_KEY[key]
        names = [f"--{kebab(key)}"] + (["--nodes"] if key == "nodeCount" else [])
        if spec.type == "array":
            for command in (up, restore):
                command.add_argument(*names, dest=key, default=None, nargs="+", metavar="ID",
                                     help=f"{spec.description} (stack config {key}; default {spec.default})")
        else:
            for command in (up, restore):
                command.add_argument(*names, dest=key, default=None, metavar=spec.type.upper(),
                                     help=f"{spec.description} (stack config {key}; default {spec.default})")
    for command in (up, restore):
        command.add_argument("--base-address", default=DEFAULT_BASE_ADDRESS,
                             help=f"loopback address of node-1; the others follow (default {DEFAULT_BASE_ADDRESS})")
        command.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a failover-ready cluster")

    status = commands.add_parser("status", parents=[common],
                                 help="primary, replicas with lag, Sentinels, HAProxy routes")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--watch", action="store_true",
                        help="redraw the table until Ctrl-C, with each fence's last decision")
    status.add_argument("--interval", type=float, default=2.0,
                        help="seconds between redraws with --watch (at least 0.5)")

    backup = commands.add_parser("backup", parents=[common],
                                 help="snapshot from a replica (BGSAVE) into a directory")
    backup.add_argument("--to", default=str(DEFAULT_BACKUP_DIR),
                        help=f"where the .rdb goes (default {DEFAULT_BACKUP_DIR})")

    failover = commands.add_parser("failover", parents=[common],
                                   help="fail over via Sentinel; wait until every HAProxy follows")
    failover.add_argument("--timeout", type=float, default=60.0)

    switch = commands.add_parser("switchover", parents=[common],
                                 help="planned switchover: pause writes, catch a replica up, fail over, resume")
    switch.add_argument("--to", metavar="NODE", help="the replica to promote (node-2, ...); the most caught-up one "
                        "when omitted")

    rotate = commands.add_parser("rotate-password", parents=[common],
                                 help="give Redis roles new passwords with no moment where a client is refused")
    rotate.add_argument("--role", choices=ROLE_KEYS, action="append",
                        help="the role to rotate (repeatable); every role when omitted")

    down = commands.add_parser("down", parents=[common],
                               help="stop the cluster and remove what it created in its state directory")
    down.add_argument("--keep", action="store_true", help="keep the state directory (data, configs, logs)")
    return main


def print_table(status: dict[str, Any]) -> None:
    primary = status["primary"] or "none agreed by a majority of Sentinels"
    print(f"primary {primary}  ({status['sentinelsAnswering']} Sentinels answering, set '{status['masterName']}')")
    rows = [("node", "address", "redis", "replica lag", "sentinel names", "haproxy routes to", "pids r/s/h")]
    for node in status["nodes"]:
        role = node["role"] or "down"
        if role == "slave":
            role = f"replica of {node['replicaOf']} (link {node['linkStatus']})"
        lag = "-" if node.get("lagBytes") is None else f"{node['lagBytes']} B, {node['lagS']} s"
        pids = "/".join(str(p or "-") for p in node["pids"].values())
        rows.append((node["node"], node["address"], role, lag, node["sentinelNames"] or "no answer",
                     node["haproxyRoutesTo"] or "nowhere", pids))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def fence_decisions(cluster: LocalCluster) -> list[str]:
    """Each node's fence: what it routes to now and its last decision (its /fence metrics), or why not known."""
    lines = []
    for node in cluster.nodes:
        env = node_env(node.layout.node_env)
        try:
            url = f"http://{node.address}:{env['HAPROXY_METRICS_PORT']}/fence"
            with urllib.request.urlopen(url, timeout=1) as answer:
                samples = parse_prometheus(answer.read().decode())
        except OSError as exc:
            lines.append(f"{node.name} fence: not answering ({exc})")
            continue
        routable = [labels["server"] for name, labels, value in samples if name == "hst_ha_fence_routable" and value]
        held = [labels["server"] for name, labels, value in samples if name == "hst_ha_fence_held" and value]
        last = next((labels.get("decision") for name, labels, _ in samples
                     if name == "hst_ha_fence_last_decision_info"), "")
        lines.append(f"{node.name} fence: routable {', '.join(routable) or 'none'}; held {', '.join(held) or 'none'};"
                     f" last decision: {last or 'none yet'}")
    return lines


def watch(cluster: LocalCluster, interval: float) -> None:
    """A live view until Ctrl-C (or WATCH_MAX_ROUNDS redraws): role, lag, Sentinels, routing, fences."""
    interval = max(0.5, interval)
    try:
        for _ in range(WATCH_MAX_ROUNDS):
            status = cluster.status()
            sys.stdout.write("\x1b[H\x1b[2J" if sys.stdout.isatty() else "\n")
            print(time.strftime("%H:%M:%S"), f"(every {interval:g}s; Ctrl-C to stop)")
            print_table(status)
            print("\n".join(fence_decisions(cluster)), flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        print("", flush=True)


def take_backup(cluster: LocalCluster, to: Path) -> dict[str, Any]:
    """The nodes' own snapshot round (components/runtime/backup.py): the elected replica takes it."""
    for node in cluster.nodes:
        env = {**node_env(node.layout.node_env), "BACKUP_SINK": f"file:{to.resolve()}"}
        taken = backups.backup_once(env)
        if taken:
            return taken
    raise LocalClusterError("no node is a healthy replica the Sentinels list; run `status`")


def run_on(cluster: LocalCluster, args: argparse.Namespace) -> None:
    """The commands on a running cluster: rotate-password, status, backup, switchover, failover."""
    if args.command == "rotate-password":
        for key in args.role or ROLE_KEYS:
            cluster.rotate_password(key)
            say(f"rotated the {key} password")
    elif args.command == "status" and args.watch:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the view, not an error: nothing was started
            watch(cluster, args.interval)
    elif args.command == "status":
        status = cluster.status()
        print(json.dumps(status, indent=2)) if args.json else print_table(status)
    elif args.command == "switchover":
        print(json.dumps(switch_over(cluster, args.to), indent=2))
    elif args.command == "backup":
        taken = take_backup(cluster, Path(args.to))
        say(f"{taken['node']} took a snapshot at offset {taken['offset']}: {taken['location']}")
        print(json.dumps(taken, indent=2))
    else:
        print(json.dumps(cluster.failover(timeout_s=args.timeout), indent=2))


def switch_over(cluster: LocalCluster, to: str | None) -> dict[str, Any]:
    """components/runtime/switchover.py on this cluster, as the operator; then every HAProxy must follow."""
    names = {node.name: f"{host}:{port}" for node, (host, port) in zip(cluster.nodes, cluster.redis_endpoints,
                                                                          strict=True)}
    target = names.get(to, to) if to else None
    report = switchover(
        [f"{h}:{p}" for h, p in cluster.sentinel_endpoints], list(names.values()), cluster.settings.master_name,
        direct_commands(cluster.password(OPERATOR.key), tls_ca_file=cluster.tls_ca_file, reuse_connections=True),
        to=target, progress=say,  # kept connections: one round trip per command in the pause
    )
    cluster.verify(timeout_s=30.0)
    say(f"verified failover-ready with {report.new_primary} as primary")
    return report.to_dict()


def fail(message: str, code: int) -> NoReturn:
    print(f"local-cluster: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def bootstrap_tokens(settings: Any, state_dir: Path, outputs: LocalOutputs) -> None:
    """What `BootstrapTokens` does after the quorum on AWS, into a 0600 local store: the signing key
    is reused, tokens are minted only when missing, expiring or their inputs changed. Fills the
    token outputs."""
    store = LocalSecretStore(state_dir / TOKEN_STORE)
    key, tokens = local_bootstrap_tokens(settings, store)
    if tokens.minted:
        say(f"minted bootstrap bearer tokens for {', '.join(tokens.minted)} "
            f"(access key {settings.tokens.access_key_id})")
    outputs["bearerTokenSecretPath"] = store.path(tokens.secret_name)
    outputs["tokenVerificationKey"] = key.public_key_pem


def interrupted(signum: int, frame: Any) -> NoReturn:
    # SIGTERM takes the Ctrl-C path, so `up` stops what it started before exiting.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        if args.command in ("up", "restore"):
            given = {key: getattr(args, key) for key in LOCAL_SETTINGS if getattr(args, key) is not None}
            try:
                raw = {**(recorded_options(args.state_dir) if args.command == "up" else {}), **given}
            except (LocalClusterError, KeyError) as exc:
                fail(f"{args.state_dir}: the recorded settings are unreadable ({exc}); run `down` first", 2)
            try:
                settings = parse_settings(raw)
            except SettingsError as exc:
                fail(str(exc), 2)
            try:
                cluster = LocalCluster(settings, args.state_dir, args.base_address, progress=say)
                cluster.state.refuse_foreign()
                if args.command == "restore":
                    if cluster.state.read() is not None:
                        raise LocalClusterError(
                            f"{cluster.state_dir} holds a cluster already; restore starts a NEW one")
                    cluster.state.claim()
                    keys = backups.restore_into(Path(args.snapshot), Path(cluster.nodes[0].layout.data))
                    say(f"{keys} keys from {args.snapshot} placed on {cluster.nodes[0].name}, the initial primary")
            except (LocalClusterError, backups.BackupError, OSError) as exc:
                fail(str(exc), 2)
            outputs = cluster.up(timeout_s=args.timeout)
            say(f"verified failover-ready in {outputs['quorum']['elapsed_s']}s after start of verification")
            bootstrap_tokens(settings, cluster.state_dir, outputs)
            print(json.dumps(outputs, indent=2))
        elif args.command == "down":
            try:
                cluster = LocalCluster.load(args.state_dir, progress=say)
            except LocalClusterError as exc:
                say(f"{exc}; nothing to stop")
                return 0
            cluster.down(keep=args.keep)
            say("stopped" + (f"; state kept in {args.state_dir}" if args.keep else
                             f"; removed what the local target created in {cluster.state_dir}"))
        else:
            run_on(LocalCluster.load(args.state_dir, progress=say), args)
    except (PortBusyError, ImmutableSettingError) as exc:
        fail(str(exc), 2)
    except (LocalClusterError, LiveSettingsError, QuorumError, RotationError, SwitchoverError,
            backups.BackupError) as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        fail("interrupted; stopped what this run started", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
