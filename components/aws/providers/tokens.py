"""`SigningKey` and `BootstrapTokens`: thin dynamic-provider adapters over `bootstrap`.

`SigningKey` is registered before the nodes: its public half goes into the initial primary's
user data (HSTS registers it as the access key's token_verification_key), its private half only
into its own secret. `BootstrapTokens` is registered after `SentinelQuorum` and mints one token
per configured user id into one secret.

The private key is read inside the provider methods from the store; it is never an input or an
output, and neither is any token: the tokens live only in their secret, so the stack's state holds
where they are, never what they are.

Both secrets are named `<prefix>-<suffix>`, the suffix unique to the resource (the key's
fingerprint; random for the tokens), are created with the stack's tags, and are written into or
deleted only while they carry those tags: a secret someone else created is never adopted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components.aws.providers._common import (
    PROVIDER_VERSION,
    as_int,
    build_store,
    changed_keys,
    is_unknown,
    output_id,
    secret_failures,
    secret_ref,
)
from components.runtime import bearer_token, bootstrap
from components.runtime.bearer_token import TokenError
from components.runtime.secret_store import unique_name
from components.settings import MAX_TOKEN_LIFETIME_HOURS, TokenSettings

# --------------------------------------------------------------------------- SigningKey


class SigningKeyProvider(ResourceProvider):
    """Generates the RSA key in `create` only: never in preview (create is not called), never on
    a no-op `up` (diff says no change), never on an update. A new key means a new resource."""

    REPLACE_ON = ("key_length", "store", "secret_name_prefix")
    UPDATE_ON = ("recovery_window_days", "provider_version", "tags")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = secret_failures(news, "secret_name_prefix")
        bits = news.get("key_length")
        if not is_unknown(bits):
            try:
                bearer_token.validate_key_length(as_int(bits, -1))
            except TokenError as error:
                failures.append(CheckFailure("key_length", str(error)))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        bits = as_int(props["key_length"])
        if bits > 8192:
            pulumi.log.info(f"generating an RSA-{bits} signing key; at 16384 bits this takes minutes")
        record = bootstrap.create_signing_key(
            build_store(props["store"]), props["secret_name_prefix"], bits, tags=props.get("tags") or None
        )
        outs = {
            **props,
            "secret_arn": record.secret_id,
            "secret_name": record.secret_name,
            "public_key_pem": record.public_key_pem,
            "fingerprint": record.fingerprint,
        }
        return CreateResult(id_=record.secret_id, outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        if any(is_unknown(news.get(key)) for key in self.REPLACE_ON):
            return DiffResult(changes=None)  # not decidable in preview; `up` asks again with values
        replaces = changed_keys(olds, news, self.REPLACE_ON)
        if replaces:
            # The new key's secret has its own name, so create-before-delete is safe.
            return DiffResult(changes=True, replaces=replaces, delete_before_replace=False)
        return DiffResult(changes=bool(changed_keys(olds, news, self.UPDATE_ON)))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Only bookkeeping inputs changed: the key and its secret stay exactly as they are.
        kept = {k: olds[k] for k in ("secret_arn", "secret_name", "public_key_pem", "fingerprint")}
        return UpdateResult(outs={**news, **kept})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        _delete_own_secret(props)


def _delete_own_secret(props: dict[str, Any]) -> None:
    """Both providers' destroy: the secret they created, refused by the store if its tags are not theirs."""
    store = props["store"]
    build_store(store).delete(
        secret_ref(store, props["secret_arn"], props["secret_name"]), as_int(props.get("recovery_window_days")),
        tags=props.get("tags") or None,
    )

@dataclass
class SigningKeyArgs:
    key_length: int
    store: pulumi.Input[Mapping[str, Any]]  # _common.aws_store(region) or local_store(root)
    secret_name_prefix: str  # the secret is <prefix>-<first 12 hex of the key's fingerprint>
    recovery_window_days: int = 7
    tags: Mapping[str, str] = field(default_factory=dict)


