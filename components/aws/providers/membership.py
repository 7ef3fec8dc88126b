"""`ClusterMembership`: nodes leave a running cluster in place on `pulumi up` (nodeCount down), before
their instances are terminated.

A thin adapter over `components.runtime.ssm_membership` (the steps, over SSM Run Command) and
`components.runtime.membership` (what the node that stays runs, the same module as the local target's
`up --nodes 3`). Pulumi deletes the instances of removed nodes after every create and update of the
run, so this resource's update still reaches them. Its place in the graph (components/aws/cluster.py):
after the cluster document (the remaining nodes render from the new one) and before SentinelQuorum,
which verifies the smaller cluster (its exact counts would fail against Sentinels that still know
the leaving nodes), then LiveSettings, which takes this shrink's apply of the new document as its own.

- check: the leaving nodes are the last in order and at least one node stays.
- update: when addresses leave (a shrink): primary moved off them with a planned switchover, the
  new document applied on the remaining nodes (lower quorum, HAProxy without the leaving servers),
  the leaving daemons stopped and disabled, the remaining Sentinels reset one at a time. Otherwise
  (a grow, a replaced instance) it records the new membership: new nodes join by themselves.
- create records; delete does nothing (the nodes keep running until their instances go).

No password is an input or an output: each node reads its own with its instance role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components.aws.cloud_config import aws_layout
from components.aws.providers._common import PROVIDER_VERSION, changed_keys, is_unknown, node_failures, ssm_nodes
from components.bundle.boot import digest
from components.runtime import live_settings, ssm_membership

__all__ = ["ClusterMembership", "ClusterMembershipArgs", "ClusterMembershipProvider"]

SHRINK_TIMEOUT_S = 900.0


def _progress(message: str) -> None:
    pulumi.log.info(f"ClusterMembership: {message}")


class ClusterMembershipProvider(ResourceProvider):
    """Acts in update only, when nodes leave; a grow or a no-op `up` contacts nothing."""

    TRACK = ("addresses", "instance_ids", "provider_version")

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        old, new = (olds or {}).get("addresses"), news.get("addresses")
        if old and new and not is_unknown(old) and not is_unknown(new):
            staying = [a for a in old if a in new]
            if not staying:
                failures.append(CheckFailure("addresses", (
                    f"no node of the running cluster ({', '.join(old)}) stays in the new one ({', '.join(new)}): "
                    "the cluster cannot be moved by removing every node; keep the addresses and change the count")))
            elif len(new) < len(old) and list(old[:len(new)]) != list(new):
                failures.append(CheckFailure("addresses", (
                    f"nodes leave from the middle ({', '.join(a for a in old if a not in new)} of "
                    f"{', '.join(old)}): only the last nodes in order can leave a running cluster; keep "
                    "nodePrivateIps' order and remove from its end")))
        return CheckResult(news, [*failures, *node_failures(news)])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=bool(changed_keys(olds, news, self.TRACK)))

    def create(self, props: dict[str, Any]) -> CreateResult:
        name = live_settings.settings_from_json(props["settings"]).master_name
        return CreateResult(id_=f"membership-{name}", outs={**props, "last_change": {}})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        staying_addresses = set(news["addresses"])
        leaving = [n for n in ssm_nodes(olds) if n.address not in staying_addresses]
        if not leaving:
            # Nothing done to the running cluster: LiveSettings must not take an earlier shrink's apply for this one's.
            return UpdateResult(outs={**news, "last_change": {}})
        settings = live_settings.settings_from_json(news["settings"])
        _progress(f"{', '.join(n.address for n in leaving)} leave the cluster before their instances are removed")
        region = str(news["region"])
        done = ssm_membership.shrink_on_nodes(
            ssm_nodes(news), leaving, settings, aws_layout("", region), digest(str(news["document"])), region,
            float(news.get("timeout_s") or SHRINK_TIMEOUT_S), progress=_progress)
        return UpdateResult(outs={**news, "last_change": {"left": [n.address for n in leaving], **done}})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The nodes keep running until Pulumi removes their instances."""


@dataclass
class ClusterMembershipArgs:
    settings: dict[str, Any]  # live_settings.settings_to_json(settings): no secret in it
    document: str  # the cluster document's text: the remaining nodes apply it (by its digest)
    instance_ids: pulumi.Input[Sequence[str]]  # in node order
    addresses: pulumi.Input[Sequence[str]]  # the nodes' private addresses, in node order
    region: pulumi.Input[str]
    timeout_s: float = SHRINK_TIMEOUT_S


class ClusterMembership(Resource, module="hstha", name="ClusterMembership"):
    """Who is in the running cluster; `last_change` says what its last update did: for a shrink who left,
    the primary after it, the document applied and per remaining node what it runs (LiveSettings, next,
    does not apply that document again), how long the Sentinel resets took; {} when nodes only joined."""

    last_change: pulumi.Output[dict[str, Any]]

    def __init__(self, name: str, args: ClusterMembershipArgs, opts: pulumi.ResourceOptions | None = None):
        props = {
            "settings": dict(args.settings),
            "document": args.document,
            "instance_ids": args.instance_ids,
            "addresses": args.addresses,
            "region": args.region,
            "timeout_s": args.timeout_s,
            "provider_version": PROVIDER_VERSION,
            "last_change": None,
        }
        super().__init__(ClusterMembershipProvider(), name, props, opts)
