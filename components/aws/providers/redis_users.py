"""`RedisUsersSecret`: the Redis users' passwords, generated and stored inside the provider.

A thin dynamic-provider adapter over `components.runtime.users_secret`. The passwords are made in
`create` (and, for a role added to components/bundle/users.py, in `update`) and written straight
into Secrets Manager; they are never inputs or outputs, so the stack's state, a preview and
`pulumi stack export --show-secrets` hold where the secret is (ARN, name, version id) and which
roles it has, nothing that decrypts to a password.

What each `pulumi` command does:
- `up` with the same roles: diff finds no change; nothing is read or written.
- `up` after a role is added to (removed from) users.py: update reads the current version, adds a
  fresh password for that role only (drops the removed one) and keeps every other password,
  rotated ones included. Nodes read the secret once, at first boot: a node that needs the new
  role's password gets it with its next replacement (its user data changes with the code).
- `refresh`: read records the roles the secret really holds, so the next `up` restores a role
  someone removed by hand.
- `destroy`: deletes the secret, with `secretRecoveryWindowDays`, only while it carries the tags it
  was created with; a secret someone else made is never adopted, written into or deleted.
- A changed stack name, project or tags keeps the secret (its name and tags are fixed at create);
  only moving it to another region or store replaces it, which means new passwords and new nodes.
- Rotation (components/runtime/rotation.py, `local_cluster.py rotate-password`, the README
  runbook) writes new versions of this same secret; the provider never reverts or regenerates a
  password, and `version_id` is the version it last wrote itself.
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
from components.runtime import users_secret
from components.runtime.secret_store import SecretRef

__all__ = ["RedisUsersSecret", "RedisUsersSecretArgs", "RedisUsersSecretProvider"]


def _secret(props: Mapping[str, Any]) -> SecretRef:
    return secret_ref(props["store"], str(props["secret_arn"]), str(props["secret_name"]))


class RedisUsersSecretProvider(ResourceProvider):
    """Generates passwords only in create, and in update for roles the secret does not hold yet."""

    REPLACE_ON = ("store",)
    UPDATE_ON = ("roles", "recovery_window_days", "provider_version")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = secret_failures(news, "secret_name_prefix")
        roles = news.get("roles")
        if not is_unknown(roles):
            failures += [CheckFailure("roles", p) for p in users_secret.role_problems(list(roles or ()))]
        return CheckResult(news, failures + tag_failures(news, "the secret"))

    def create(self, props: dict[str, Any]) -> CreateResult:
        record = users_secret.create(
            build_store(props["store"]), str(props["secret_name_prefix"]), sorted_members(props["roles"]),
            dict(props["tags"]),
        )
        secret_arn = output_id(props["store"], record.ref)
        outs = {
            **props, "roles": list(record.roles), "secret_arn": secret_arn, "secret_name": record.name,
            "version_id": record.ref.version_id, "secret_tags": dict(props["tags"]),
        }
        return CreateResult(id_=secret_arn, outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return member_diff(olds, news, self.REPLACE_ON, self.UPDATE_ON, "roles")

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        kept = {k: olds[k] for k in ("secret_arn", "secret_name", "version_id")}
        tags = owner_tags(olds)
        roles = sorted_members(news["roles"])
        if roles != sorted_members(olds.get("roles")):
            record = users_secret.sync_roles(build_store(olds["store"]), _secret(olds), roles, tags)
            kept["version_id"] = record.ref.version_id or kept["version_id"]
        return UpdateResult(outs={**news, "roles": roles, "secret_tags": tags, **kept})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        roles = users_secret.stored_roles(build_store(props["store"]), _secret(props))
        return ReadResult(id_, {**props, "roles": list(roles)})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        users_secret.delete(
            build_store(props["store"]), _secret(props), as_int(props.get("recovery_window_days")), owner_tags(props),
        )


@dataclass
class RedisUsersSecretArgs:
    store: pulumi.Input[Mapping[str, Any]]  # _common.aws_store(region) or local_store(root)
    secret_name_prefix: str  # the secret is <prefix>-<12 random hex>, chosen at create
    roles: Sequence[str]  # components.bundle.users.ROLE_KEYS
    tags: Mapping[str, str]  # the stack's; the secret is written into and deleted only while it carries them
    recovery_window_days: int = 7


class RedisUsersSecret(Resource, module="hstha", name="RedisUsersSecret"):
    """One secret, a JSON object with a password per Redis role; the passwords exist only in the secret."""

    secret_arn: pulumi.Output[str]
    """The secret's ARN on AWS (its name in a local store): what the node role may read."""
    secret_name: pulumi.Output[str]
    version_id: pulumi.Output[str]
    """The version this provider last wrote (a rotation writes later ones)."""
    roles: pulumi.Output[list[str]]
    """The roles the secret holds a password for, sorted."""

    def __init__(self, name: str, args: RedisUsersSecretArgs, opts: pulumi.ResourceOptions | None = None):
        props = {
            "store": args.store,
            "secret_name_prefix": args.secret_name_prefix,
            "roles": sorted(args.roles),
            "tags": dict(args.tags),
            "recovery_window_days": args.recovery_window_days,
            "provider_version": PROVIDER_VERSION,
            # Declared so that they surface as attributes (pulumi/pulumi#6678).
            "secret_arn": None,
            "secret_name": None,
            "version_id": None,
            "secret_tags": None,
        }
        super().__init__(RedisUsersSecretProvider(), name, props, opts)
