"""What the dynamic providers share: unknown-value handling, store specs, diff helpers.

Rules every provider here follows, because of how Pulumi runs dynamic providers:
- nothing is built at import time or kept on the provider object: the object is pickled (dill)
  into every resource's state, so clients (boto3, redis) are built inside each method;
- during preview, inputs that depend on resources not yet created arrive in check/diff as
  `pulumi.output.Unknown` objects (the wire's `rpc.UNKNOWN` string, deserialized with
  keep_unknowns); they must be tolerated and never treated as values;
- numbers arrive as floats (protobuf Struct), None-valued inputs do not arrive at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from pulumi.dynamic import CheckFailure, DiffResult
from pulumi.output import Unknown
from pulumi.runtime import rpc

from components.runtime.secret_store import (
    LocalSecretStore,
    SecretRef,
    SecretsManagerStore,
    SecretStoreError,
    validate_recovery_window,
)
from components.runtime.ssm_apply import NodeApply

# Bumped when a provider's behaviour changes in a way existing resources should pick up on the
# next `up`: Pulumi does not notice changed provider code by itself (pulumi/pulumi#6490).
PROVIDER_VERSION = "1"

UNKNOWN = rpc.UNKNOWN


class StoreSpec(TypedDict, total=False):
    """Where a provider keeps its secrets: `{"kind": "aws", "region": ...}` or `{"kind": "local", "root": ...}`."""

    kind: str
    region: str
    root: str


def aws_store(region: Any) -> dict[str, Any]:
    return {"kind": "aws", "region": region}


def local_store(root: str) -> dict[str, Any]:
    return {"kind": "local", "root": root}


def is_unknown(value: Any) -> bool:
    """True when the value, or anything inside it, is not known yet (preview)."""
    if isinstance(value, Unknown):
        return True
    if isinstance(value, str):
        return value == UNKNOWN
    if isinstance(value, Mapping):
        return any(is_unknown(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(is_unknown(v) for v in value)
    return False


def store_problems(spec: Any) -> list[str]:
    if is_unknown(spec):
        return []
    if not isinstance(spec, Mapping):
        return ["must be {kind: aws, region} or {kind: local, root}"]
    kind = spec.get("kind")
    if kind == "aws":
        return [] if spec.get("region") else ["kind aws needs a region"]
    if kind == "local":
        return [] if spec.get("root") else ["kind local needs a root directory"]
    return [f"kind {kind!r}: must be aws or local"]


def build_store(spec: Mapping[str, Any]) -> SecretsManagerStore | LocalSecretStore:
    """A fresh store (and boto3 client) for this call only; never kept between calls."""
    problems = store_problems(spec)
    if problems:
        raise ValueError(f"secret store: {problems[0]}")
    if spec["kind"] == "aws":
        return SecretsManagerStore(region=str(spec["region"]))
    return LocalSecretStore(str(spec["root"]))


def output_id(store: Mapping[str, Any], ref: SecretRef) -> str:
    """What `secret_arn` outputs hold: the ARN on AWS, the name in a local store (its ref is a file path)."""
    return ref.arn if store.get("kind") == "aws" else ref.name


def secret_ref(store: Mapping[str, Any], secret_id: str, secret_name: str = "") -> SecretRef:
    """A ref both stores read: Secrets Manager by ARN (that very secret, not a later one re-created
    under the same name), the local store by name."""
    if store.get("kind") == "aws":
        return SecretRef(arn=secret_id, version_id="", name=secret_name or secret_id)
    return SecretRef(arn="", version_id="", name=secret_name or secret_id)


_NAME_PREFIX = re.compile(r"[A-Za-z0-9/_+=.@-]{1,480}")  # Secrets Manager's alphabet, room for a suffix


def _recovery_problem(value: Any) -> str | None:
    if is_unknown(value):
        return None
    try:
        validate_recovery_window(as_int(value, -1))  # the stores' own rule, judged before any create
    except SecretStoreError as error:
        return str(error)
    return None


def secret_failures(news: Mapping[str, Any], name_key: str) -> list[CheckFailure]:
    """What every secret-keeping provider's check refuses: a bad store, recovery window or name prefix."""
    failures = [CheckFailure("store", p) for p in store_problems(news.get("store"))]
    problem = _recovery_problem(news.get("recovery_window_days"))
    if problem:
        failures.append(CheckFailure("recovery_window_days", problem))
    name = news.get(name_key)
    if not is_unknown(name) and not (isinstance(name, str) and _NAME_PREFIX.fullmatch(name)):
        failures.append(CheckFailure(name_key, f"{name!r}: must be 1-480 characters of letters, digits and /_+=.@-"))
    return failures


def as_int(value: Any, default: int = 0) -> int:
    """Numbers cross the provider boundary as floats."""
    if value is None or is_unknown(value):
        return default
    return int(value)


def normalized(value: Any) -> Any:
    """Compare inputs the way they cross the wire: floats that are whole numbers are ints, tuples are lists."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: normalized(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalized(v) for v in value]
    return value


def changed_keys(olds: Mapping[str, Any], news: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """The keys whose new value differs from the old one, or is not known yet (preview)."""
    return [
        key for key in keys
        if is_unknown(news.get(key)) or normalized(olds.get(key)) != normalized(news.get(key))
    ]


def without_unknowns(props: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if not is_unknown(v)}


# --- generated secrets that hold one entry per member (RedisUsersSecret: roles; ClusterTls: addresses)


def sorted_members(value: Any) -> list[str]:
    """A set-valued input in one order, so that a reordering is no change."""
    return sorted(str(v) for v in value or ())


def owner_tags(props: Mapping[str, Any]) -> dict[str, str]:
    # The tags the secret was created with: a later change of the stack's tags does not retag it.
    return dict(props.get("secret_tags") or props.get("tags") or {})


def tag_failures(news: Mapping[str, Any], what: str) -> list[CheckFailure]:
    tags = news.get("tags")
    if not is_unknown(tags) and not tags:
        return [CheckFailure("tags", f"must name the stack's tags: they are what proves {what} ours")]
    return []


def member_diff(olds: Mapping[str, Any], news: Mapping[str, Any], replace_on: Iterable[str],
                update_on: Iterable[str], members: str) -> DiffResult:
    """Replace when the store moves; update when the members (compared as sets) or a setting change."""
    if is_unknown(news.get("store")):
        return DiffResult(changes=None)  # not decidable in preview; `up` asks again with values
    replaces = changed_keys(olds, news, replace_on)
    if replaces:
        # The new secret has its own name: create it, then delete the old one.
        return DiffResult(changes=True, replaces=replaces, delete_before_replace=False)
    given = news.get(members)
    olds = {**olds, members: sorted_members(olds.get(members))}
    news = {**news, members: given if is_unknown(given) else sorted_members(given)}
    return DiffResult(changes=bool(changed_keys(olds, news, update_on)))


def node_failures(news: Mapping[str, Any]) -> list[CheckFailure]:
    """The nodes' instance ids and addresses, in node order, must pair up (those already known)."""
    counts = {k: len(news.get(k) or ()) for k in ("instance_ids", "addresses") if not is_unknown(news.get(k))}
    if len(set(counts.values())) > 1:
        return [CheckFailure("instance_ids", f"one instance id and address per node: got {counts}")]
    return []


def ssm_nodes(props: Mapping[str, Any]) -> list[NodeApply]:
    """The nodes SSM Run Command reaches: each instance id with its address, in node order."""
    return [NodeApply(str(i), str(a)) for i, a in zip(props["instance_ids"], props["addresses"], strict=True)]