class SigningKey(Resource, module="hstha", name="SigningKey"):
    """The RSA key pair that signs bootstrap bearer tokens; the private half lives only in its secret."""

    public_key_pem: pulumi.Output[str]
    """PEM SubjectPublicKeyInfo: the access key's token_verification_key (not secret)."""
    secret_arn: pulumi.Output[str]
    """The secret holding the private key (its ARN on AWS; its name in a local store)."""
    secret_name: pulumi.Output[str]
    fingerprint: pulumi.Output[str]

    def __init__(self, name: str, args: SigningKeyArgs, opts: pulumi.ResourceOptions | None = None):
        props = {
            "key_length": args.key_length,
            "store": args.store,
            "secret_name_prefix": args.secret_name_prefix,
            "recovery_window_days": args.recovery_window_days,
            "tags": dict(args.tags),
            "provider_version": PROVIDER_VERSION,
            # Declared so that they surface as attributes (pulumi/pulumi#6678).
            "public_key_pem": None,
            "secret_arn": None,
            "secret_name": None,
            "fingerprint": None,
        }
        super().__init__(SigningKeyProvider(), name, props, opts)


# --------------------------------------------------------------------------- BootstrapTokens

_TOKEN_INPUTS = ("access_key_id", "user_ids", "group_ids", "scope_role", "expires_at", "lifetime_hours")
# bearer_token names problems by asnodeadmin option; check() reports them against our inputs.
_OPTION_INPUTS = {
    "--access-key": "access_key_id", "--user-id": "user_ids", "--group-ids": "group_ids",
    "--scope-role": "scope_role", "--expires-at": "expires_at",
}


def _token_settings(props: Mapping[str, Any]) -> TokenSettings:
    return TokenSettings(
        access_key_id=str(props.get("access_key_id") or ""),
        user_ids=tuple(props.get("user_ids") or ()),
        group_ids=tuple(props.get("group_ids") or ()),
        scope_role=str(props.get("scope_role") or "user"),
        expires_at=props.get("expires_at") or None,
        key_length=as_int(props.get("key_length"), bearer_token.MAX_KEY_LENGTH),  # sizes the document only
        lifetime_hours=as_int(props.get("lifetime_hours"), 1),
    )


def _outputs(
    props: Mapping[str, Any], secret_arn: str, secret_name: str, result: bootstrap.BootstrapResult,
) -> dict[str, Any]:
    # No token here: outputs are kept in the stack's state, which more people and tools can read
    # than the secret (a preview credential, `pulumi stack export`).
    return {
        **props,
        "secret_arn": secret_arn,
        "secret_name": secret_name,
        "token_expires_at": result.expires_at,
        "token_issued_at": result.issued_at,
        "token_verification_key": result.document["token_verification_key"],
        "digest": result.digest,
    }


def _token_limits(settings: TokenSettings) -> list[CheckFailure]:
    """The settings' own limits, judged again here for a caller that bypassed parse_settings."""
    failures = []
    if not 1 <= settings.lifetime_hours <= MAX_TOKEN_LIFETIME_HOURS:
        failures.append(CheckFailure(
            "lifetime_hours", f"{settings.lifetime_hours}: must be from 1 to {MAX_TOKEN_LIFETIME_HOURS} hours"))
    size = bootstrap.token_document_bound(settings)
    if size > bootstrap.MAX_DOCUMENT_BYTES:
        failures.append(CheckFailure(
            "user_ids", f"{len(settings.user_ids)} user ids: their tokens may need {size} bytes, "
                        f"over Secrets Manager's {bootstrap.MAX_DOCUMENT_BYTES}-byte limit; list fewer"))
    return failures


