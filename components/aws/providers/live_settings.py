"""`LiveSettings`: a changed runtime setting reaches the running nodes on `pulumi up`, no instance replaced.

A thin adapter over `components.runtime.live_settings` (the plan and its refusals, the same module and
messages as `scripts/local_cluster.py up`) and `components.runtime.ssm_apply` (each node reads the
cluster document, renders its files from it with the renderer it boots with, and applies it to its
own Redis, Sentinel and HAProxy, through SSM Run Command), then the quorum is verified again with the
SentinelQuorum provider's own check. It runs after the document's SSM parameter is updated
(components/aws/cluster.py: depends_on), and sends each node only the digest of the document
(`document`, its text, is an input so that a changed document is a diff here).

- check: a setting no running cluster can change (ports, masterName, the existing nodes' addresses,
  the network) is refused here, at preview, before anything is applied. A shrink (nodeCount down) is
  carried out before this resource by ClusterMembership (components/aws/providers/membership.py).
- create records what the nodes booted with (they rendered it themselves); nothing is applied.
- update applies the new document on every node, one at a time, reads the values back, and
  re-verifies the quorum. A grow is an update with the new nodes' instance ids: they boot and join by
  themselves (they apply the document once more, which changes nothing), the existing ones take the
  new quorum and peers and reload HAProxy with the new servers and guards. After a shrink,
  ClusterMembership has applied the new document on every remaining node already (before the leaving
  nodes stopped): that apply is taken as this one's, and the quorum verified again.
- delete does nothing (the nodes keep what they run).

No password is an input or an output: each node reads its own with its instance role.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components.aws.cloud_config import aws_layout
from components.aws.providers._common import PROVIDER_VERSION, changed_keys, is_unknown, node_failures, ssm_nodes
from components.aws.providers.sentinel_quorum import SentinelQuorumArgs, SentinelQuorumProvider
from components.bundle.boot import digest
from components.runtime import live_settings, ssm_apply
from components.runtime.ssm_apply import NodeApply
from components.settings import ClusterSettings

__all__ = ["LiveSettings", "LiveSettingsArgs", "LiveSettingsProvider"]

APPLY_TIMEOUT_S = 600.0


def _progress(message: str) -> None:
    pulumi.log.info(f"LiveSettings: {message}")


def _settings(document: Any) -> ClusterSettings:
    return live_settings.settings_from_json(document)


class LiveSettingsProvider(ResourceProvider):
    """Applies in update only, when what the nodes run would change; a no-op `up` contacts nothing."""

    APPLY_ON = ("settings", "document", "instance_ids", "addresses", "provider_version")

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        new, old = news.get("settings"), (olds or {}).get("settings")
        if old and new and not is_unknown(new) and not is_unknown(old):
            try:
                live_settings.plan(_settings(old), _settings(new))
            except live_settings.ImmutableSettingError as error:
                failures.append(CheckFailure("settings", str(error)))
        return CheckResult(news, [*failures, *node_failures(news)])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=bool(changed_keys(olds, news, self.APPLY_ON)))

    def create(self, props: dict[str, Any]) -> CreateResult:
        name = _settings(props["settings"]).master_name
        return CreateResult(id_=f"live-settings-{name}", outs={**props, "applied": {}, "plan": {}, "report": {}})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        old, new = _settings(olds["settings"]), _settings(news["settings"])
        plan = live_settings.plan(old, new)  # check refused what it raises; a changed provider may not have
        for line in plan.describe():
            _progress(line)
        region = str(news["region"])
        nodes = ssm_nodes(news)
        document_sha256 = digest(str(news["document"]))
        applied = applied_by_shrink(news.get("shrink"), nodes, document_sha256)
        if applied is not None:
            _progress("the shrink (ClusterMembership) applied this document on every remaining node: not again")
        else:
            # Only the paths of the layout reach the nodes (where node.json and hst-ha-secret are).
            applied = ssm_apply.apply_on_nodes(nodes, new, aws_layout("", region), document_sha256, region,
                                               float(news.get("timeout_s") or APPLY_TIMEOUT_S), progress=_progress)
        report: dict[str, Any] = {}
        if news.get("quorum"):
            # The SentinelQuorum provider's update is its verification: the same check, the same report.
            outs = SentinelQuorumProvider().update("", {}, dict(news["quorum"])).outs or {}
            report = dict(outs.get("report") or {})
        return UpdateResult(outs={**news, "applied": applied, "plan": plan.to_dict(), "report": report})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The nodes keep the settings they run."""


def applied_by_shrink(shrink: Any, nodes: Sequence[NodeApply], document_sha256: str) -> dict[str, Any] | None:
    """What each node runs after ClusterMembership's update of this run (its `last_change`), when that was
    a shrink that applied this very document on exactly these nodes; None otherwise."""
    if not isinstance(shrink, Mapping) or shrink.get("document") != document_sha256:
        return None
    applied = shrink.get("applied")
    if not isinstance(applied, Mapping) or set(applied) != {n.instance_id for n in nodes}:
        return None
    return dict(applied)


@dataclass
class LiveSettingsArgs:
    settings: Mapping[str, Any]  # live_settings.settings_to_json(settings): no secret in it
    # The cluster document's text, as stored in its SSM parameter (components/bundle/document.py): the
    # nodes render from the parameter; its digest tells them which version to wait for.
    document: str
    instance_ids: pulumi.Input[Sequence[str]]  # in node order
    addresses: pulumi.Input[Sequence[str]]  # the nodes' private addresses, in node order
    region: pulumi.Input[str]
    # The SentinelQuorum resource's arguments, to verify the same way again after applying (None: do not).
    quorum: SentinelQuorumArgs | None = None
    # ClusterMembership's `last_change`: a shrink applies the new document itself, before the leaving
    # nodes stop; it is not applied twice.
    shrink: pulumi.Input[Mapping[str, Any]] | None = None
    timeout_s: float = APPLY_TIMEOUT_S


def _quorum_props(args: SentinelQuorumArgs | None) -> dict[str, Any]:
    """SentinelQuorum's inputs are its arguments' fields, by name (shallow: some are Outputs)."""
    if args is None:
        return {}
    return {**{f.name: getattr(args, f.name) for f in dataclasses.fields(args)}, "provider_version": PROVIDER_VERSION}


class LiveSettings(Resource, module="hstha", name="LiveSettings"):
    """The runtime settings every running node has; `applied` says what each node runs after the last
    change, `plan` what changed, `report` the quorum verified afterwards."""

    applied: pulumi.Output[dict[str, Any]]
    plan: pulumi.Output[dict[str, Any]]
    report: pulumi.Output[dict[str, Any]]

    def __init__(self, name: str, args: LiveSettingsArgs, opts: pulumi.ResourceOptions | None = None):
        props = {
            "settings": dict(args.settings),
            "instance_ids": args.instance_ids,
            "addresses": args.addresses,
            "document": args.document,
            "region": args.region,
            # SentinelQuorum's inputs are its arguments' fields, by name.
            "quorum": _quorum_props(args.quorum),
            "shrink": args.shrink,
            "timeout_s": args.timeout_s,
            "provider_version": PROVIDER_VERSION,
            "applied": None,
            "plan": None,
            "report": None,
        }
        super().__init__(LiveSettingsProvider(), name, props, opts)
