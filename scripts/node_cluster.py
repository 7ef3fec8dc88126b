#!/usr/bin/env python3
"""Boot the program's user data, byte for byte, in systemd-nspawn nodes on this machine (root only).

    python scripts/node_cluster.py up [--nodes 3] [--down-after-ms 5000] ...   # JSON outputs on stdout
    python scripts/node_cluster.py up --latency-ms 1 --jitter-ms 0.5    # nodes joined by the latency switch
    python scripts/node_cluster.py status
    python scripts/node_cluster.py exec node-1 -- systemctl status hst-ha-sentinel
    python scripts/node_cluster.py stop-node node-2 | start-node node-2 | replace-node node-2
    python scripts/node_cluster.py partition node-1 | heal node-1          # latency switch only
    python scripts/node_cluster.py down [--keep]

`up` renders each node's user data from __main__.py as `pulumi up` would (Pulumi mocks stand in for
AWS's answers), boots the nodes with real cloud-init, and returns once the SentinelQuorum provider's
own check passes, asked through the node-exec channel (SSM Run Command's part). The first `up`
builds the node image (Debian 12, a few minutes, cached in /var/cache/hst-ha/node-image).
`exec` runs a command as root inside a node, as an operator's Session Manager shell would, passing
its output and exit status through.

Progress goes to stderr. Exit status: 0 done, 1 the cluster is not as asked, 2 bad options,
settings or environment (nothing was started), 130 interrupted (what this run started is stopped).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from components.node.cluster import NodeCluster, NodeTargetError, check_environment
from components.node.image import ImageError
from components.runtime.quorum import QuorumError
from components.settings import SCHEMA_BY_KEY, SettingsError, parse_settings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO / ".state" / "node-cluster"

# Stack config keys that shape the nodes here; vpcCidr and nodePrivateIps are the target's own (per run).
NODE_SETTINGS = (
    "nodeCount", "redisPort", "sentinelPort", "haproxyPort", "masterName", "sentinelQuorum",
    "downAfterMs", "failoverTimeoutMs", "parallelSyncs", "minReplicasToWrite", "minReplicasMaxLag",
)


def kebab(key: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in key)


def say(message: str) -> None:
    print(f"node-cluster: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int) -> NoReturn:
    print(f"node-cluster: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                        help=f"the nodes' disks, seeds, logs and the run's record (default {DEFAULT_STATE_DIR})")
    main = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", parents=[common], help="boot the nodes; prints the outputs as JSON once verified")
    for key in NODE_SETTINGS:
        spec = SCHEMA_BY_KEY[key]
        names = [f"--{kebab(key)}"] + (["--nodes"] if key == "nodeCount" else [])
        up.add_argument(*names, dest=key, default=None, metavar=spec.type.upper(),
                        help=f"{spec.description} (stack config {key}; default {spec.default})")
    up.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for a failover-ready cluster")
    up.add_argument("--latency-ms", type=float, default=None, metavar="MS",
                    help="join the nodes by the userspace latency switch (components/node/latency.py), every "
                         "frame delayed MS one way (0 allowed); default: a kernel bridge, no added latency")
    up.add_argument("--jitter-ms", type=float, default=0.0, metavar="MS",
                    help="with --latency-ms: each frame's delay varies uniformly by +-MS, frames between two "
                         "nodes never reordered (default 0)")
    commands.add_parser("status", parents=[common], help="per node: running, cloud-init status, hst-ha units")
    run = commands.add_parser("exec", parents=[common], help="run CMD as root inside NODE (exit status passed through)")
    run.add_argument("node")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    for name, text in (("stop-node", "power the node off; its disk stays"),
                       ("start-node", "boot the node again from its disk (a reboot)"),
                       ("replace-node", "a new instance: fresh disk and instance id, the same user data"),
                       ("partition", "drop every frame to and from the node, silently (needs --latency-ms at up)"),
                       ("heal", "end the node's partition")):
        commands.add_parser(name, parents=[common], help=text).add_argument("node")
    down = commands.add_parser("down", parents=[common], help="stop every node and remove the run's state")
    down.add_argument("--keep", action="store_true", help="keep the state directory (disks, seeds, logs)")
    return main


def interrupted(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def up(args: argparse.Namespace) -> int:
    config = {key: getattr(args, key) for key in NODE_SETTINGS if getattr(args, key) is not None}
    try:
        parse_settings(config)
        check_environment()
    except (SettingsError, NodeTargetError) as exc:
        fail(str(exc), 2)
    outputs = NodeCluster(args.state_dir, progress=say).up(
        config, timeout_s=args.timeout, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms)
    print(json.dumps(outputs, indent=2))
    return 0


def exec_on_node(cluster: NodeCluster, args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        fail("exec needs a command: exec NODE -- CMD [ARGS...]", 2)
    result = cluster.exec_in(cluster.node(args.node), cmd, stdin=None)
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    return result.returncode


# The commands that act on one node by name.
NODE_ACTIONS: dict[str, Callable[[NodeCluster, str], None]] = {
    "stop-node": NodeCluster.stop_node,
    "start-node": NodeCluster.start_node,
    "replace-node": NodeCluster.replace_node,
    "partition": NodeCluster.cut,
    "heal": NodeCluster.heal,
}


def run(args: argparse.Namespace) -> int:
    if args.command == "up":
        return up(args)
    cluster = NodeCluster.load(args.state_dir, progress=say)
    if args.command == "down":
        cluster.down(keep=args.keep)
        say("stopped" + (f"; state kept in {args.state_dir}" if args.keep else ""))
    elif args.command == "status":
        print(json.dumps(cluster.status(), indent=2))
    elif args.command == "exec":
        return exec_on_node(cluster, args)
    elif args.command in NODE_ACTIONS:
        NODE_ACTIONS[args.command](cluster, args.node)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run(args)
    except (NodeTargetError, ImageError, SettingsError) as exc:
        fail(str(exc), 1)
    except QuorumError as exc:
        fail(f"{exc}\n" + "\n".join(f"  - {p}" for p in exc.problems), 1)
    except KeyboardInterrupt:
        fail("interrupted; stopped what this run started", 130)

if __name__ == "__main__":
    sys.exit(main())