class BootstrapTokensProvider(ResourceProvider):
    """Mints in create/update only, and update only when diff found a reason: changed inputs, a
    new signing key, or an expired token."""

    REPLACE_ON = ("store", "secret_name_prefix")
    UPDATE_ON = (*_TOKEN_INPUTS, "signing_key_secret_id", "recovery_window_days", "provider_version", "tags")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = secret_failures(news, "secret_name_prefix")
        if not any(is_unknown(news.get(key)) for key in _TOKEN_INPUTS):
            users = news.get("user_ids") or []
            if not users:
                failures.append(CheckFailure("user_ids", "must list at least one user id"))
            settings = _token_settings(news)
            problems: list[str] = []
            for request in bootstrap.token_requests(settings):
                try:
                    request.validate(bootstrap.utcnow())
                except TokenError as error:
                    problems.extend(p for p in error.problems if p not in problems)
            failures.extend(CheckFailure(_OPTION_INPUTS.get(p.split(" ", 1)[0], "user_ids"), p) for p in problems)
            failures.extend(_token_limits(settings))
        return CheckResult(news, failures)

    def _mint(self, props: Mapping[str, Any], secret_name: str, always_store: bool) -> bootstrap.BootstrapResult:
        store = build_store(props["store"])
        # Read inside the method, from the store: the private key never crosses the engine.
        private_pem = store.get(secret_ref(props["store"], str(props["signing_key_secret_id"])))
        return bootstrap.mint_bootstrap_tokens(
            _token_settings(props), store, private_pem, now=bootstrap.utcnow(),
            secret_name=secret_name, tags=props.get("tags") or None, always_store=always_store,
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        secret_name = unique_name(str(props["secret_name_prefix"]))
        result = self._mint(props, secret_name, always_store=True)
        assert result.ref is not None  # always_store
        secret_arn = output_id(props["store"], result.ref)
        return CreateResult(id_=secret_arn, outs=_outputs(props, secret_arn, secret_name, result))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        if any(is_unknown(news.get(key)) for key in self.REPLACE_ON):
            return DiffResult(changes=None)
        replaces = changed_keys(olds, news, self.REPLACE_ON)
        if replaces:
            # The secret moves: the old one is deleted after the new one exists.
            return DiffResult(changes=True, replaces=replaces, delete_before_replace=False)
        if changed_keys(olds, news, self.UPDATE_ON):
            return DiffResult(changes=True)
        return DiffResult(changes=bool(bootstrap.expired_users(olds.get("token_expires_at") or {}, bootstrap.utcnow())))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        secret_name = str(olds["secret_name"])
        result = self._mint(news, secret_name, always_store=False)
        # No ref: nothing to store, the secret already holds these tokens.
        secret_arn = output_id(news["store"], result.ref) if result.ref is not None else olds["secret_arn"]
        return UpdateResult(outs=_outputs(news, secret_arn, secret_name, result))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        _delete_own_secret(props)


@dataclass
class BootstrapTokensArgs:
    signing_key_secret_id: pulumi.Input[str]  # SigningKey.secret_arn
    store: pulumi.Input[Mapping[str, Any]]
    secret_name_prefix: str  # the secret is <prefix>-<12 random hex>, chosen at create
    tokens: TokenSettings
    recovery_window_days: int = 7
    tags: Mapping[str, str] = field(default_factory=dict)


class BootstrapTokens(Resource, module="hstha", name="BootstrapTokens"):
    """One secret holding a bearer token per configured user id, the access key id and the verification key."""

    secret_arn: pulumi.Output[str]
    secret_name: pulumi.Output[str]
    token_expires_at: pulumi.Output[dict[str, str]]
    token_issued_at: pulumi.Output[dict[str, str]]
    token_verification_key: pulumi.Output[str]
    digest: pulumi.Output[str]
    """SHA-256 of the stored document: changes whenever a token does, reveals none."""

    def __init__(self, name: str, args: BootstrapTokensArgs, opts: pulumi.ResourceOptions | None = None):
        settings = args.tokens
        props = {
            "signing_key_secret_id": args.signing_key_secret_id,
            "store": args.store,
            "secret_name_prefix": args.secret_name_prefix,
            "access_key_id": settings.access_key_id,
            "user_ids": list(settings.user_ids),
            "group_ids": list(settings.group_ids),
            "scope_role": settings.scope_role,
            "expires_at": settings.expires_at or "",
            "lifetime_hours": settings.lifetime_hours,
            "key_length": settings.key_length,
            "recovery_window_days": args.recovery_window_days,
            "tags": dict(args.tags),
            "provider_version": PROVIDER_VERSION,
            "secret_arn": None,
            "secret_name": None,
            "token_expires_at": None,
            "token_issued_at": None,
            "token_verification_key": None,
            "digest": None,
        }
        super().__init__(BootstrapTokensProvider(), name, props, opts)


__all__ = [
    "BootstrapTokens",
    "BootstrapTokensArgs",
    "BootstrapTokensProvider",
    "SigningKey",
    "SigningKeyArgs",
    "SigningKeyProvider",
]
