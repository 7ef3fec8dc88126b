#!/usr/bin/env python3
"""A planned switchover on an AWS stack, before maintenance: the same module as
`local_cluster.py switchover` (components/runtime/switchover.py), run on one of the nodes through SSM
Run Command (the Redis and Sentinel ports are open only between cluster members).

    pulumi stack output --json | python scripts/aws_switchover.py --region eu-west-1 [--to 10.42.64.10]

Reads the stack outputs (instanceIds, redisEndpoints, sentinelEndpoints, masterName) on stdin or from
`--outputs FILE`. The node runs `python3 -m components.runtime.membership switchover` from its code
archive, as the operator with its own password command (its instance role); the command carries
endpoints and the master name only. Prints the node's progress lines on stderr and the switchover's
report as JSON on stdout. Exit status: 0 switched over, 1 not (the message says at which step; the
primary is unpaused and the priorities restored), 2 bad input (nothing sent).
Needs ssm:SendCommand and ssm:GetCommandInvocation on the nodes (the deploy role has them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from components.aws.cloud_config import aws_layout
from components.runtime.membership import LiveSettingsError
from components.runtime.ssm_apply import NodeApply
from components.runtime.ssm_membership import STEP_TIMEOUT_S, cluster_args, run_cluster_step

REQUIRED = ("instanceIds", "redisEndpoints", "sentinelEndpoints", "masterName")


def parse_outputs(text: str) -> dict[str, Any]:
    """The stack outputs this needs; ValueError naming what is missing."""
    try:
        outputs = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the stack outputs are not JSON ({exc}); pipe `pulumi stack output --json`") from None
    missing = [k for k in REQUIRED if not outputs.get(k)] if isinstance(outputs, dict) else list(REQUIRED)
    if missing:
        raise ValueError(f"the stack outputs lack {', '.join(missing)}: is this an hst-ha stack, deployed?")
    return dict(outputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", required=True, help="the stack's AWS region (aws:region)")
    parser.add_argument("--to", help="the private IP of the replica to promote (default: the most caught-up)")
    parser.add_argument("--outputs", type=argparse.FileType("r"), default=sys.stdin,
                        help="`pulumi stack output --json` (default: stdin)")
    args = parser.parse_args(argv)
    try:
        outputs = parse_outputs(args.outputs.read())
    except ValueError as exc:
        print(f"aws_switchover: {exc}", file=sys.stderr)
        return 2
    redis_nodes = list(outputs["redisEndpoints"])
    extra: list[str] = []
    if args.to:
        target = next((r for r in redis_nodes if r.rsplit(":", 1)[0] == args.to), None)
        if target is None:
            print(f"aws_switchover: --to {args.to} is not one of the nodes ({', '.join(redis_nodes)})", file=sys.stderr)
            return 2
        extra = ["--to", target]
    # node-1 runs it: every node reaches every Redis and Sentinel of the cluster.
    runner = NodeApply(str(outputs["instanceIds"][0]), redis_nodes[0].rsplit(":", 1)[0])
    step = cluster_args("switchover", list(outputs["sentinelEndpoints"]), redis_nodes, str(outputs["masterName"]),
                        *extra)
    try:
        report = run_cluster_step(runner, aws_layout("", args.region), step, args.region,
                                  time.monotonic() + STEP_TIMEOUT_S + 60)
    except LiveSettingsError as exc:
        print(f"aws_switchover: {exc}", file=sys.stderr)
        return 1
    for line in report.pop("log", []):
        print(f"aws_switchover: {runner.instance_id}: {line}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
