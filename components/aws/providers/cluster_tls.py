"""`ClusterTls`: the cluster's private CA and its nodes' certificates (`tlsEnabled`), made and stored
inside the provider.

A thin dynamic-provider adapter over `components.runtime.tls_secret`. The CA's key and the nodes'
keys are generated in `create` (and, for an address added, in `update`) and written straight into
Secrets Manager; they are never inputs or outputs, so the stack's state, a preview and
`pulumi stack export --show-secrets` hold where the two secrets are (ARNs, names, version ids) and
which addresses have a certificate, no PEM text and no key.

What each `pulumi` command does:
- `up` with the same addresses: diff finds no change; nothing is read or written.
- `up` after a grow (nodeCount 3 -> 5): update loads the CA from its secret and signs the new
  addresses only; the existing nodes' certificates and keys stay byte for byte, and the nodes'
  secret keeps its ARN, so no existing node's user data changes. A shrink drops the removed
  addresses' entries.
- `refresh`: read records the addresses the nodes' secret really holds a valid certificate for, so
  the next `up` signs again one someone removed or spoiled by hand.
- `destroy`: deletes both secrets, with `secretRecoveryWindowDays`, only while they carry the tags
  they were created with; a secret someone else made is never adopted, written into or deleted.
- A changed stack name, project or tags keeps the secrets (names and tags are fixed at create);
  only moving them to another region or store replaces them: a new CA, which means new nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from components.aws.providers._common import (
    PROVIDER_VERSION,
    as_int,
    build_store,
    is_unknown,
    member_diff,
    output_id,
    owner_tags,
    secret_failures,
    secret_ref,
    sorted_members,
    tag_failures,
)
from components.runtime import tls_secret

__all__ = ["ClusterTls", "ClusterTlsArgs", "ClusterTlsProvider"]

_KEPT = ("secret_arn", "secret_name", "version_id", "ca_secret_arn", "ca_secret_name")


def _secrets(props: Mapping[str, Any]) -> tls_secret.TlsSecrets:
    store = props["store"]
    return tls_secret.TlsSecrets(
        nodes=secret_ref(store, str(props["secret_arn"]), str(props["secret_name"])),
        ca=secret_ref(store, str(props["ca_secret_arn"]), str(props["ca_secret_name"])),
        addresses=tuple(sorted_members(props.get("addresses"))),
    )


class ClusterTlsProvider(ResourceProvider):
    """Makes a key only in create, and in update for an address without a certificate yet."""

    REPLACE_ON = ("store",)
    UPDATE_ON = ("addresses", "recovery_window_days", "provider_version")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = secret_failures(news, "secret_name_prefix")
        ca_prefix = news.get("ca_secret_name_prefix")
        failures += [f for f in secret_failures({"ca_secret_name_prefix": ca_prefix}, "ca_secret_name_prefix")
                     if f.property == "ca_secret_name_prefix"]
        if not is_unknown(ca_prefix) and ca_prefix == news.get("secret_name_prefix"):
            failures.append(CheckFailure("ca_secret_name_prefix", "must differ from secret_name_prefix"))
        addresses = news.get("addresses")
        if not is_unknown(addresses):
            failures += [CheckFailure("addresses", p) for p in tls_secret.address_problems(list(addresses or ()))]
        return CheckResult(news, failures + tag_failures(news, "the secrets"))

    def create(self, props: dict[str, Any]) -> CreateResult:
        made = tls_secret.create(
            build_store(props["store"]), str(props["secret_name_prefix"]), str(props["ca_secret_name_prefix"]),
            sorted_members(props["addresses"]), dict(props["tags"]),
        )
        secret_arn = output_id(props["store"], made.nodes)
        outs = {
            **props, "addresses": sorted_members(made.addresses),
            "secret_arn": secret_arn, "secret_name": made.nodes.name, "version_id": made.nodes.version_id,
            "ca_secret_arn": output_id(props["store"], made.ca), "ca_secret_name": made.ca.name,
            "secret_tags": dict(props["tags"]),
        }
        return CreateResult(id_=secret_arn, outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return member_diff(olds, news, self.REPLACE_ON, self.UPDATE_ON, "addresses")

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        kept = {k: olds[k] for k in _KEPT}
        tags = owner_tags(olds)
        addresses = sorted_members(news["addresses"])
        if addresses != sorted_members(olds.get("addresses")):
            synced = tls_secret.sync_addresses(build_store(olds["store"]), _secrets(olds), addresses, tags)
            kept["version_id"] = synced.nodes.version_id or kept["version_id"]
        return UpdateResult(outs={**news, "addresses": addresses, "secret_tags": tags, **kept})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        held = tls_secret.stored_addresses(build_store(props["store"]), _secrets(props).nodes)
        return ReadResult(id_, {**props, "addresses": list(held)})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        tls_secret.delete(
            build_store(props["store"]), _secrets(props), as_int(props.get("recovery_window_days")), owner_tags(props),
        )


@dataclass
class ClusterTlsArgs:
    store: pulumi.Input[Mapping[str, Any]]  # _common.aws_store(region) or local_store(root)
    secret_name_prefix: str  # the nodes' secret is <prefix>-<12 random hex>, chosen at create
    ca_secret_name_prefix: str  # the CA secret likewise
    addresses: Sequence[str]  # every node's private address: one certificate each
    tags: Mapping[str, str]  # the stack's; the secrets are written into and deleted only while they carry them
    recovery_window_days: int = 7


class ClusterTls(Resource, module="hstha", name="ClusterTls"):
    """The cluster CA (its key in a deployer-only secret) and a certificate per node (in the nodes' secret)."""

    secret_arn: pulumi.Output[str]
    """The nodes' secret's ARN on AWS (its name in a local store): what the node role may read."""
    secret_name: pulumi.Output[str]
    version_id: pulumi.Output[str]
    """The nodes' secret's version this provider last wrote."""
    ca_secret_arn: pulumi.Output[str]
    """The CA secret's ARN: the deployer's alone; no node role may read it."""
    ca_secret_name: pulumi.Output[str]
    addresses: pulumi.Output[list[str]]
    """The addresses holding a certificate, sorted."""

    def __init__(self, name: str, args: ClusterTlsArgs, opts: pulumi.ResourceOptions | None = None):
        props = {
            "store": args.store,
            "secret_name_prefix": args.secret_name_prefix,
            "ca_secret_name_prefix": args.ca_secret_name_prefix,
            "addresses": sorted(args.addresses),
            "tags": dict(args.tags),
            "recovery_window_days": args.recovery_window_days,
            "provider_version": PROVIDER_VERSION,
            # Declared so that they surface as attributes (pulumi/pulumi#6678).
            "secret_arn": None,
            "secret_name": None,
            "version_id": None,
            "ca_secret_arn": None,
            "ca_secret_name": None,
            "secret_tags": None,
        }
        super().__init__(ClusterTlsProvider(), name, props, opts)
