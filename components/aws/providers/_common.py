"""What the three dynamic providers share: unknown-value handling, store specs, diff helpers.

Rules every provider here follows, because of how Pulumi runs dynamic providers:
- nothing is built at import time or kept on the provider object: the object is pickled (dill)
  into every resource's state, so clients (boto3, redis) are built inside each method;
- during preview, inputs that depend on resources not yet created arrive in check/diff as
  `pulumi.output.Unknown` objects (the wire's `rpc.UNKNOWN` string, deserialized with
  keep_unknowns); they must be tolerated and never treated as values;
- numbers arrive as floats (protobuf Struct), None-valued inputs do not arrive at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from pulumi.output import Unknown
from pulumi.runtime import rpc

from components.runtime.secret_store import LocalSecretStore, SecretsManagerStore

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
