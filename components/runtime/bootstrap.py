"""The signing key and the bootstrap bearer tokens, kept in a secret store.

This is the logic behind the `SigningKey` and `BootstrapTokens` dynamic providers, and what the
local target calls after its `up`: one implementation, so a token minted locally and one minted
by `pulumi up` are judged, reused and re-minted by the same rules.

Pure module: no Pulumi import, no client built at import time (the providers are pickled into
Pulumi state; a store is built inside each provider method and passed in here).

The stored document (one secret) is::

    {"access_key_id": "...", "token_verification_key": "<public key PEM>",
     "tokens": {"<user id>": {"token": "...", "expires_at": "...Z", "issued_at": "...Z"}}}

Nothing raised here carries a private key or a token: messages end up in `pulumi up` output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

from cryptography.hazmat.primitives import serialization

from components.runtime import bearer_token
from components.runtime.bearer_token import TokenError, TokenRequest
from components.runtime.secret_store import SecretRef, SecretStoreError

if TYPE_CHECKING:  # settings imports this module for the document bound; types only here
    from components.settings import ClusterSettings, TokenSettings

__all__ = [
    "BEARER_TOKENS_SECRET",
    "BootstrapResult",
    "MAX_DOCUMENT_BYTES",
    "SIGNING_KEY_SECRET",
    "SecretStore",
    "SigningKeyRecord",
    "create_signing_key",
    "ensure_signing_key",
    "expired_users",
    "local_bootstrap_tokens",
    "mint_bootstrap_tokens",
    "token_document_bound",
    "token_requests",
    "utcnow",
]

# Secret names used by the local target (the AWS program prefixes them with the stack name).
SIGNING_KEY_SECRET = "token-signing-key"
BEARER_TOKENS_SECRET = "bearer-tokens"
# Secrets Manager's limit for one SecretString; the whole token document must fit in it.
MAX_DOCUMENT_BYTES = 65536

_SIGNING_KEY_DESCRIPTION = (
    "hst-ha: private RSA key that signs the bootstrap Node API bearer tokens. HSTS holds the public half "
    "as the access key's token_verification_key; the nodes never read this secret."
)
_TOKENS_DESCRIPTION = (
    "hst-ha: bootstrap Node API bearer tokens, their access key id and verification (public) key"
)


class SecretStore(Protocol):
    """What `components.runtime.secret_store` offers: `SecretsManagerStore` and `LocalSecretStore` alike."""

    def put(self, name: str, value: str, description: str = "", tags: Mapping[str, str] | None = None) -> SecretRef: ...

    def get(self, ref_or_name: SecretRef | str) -> str: ...

    def delete(
        self, ref_or_name: SecretRef | str, recovery_window_days: int, tags: Mapping[str, str] | None = None
    ) -> None: ...


def utcnow() -> datetime:
    """The clock every expiry decision reads; tests replace it to move time forward."""
    return datetime.now(UTC)


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_utc(text: str) -> datetime:
    # Only our own stored stamps and token expiries come here: both end in Z (3.11 parses it).
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- signing key


@dataclass(frozen=True)
class SigningKeyRecord:
    """Where the private key is stored, and its public half (not secret: it goes into user data)."""

    secret_name: str
    secret_id: str  # what to read it back with: the ARN on AWS, the name in a local store
    public_key_pem: str
    key_length: int

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.public_key_pem)


def secret_id(ref: SecretRef) -> str:
    """How to read a stored secret back: by ARN on AWS (it pins that very secret, not a later one
    re-created under the same name), by name in a local store (its ref is a file path)."""
    return ref.arn if ref.arn.startswith("arn:") else ref.name


def public_key_fingerprint(public_key_pem: str) -> str:
    """SHA-256 of the DER public key: names the key without revealing anything."""
    key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def create_signing_key(
    store: SecretStore, name_prefix: str, key_length: int, tags: Mapping[str, str] | None = None
) -> SigningKeyRecord:
    """Generate a new key (slow at 8192+ bits) and store it under `<name_prefix>-<fingerprint[:12]>`.

    Each key gets its own secret name, so a replacement key is created beside the old one and
    the old one is deleted afterwards (Pulumi's create-before-delete), and a name still scheduled
    for deletion by an earlier destroy is never reused.
    """
    bits = bearer_token.validate_key_length(key_length)
    key = bearer_token.generate_signing_key(bits)
    public = bearer_token.public_key_pem(key)
    name = f"{name_prefix}-{public_key_fingerprint(public)[:12]}"
    ref = store.put(
        name, bearer_token.private_key_pem(key),
        description=f"{_SIGNING_KEY_DESCRIPTION} RSA-{bits}.", tags=tags,
    )
    return SigningKeyRecord(secret_name=name, secret_id=secret_id(ref), public_key_pem=public, key_length=bits)


def ensure_signing_key(
    store: SecretStore, key_length: int, name: str = SIGNING_KEY_SECRET,
) -> tuple[str, SigningKeyRecord]:
    """The local target's key: reuse the stored one while its length is the configured one.

    Returns (private key PEM, record). A changed `tokenKeyLength` makes a new key, exactly as it
    replaces the `SigningKey` resource on AWS.
    """
    bits = bearer_token.validate_key_length(key_length)
    try:
        private_pem = store.get(name)
        key = bearer_token.load_private_key_pem(private_pem)
    except (SecretStoreError, TokenError):
        key = None  # missing or unusable: make a new one
    if key is None or key.key_size != bits:
        key = bearer_token.generate_signing_key(bits)
        private_pem = bearer_token.private_key_pem(key)
        store.put(name, private_pem, description=f"{_SIGNING_KEY_DESCRIPTION} RSA-{bits}.")
    record = SigningKeyRecord(
        secret_name=name, secret_id=name, public_key_pem=bearer_token.public_key_pem(key), key_length=bits
    )
    return private_pem, record


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class BootstrapResult:
    """The outcome of one minting pass. `document` holds the tokens: treat it as a secret."""

    secret_name: str
    ref: SecretRef | None  # None: the stored document already held exactly these tokens
    document: dict[str, Any]
    minted: tuple[str, ...]  # user ids given a new token in this pass
    reused: tuple[str, ...]  # user ids whose stored token was still good

    @property
    def expires_at(self) -> dict[str, str]:
        return {user: entry["expires_at"] for user, entry in self.document["tokens"].items()}

    @property
    def issued_at(self) -> dict[str, str]:
        return {user: entry["issued_at"] for user, entry in self.document["tokens"].items()}

    @property
    def tokens(self) -> dict[str, str]:
        return {user: entry["token"] for user, entry in self.document["tokens"].items()}

    @property
    def digest(self) -> str:
        """Changes whenever any token does; lets a consumer notice new tokens without reading them."""
        return document_digest(self.document)

    def __repr__(self) -> str:  # the default repr would print every token
        return (
            f"BootstrapResult(secret_name={self.secret_name!r}, minted={self.minted!r}, "
            f"reused={self.reused!r}, digest={self.digest[:12]!r})"
        )


def document_digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _token_bound(payload_bytes: int, bits: int) -> int:
    """Largest token text for a payload of this size: the container (payload, delimiter, base64
    signature in 60-column lines), zlib at its worst (stored blocks), then base64."""
    signature = 4 * _ceil_div(_ceil_div(bits, 8), 3)
    container = payload_bytes + len(bearer_token.SIGNATURE_DELIMITER) + signature + signature // 60 + 4
    compressed = container + 5 * (container // 16000 + 1) + 6
    return 4 * _ceil_div(compressed, 3)


def token_document_bound(tokens: TokenSettings) -> int:
    """An upper bound, in bytes, of the stored document for these settings, computed without a
    key (so settings are judged at preview): `tokenUserIds` may list only as many ids as fit."""
    bits = tokens.key_length
    der = _ceil_div(bits, 8) + 64  # SubjectPublicKeyInfo: modulus, exponent and framing
    pem = 4 * _ceil_div(der, 3)
    pem_json = pem + 2 * (pem // 64 + 3) + 60  # newlines written as \n, BEGIN/END lines
    total = 200 + len(json.dumps(tokens.access_key_id)) + pem_json
    for user in tokens.user_ids:
        payload = {
            "user_id": user, "group_ids": list(tokens.group_ids),
            "scope": f"node.{tokens.access_key_id}:{tokens.scope_role}:all",
            "auth_type": bearer_token.AUTH_TYPE, "expires_at": "2030-01-01T00:00:00.000Z",
        }
        payload_bytes = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        # Entry framing with indent=1: the user id key, "token", "expires_at", "issued_at".
        total += len(json.dumps(user)) + _token_bound(payload_bytes, bits) + 160
    return total


def token_requests(tokens: TokenSettings) -> list[TokenRequest]:
    """One request per configured user id, each carrying every configured group id."""
    return [
        TokenRequest(
            access_key=tokens.access_key_id, user_id=user_id, group_ids=tuple(tokens.group_ids),
            scope_role=tokens.scope_role, expires_at=tokens.expires_at,
        )
        for user_id in tokens.user_ids
    ]


def _reusable(entry: Any, request: TokenRequest, lifetime: timedelta, public_pem: str, now: datetime) -> bool:
    """A stored token is kept until it expires, as long as it is exactly what would be minted now
    (same user, groups, role, access key, and expiry or lifetime) and signed by the current key.
    The token itself says what it grants, so a changed input is noticed without any bookkeeping
    beside it. Re-minting only on expiry keeps an `up` within a token's lifetime a no-op."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("token", "issued_at")):
        return False
    try:
        payload = bearer_token.verify(entry["token"], public_pem, now)  # signature by this key, not expired
        issued_at = _parse_utc(entry["issued_at"])
        expires_at = _parse_utc(str(payload["expires_at"]))
    except (TokenError, ValueError, KeyError):
        return False
    wanted = {
        "user_id": request.user_id,
        "group_ids": list(request.group_ids),
        "scope": request.scope,
        "auth_type": bearer_token.AUTH_TYPE,
    }
    found = {key: payload.get(key, [] if key == "group_ids" else None) for key in wanted}
    if found != wanted:
        return False
    if request.expires_at is not None:
        return bool(payload["expires_at"] == request.expires_at.strip())
    return expires_at - issued_at == lifetime


def _read_document(store: SecretStore, secret_name: str) -> dict[str, Any] | None:
    try:
        document = json.loads(store.get(secret_name))
    except (SecretStoreError, ValueError):
        # Missing, scheduled for deletion or corrupt: mint afresh; `put` reports a real access problem.
        return None
    return document if isinstance(document, dict) else None


def mint_bootstrap_tokens(
    settings: ClusterSettings | TokenSettings,
    store: SecretStore,
    private_key_pem: str,
    now: datetime | None = None,
    secret_name: str = BEARER_TOKENS_SECRET,
    tags: Mapping[str, str] | None = None,
    always_store: bool = False,
) -> BootstrapResult:
    """Make sure `secret_name` holds one good token per configured user id; mint only what is missing.

    A stored token is reused until it expires, while it matches the settings and verifies with the
    current key; otherwise it is minted anew. The secret gets a new version
    only when something changed (or `always_store`, when the caller needs the secret's ARN), so
    calling this after every `up` is cheap and idempotent.
    """
    tokens = cast("TokenSettings", getattr(settings, "tokens", settings))
    current = now or utcnow()
    lifetime = timedelta(hours=tokens.lifetime_hours)
    key = bearer_token.load_private_key_pem(private_key_pem)
    public_pem = bearer_token.public_key_pem(key)
    previous = _read_document(store, secret_name)
    previous_tokens = (previous or {}).get("tokens") if isinstance((previous or {}).get("tokens"), dict) else {}

    entries: dict[str, dict[str, str]] = {}
    minted: list[str] = []
    reused: list[str] = []
    for request in token_requests(tokens):
        entry = previous_tokens.get(request.user_id) if previous_tokens else None
        if _reusable(entry, request, lifetime, public_pem, current):
            entries[request.user_id] = dict(entry)  # type: ignore[arg-type]
            reused.append(request.user_id)
            continue
        if request.expires_at is None:
            request = replace(request, expires_at=_utc_text(current.replace(microsecond=0) + lifetime))
        token = bearer_token.mint(request, key, current)
        entries[request.user_id] = {
            "token": token.token,
            "expires_at": str(token.payload["expires_at"]),
            "issued_at": _utc_text(token.issued_at),
        }
        minted.append(request.user_id)

    document = {"access_key_id": tokens.access_key_id, "token_verification_key": public_pem, "tokens": entries}
    ref = None
    if always_store or document != previous:
        ref = store.put(secret_name, json.dumps(document, indent=1), description=_TOKENS_DESCRIPTION, tags=tags)
    return BootstrapResult(secret_name, ref, document, tuple(minted), tuple(reused))


def expired_users(expires_at: Mapping[str, str], now: datetime | None = None) -> list[str]:
    """User ids whose recorded token has expired (for `diff`): only they make an `up` re-mint."""
    current = now or utcnow()
    due = []
    for user, expiry in expires_at.items():
        try:
            if _parse_utc(expiry) <= current:
                due.append(user)
        except (ValueError, TypeError):
            due.append(user)  # an unreadable record is re-minted rather than trusted
    return due


def local_bootstrap_tokens(
    settings: ClusterSettings, store: SecretStore, now: datetime | None = None
) -> tuple[SigningKeyRecord, BootstrapResult]:
    """The local target's whole step after `up`: the signing key (reused) and the tokens (reused or minted)."""
    private_pem, record = ensure_signing_key(store, settings.tokens.key_length)
    return record, mint_bootstrap_tokens(settings, store, private_pem, now=now)
