"""The stack outputs: the one definition of their names, types and meaning.

Other stacks read these names (`StackReference.require_output`), so they are a contract: the AWS
program (`HstCluster`, exported by `__main__.py`) and the local target (`LocalCluster.outputs`,
printed by `scripts/local_cluster.py up`) both emit every name below with the type given here.
Where the local target has nothing to give (no instances, no VPC) the field's `local` note says
what it emits instead; values it has and AWS does not are in `LocalOutputs`.

Pure module: no Pulumi import (the local target uses it without Pulumi).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict, get_type_hints

__all__ = ["Doc", "LocalOutputs", "OutputSpec", "StackOutputs", "attribute_name", "output_specs"]


@dataclass(frozen=True)
class Doc:
    """What an output means; `local` says what the local target emits where it differs."""

    text: str
    local: str = ""


class StackOutputs(TypedDict):
    """Every stack output, camelCase, as another stack reads it."""

    masterName: Annotated[str, Doc("The name Sentinel monitors the primary under (`sentinel monitor <name>`).")]
    nodePrivateIps: Annotated[list[str], Doc(
        "Each node's private IP, node-1 first.", local="the loopback host of each node (127.0.0.11, ...).")]
    nodePublicIps: Annotated[list[str | None], Doc(
        "Each node's public IP; null for a node without one (an existing VPC).",
        local="null for every node: loopback hosts have no public address.")]
    redisEndpoints: Annotated[list[str], Doc("Each node's Redis as host:port.")]
    sentinelEndpoints: Annotated[list[str], Doc("Each node's Sentinel as host:port.")]
    haproxyEndpoint: Annotated[str, Doc(
        "Where HST Server on a node reaches the primary (its db_host:db_port): every node's HAProxy "
        "listens there, loopback only.",
        local="node-1's HAProxy; each node's HAProxy has its own loopback host (`haproxyEndpoints`).")]
    securityGroupId: Annotated[str, Doc(
        "The cluster's security group; Redis and Sentinel are open only within it.",
        local="empty: there is no security group.")]
    instanceIds: Annotated[list[str], Doc(
        "Each node's EC2 instance id (for SSM Session Manager).", local="empty: the nodes are processes.")]
    redisAuthSecretArn: Annotated[str, Doc(
        "The Secrets Manager secret holding the Redis password.",
        local="empty: the password is a 0600 file (`redisAuthSecretPath`).")]
    vpcId: Annotated[str, Doc("The VPC of the nodes.", local="empty: there is no VPC.")]
    subnetIds: Annotated[list[str], Doc("The subnets of the nodes.", local="empty: there are no subnets.")]
    hstInstalled: Annotated[bool, Doc(
        "Whether the nodes install HST Server; false means they are a complete Redis backend.",
        local="always false: the local target runs no HST Server.")]
    quorum: Annotated[dict[str, Any], Doc(
        "What the quorum verification proved at the last change of the nodes (`QuorumReport.to_dict()`).")]
    bearerTokenSecretArn: Annotated[str, Doc(
        "The Secrets Manager secret holding the bootstrap bearer tokens.",
        local="empty: the tokens are in a 0600 local store (`bearerTokenSecretPath`).")]
    tokenVerificationKey: Annotated[str, Doc(
        "The public half of the token signing key (the access key's token_verification_key).",
        local="empty from `LocalCluster.up()`; `scripts/local_cluster.py up` fills it after minting.")]
    backupBucket: Annotated[str, Doc(
        "The S3 bucket the nodes upload RDB snapshots to (`snapshots/<time>-<node>.rdb`; README Backup and restore).",
        local="empty: `scripts/local_cluster.py backup` writes snapshots to a local directory.")]
    alarmTopicArn: Annotated[str, Doc(
        "The SNS topic the CloudWatch alarms notify (alarmTopicArn, or the one the program created).",
        local="empty: the local target has no alarms; `status --watch` is its live view.")]


class LocalOutputs(StackOutputs, total=False):
    """The stack outputs as the local target emits them, plus what only it has."""

    stateDir: Annotated[str, Doc("The local cluster's state directory.")]
    redisAuthSecretPath: Annotated[str, Doc("The 0600 file holding the Redis password.")]
    haproxyEndpoints: Annotated[list[str], Doc("Each node's HAProxy as host:port, node-1 first.")]
    bearerTokenSecretPath: Annotated[str, Doc(
        "The 0600 file holding the bootstrap bearer tokens (set by `scripts/local_cluster.py up`).")]


@dataclass(frozen=True)
class OutputSpec:
    name: str
    type: Any
    doc: Doc


def output_specs(kind: type = StackOutputs) -> tuple[OutputSpec, ...]:
    """The outputs of `kind` in declaration order, with their types and docs (for exports and tests)."""
    hints = get_type_hints(kind, include_extras=True)
    plain = get_type_hints(kind)
    specs = []
    for name, annotated in hints.items():
        docs = [m for m in getattr(annotated, "__metadata__", ()) if isinstance(m, Doc)]
        specs.append(OutputSpec(name, plain[name], docs[0] if docs else Doc("")))
    return tuple(specs)


def attribute_name(output: str) -> str:
    """The Python attribute that holds an output on `HstCluster` (masterName -> master_name)."""
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), output)
