"""Aspera Node API bearer tokens: mint and verify them byte for byte like IBM's tools.

The wire format is the one of ``Node.bearer_token`` in IBM's aspera-cli (github.com/IBM/aspera-cli),
checked byte by byte in tests/test_bearer_token.py::

    base64( zlib( <compact JSON> "\\n==SIGNATURE==\\n" <base64 RSA-SHA512 signature, 60-column lines> "\\n" ) )

The options and defaults are those of ``asnodeadmin --bearer-create`` (role ``admin``,
lifetime 1 hour, 4096-bit key), so that errors can name the option an operator knows.

This module is pure (no Pulumi, no network) so that the Pulumi dynamic provider, the
operator CLI and the tests share one implementation.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "AUTH_TYPE",
    "DEFAULT_KEY_LENGTH",
    "DEFAULT_LIFETIME",
    "DecodedToken",
    "MintedToken",
    "SCOPE_ROLES",
    "SIGNATURE_DELIMITER",
    "TokenError",
    "TokenRequest",
    "decode",
    "generate_signing_key",
    "load_private_key_pem",
    "mint",
    "needs_reminting",
    "parse_expires_at",
    "private_key_pem",
    "public_key_pem",
    "validate_access_key",
    "validate_group_ids",
    "validate_key_length",
    "validate_scope_role",
    "validate_user_id",
    "verify",
]

SCOPE_ROLES = ("admin", "user")
DEFAULT_SCOPE_ROLE = "admin"  # asnodeadmin's default; aspera-cli's is "user"
DEFAULT_KEY_LENGTH = 4096
DEFAULT_LIFETIME = timedelta(hours=1)
MIN_KEY_LENGTH = 1024
MAX_KEY_LENGTH = 16384
AUTH_TYPE = "access_key"
SIGNATURE_DELIMITER = "==SIGNATURE=="
SIGNATURE_LINE_WIDTH = 60  # aspera-cli's `.scan(/.{1,60}/)`; not openssl's 64 nor base64(1)'s 76

# A real token inflates to well under 4 KiB; the cap stops a hostile "token" from
# inflating into gigabytes before we even look at it.
_MAX_CONTAINER_BYTES = 1 << 20

_EXPIRES_AT_RE = re.compile(
    r"(?P<stamp>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?P<millis>\.\d{3})?(?P<zone>Z|[+-]\d{2}:?\d{2})?"
)
_EXPIRES_AT_EXAMPLE = "2030-01-01T00:00:00Z"


class TokenError(ValueError):
    """A bearer-token option or token was refused.

    Carries one problem per line so that an operator fixing a command sees every
    mistake at once instead of one per run. Messages name the asnodeadmin option and the
    value but never contain a private key or a token: they end up in Pulumi logs.
    """

    def __init__(self, *problems: str) -> None:
        if not problems:
            raise ValueError("TokenError needs at least one problem")
        self.problems: tuple[str, ...] = problems
        super().__init__("\n".join(problems))


# --------------------------------------------------------------------------- validation


def validate_key_length(bits: int | str) -> int:
    """Return ``bits`` as an int if asnodeadmin would accept it as ``--token-key-length``.

    Strings are accepted because the value usually comes from a command line or from
    Pulumi config; asnodeadmin documents the option as a "Double", so ``"4096.0"`` is
    accepted too.
    """
    rule = f"must be a power of 2 from {MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} bits"
    value: int | None = None
    if isinstance(bits, bool):
        value = None
    elif isinstance(bits, int):
        value = bits
    elif isinstance(bits, float) and bits.is_integer():
        value = int(bits)
    elif isinstance(bits, str):
        text = bits.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = float("nan")
            value = int(number) if number.is_integer() else None
    if value is None:
        raise TokenError(f"--token-key-length {bits!r}: not a number; {rule}")
    if not (MIN_KEY_LENGTH <= value <= MAX_KEY_LENGTH) or value & (value - 1):
        raise TokenError(f"--token-key-length {bits}: {rule}")
    return value


def validate_scope_role(role: str) -> str:
    """Return ``role`` if it is a Node API scope role (``admin`` may reconfigure the access key)."""
    if role not in SCOPE_ROLES:
        raise TokenError(f"--scope-role {role!r}: must be one of {', '.join(SCOPE_ROLES)}")
    return role


def validate_access_key(access_key: str) -> str:
    """Return ``access_key`` if it can sit in a scope ``node.<access key>:<role>:all``.

    The Node API and aspera-cli split the scope on the first ':', so an access key ID
    containing one would silently produce a different access key and role.
    """
    if not isinstance(access_key, str) or not access_key.strip():
        raise TokenError("--access-key '': must be a non-empty access key ID")
    if ":" in access_key:
        raise TokenError(
            f"--access-key {access_key!r}: must not contain ':' (the scope is split on the first ':')"
        )
    if access_key != access_key.strip():
        raise TokenError(f"--access-key {access_key!r}: must not start or end with whitespace")
    return access_key


def validate_user_id(user_id: str) -> str:
    """Return ``user_id`` if non-empty: HSTS matches it against a permission's ``access_id``."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise TokenError(f"--user-id {user_id!r}: must be a non-empty user ID")
    return user_id


def validate_group_ids(group_ids: tuple[str, ...]) -> tuple[str, ...]:
    """Return ``group_ids`` if every one is non-empty (``a,,b`` is a typo, not a group)."""
    if any(not isinstance(g, str) or not g.strip() for g in group_ids):
        raise TokenError(f"--group-ids {','.join(map(str, group_ids))!r}: every group ID must be non-empty")
    return group_ids


def _aware_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        # A naive "now" would be compared with UTC expiry dates and be off by the local offset.
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _parse_utc_text(text: str, option: str) -> datetime:
    """Parse the two UTC forms found in real tokens; refuse anything a server might read differently."""
    match = _EXPIRES_AT_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise TokenError(f"{option} {text!r}: not a UTC date-time like {_EXPIRES_AT_EXAMPLE}")
    zone = match["zone"]
    if zone is None:
        raise TokenError(
            f"{option} {text!r}: has no time zone; write UTC with a trailing Z, e.g. {_EXPIRES_AT_EXAMPLE}"
        )
    if zone != "Z":
        # Even +00:00 is refused: the token carries the text verbatim and IBM's tools write only 'Z'.
        raise TokenError(
            f"{option} {text!r}: must be UTC written with a trailing Z, not the offset {zone}"
        )
    try:
        stamp = datetime.strptime(match["stamp"], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise TokenError(f"{option} {text!r}: not a valid calendar date and time") from None
    micros = int(match["millis"][1:]) * 1000 if match["millis"] else 0
    return stamp.replace(microsecond=micros, tzinfo=UTC)


def parse_expires_at(text: str, now: datetime | None = None) -> datetime:
    """Parse an ``--expires-at`` value (``2030-01-01T00:00:00Z`` or ``...00.000Z``), refusing the past.

    Minting a token that is already expired is always a mistake (usually a local time
    typed as UTC), so it is refused here rather than discovered as a 401 later.
    """
    expires_at = _parse_utc_text(text, "--expires-at")
    current = _aware_now(now)
    if expires_at <= current:
        raise TokenError(
            f"--expires-at {text!r}: is not in the future (now is {_format_utc(current)})"
        )
    return expires_at


def _format_utc(moment: datetime) -> str:
    # aspera-cli's strftime('%FT%TZ'): whole seconds, literal Z.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- request


@dataclass(frozen=True)
class TokenRequest:
    """The asnodeadmin ``--bearer-create`` options that end up inside the token.

    ``expires_at`` is kept as text so that a caller's millisecond form
    (``2016-06-23T13:21:58.453Z``, as in IBM's examples) reaches the token unchanged.
    ``None`` means the asnodeadmin default: one hour after minting.
    """

    access_key: str
    user_id: str
    group_ids: tuple[str, ...] = ()
    scope_role: str = DEFAULT_SCOPE_ROLE
    expires_at: str | None = None

    def validate(self, now: datetime | None = None) -> datetime | None:
        """Check every field and report all problems in one TokenError; return the parsed expiry."""
        problems: list[str] = []
        expires_at: datetime | None = None
        checks = (
            lambda: validate_access_key(self.access_key),
            lambda: validate_user_id(self.user_id),
            lambda: validate_group_ids(tuple(self.group_ids)),
            lambda: validate_scope_role(self.scope_role),
        )
        for check in checks:
            try:
                check()
            except TokenError as err:
                problems.extend(err.problems)
        if self.expires_at is not None:
            try:
                expires_at = parse_expires_at(self.expires_at, now)
            except TokenError as err:
                problems.extend(err.problems)
        if problems:
            raise TokenError(*problems)
        return expires_at

    @property
    def scope(self) -> str:
        """The Node API scope, ``node.<access key>:<role>:all``."""
        return f"node.{self.access_key}:{self.scope_role}:all"


# --------------------------------------------------------------------------- keys


def generate_signing_key(bits: int | str = DEFAULT_KEY_LENGTH) -> rsa.RSAPrivateKey:
    """Generate an RSA signing key of an asnodeadmin-accepted length (slow: ~1 s at 8192 bits)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=validate_key_length(bits))


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    """PKCS#8 PEM, unencrypted: it is stored in a secret store or a 0600 file, never in plain state."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def load_private_key_pem(text: str | bytes) -> rsa.RSAPrivateKey:
    """Load an unencrypted PEM RSA private key (PKCS#8 or PKCS#1 ``BEGIN RSA PRIVATE KEY``)."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, binascii.Error):
        # The parser's own message could quote key material; keep it out of logs.
        raise TokenError("--key-file-path: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TokenError("--key-file-path: the key is not an RSA key (bearer tokens are RSA-SHA512)")
    if key.key_size < MIN_KEY_LENGTH:
        raise TokenError(
            f"--key-file-path: the RSA key has {key.key_size} bits; at least {MIN_KEY_LENGTH} are needed"
        )
    return key


def public_key_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    """SubjectPublicKeyInfo PEM: the text HSTS stores as the access key's ``token_verification_key``."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode("ascii")


def _load_verification_key(pem: str | bytes) -> rsa.RSAPublicKey:
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, binascii.Error):
        raise TokenError("--public-key: not a PEM public key (token_verification_key)") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise TokenError("--public-key: not an RSA public key")
    return key


# --------------------------------------------------------------------------- mint


@dataclass(frozen=True)
class MintedToken:
    """A freshly minted bearer token and the facts needed to decide when to re-mint it."""

    token: str
    payload: dict[str, Any]
    expires_at: datetime
    issued_at: datetime


def _payload(request: TokenRequest, expires_at_text: str) -> dict[str, Any]:
    # Insertion order is the serialization order; it matches aspera-cli so that tokens can
    # be compared byte for byte with `ascli node bearer_token`.
    payload: dict[str, Any] = {"user_id": request.user_id}
    if request.group_ids:
        payload["group_ids"] = list(request.group_ids)
    payload["scope"] = request.scope
    payload["auth_type"] = AUTH_TYPE
    payload["expires_at"] = expires_at_text
    return payload


def _payload_json(payload: dict[str, Any]) -> bytes:
    # Ruby JSON.generate: compact, raw UTF-8, '/' not escaped.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _wrap(text: str, width: int = SIGNATURE_LINE_WIDTH) -> str:
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def mint(request: TokenRequest, key: rsa.RSAPrivateKey, now: datetime | None = None) -> MintedToken:
    """Mint a bearer token for ``request``, signed with the access key's signing key.

    Without ``request.expires_at`` the token lives ``DEFAULT_LIFETIME`` from ``now``.
    ``issued_at`` is truncated to whole seconds because the default expiry is written
    without fractions; that keeps ``expires_at - issued_at`` exactly the lifetime.
    """
    current = _aware_now(now)
    requested_expiry = request.validate(current)
    issued_at = current.replace(microsecond=0)
    if requested_expiry is not None and request.expires_at is not None:
        expires_at, expires_at_text = requested_expiry, request.expires_at.strip()
    else:
        expires_at = issued_at + DEFAULT_LIFETIME
        expires_at_text = _format_utc(expires_at)

    payload = _payload(request, expires_at_text)
    payload_json = _payload_json(payload)
    signature = key.sign(payload_json, padding.PKCS1v15(), hashes.SHA512())
    container = b"\n".join(
        [
            payload_json,
            SIGNATURE_DELIMITER.encode("ascii"),
            _wrap(base64.b64encode(signature).decode("ascii")).encode("ascii"),
            b"",
        ]
    )
    token = base64.b64encode(zlib.compress(container)).decode("ascii")
    return MintedToken(token=token, payload=payload, expires_at=expires_at, issued_at=issued_at)


# --------------------------------------------------------------------------- decode / verify


@dataclass(frozen=True)
class DecodedToken:
    """A token taken apart, not yet trusted: ``payload_json`` is exactly the signed bytes."""

    payload: dict[str, Any]
    payload_json: bytes
    signature: bytes


def _not_a_token(reason: str) -> TokenError:
    return TokenError(f"not an Aspera bearer token: {reason}")


def _container(token: str) -> bytes:
    """The inflated bytes of a token: JSON, delimiter, signature."""
    text = token.strip() if isinstance(token, str) else ""
    if text.startswith("Bearer "):
        text = text[len("Bearer ") :].strip()
    if not text:
        raise _not_a_token("empty")
    try:
        compressed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _not_a_token("not standard base64") from None

    inflater = zlib.decompressobj()
    try:
        container = inflater.decompress(compressed, _MAX_CONTAINER_BYTES)
    except zlib.error:
        raise _not_a_token("not zlib data") from None
    if inflater.unconsumed_tail:
        raise _not_a_token(f"inflates to more than {_MAX_CONTAINER_BYTES} bytes")
    if not inflater.eof:
        raise _not_a_token("zlib data is truncated")
    if inflater.unused_data:
        raise _not_a_token("trailing bytes after the zlib data")
    return container


def decode(token: str) -> DecodedToken:
    """Take a token apart without checking its signature.

    A leading ``Bearer `` (as in ``ASPERA_SCP_TOKEN``) and surrounding whitespace are
    ignored; anything else that is not exactly base64(zlib(JSON + delimiter + signature))
    is refused, since a lenient decoder would hide a truncated copy-paste.
    """
    head, delimiter, tail = _container(token).partition(SIGNATURE_DELIMITER.encode("ascii"))
    if not delimiter:
        raise _not_a_token(f"no {SIGNATURE_DELIMITER} delimiter")
    # The signed bytes are the JSON without the LF that separates it from the delimiter.
    payload_json = head[:-1] if head.endswith(b"\n") else head
    try:
        payload = json.loads(payload_json.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _not_a_token("the payload is not UTF-8 JSON") from None
    if not isinstance(payload, dict):
        raise _not_a_token("the payload is not a JSON object")

    signature_b64 = b"".join(tail.split())  # the signature is wrapped at 60 (or, from the KB recipe, 76)
    if not signature_b64:
        raise _not_a_token("the signature is empty")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise _not_a_token("the signature is not standard base64") from None
    return DecodedToken(payload=payload, payload_json=payload_json, signature=signature)


def verify(token: str, public_key_pem: str | bytes, now: datetime | None = None) -> dict[str, Any]:
    """Check a token as HSTS would (signature by the verification key, then expiry); return its payload."""
    decoded = decode(token)
    verification_key = _load_verification_key(public_key_pem)
    try:
        verification_key.verify(
            decoded.signature, decoded.payload_json, padding.PKCS1v15(), hashes.SHA512()
        )
    except InvalidSignature:
        raise TokenError(
            "bad signature: the token was altered or not signed by the private key of this verification key"
        ) from None
    expires_text = decoded.payload.get("expires_at")
    if not isinstance(expires_text, str):
        raise TokenError("the token has no expires_at")
    expires_at = _parse_utc_text(expires_text, "expires_at")
    current = _aware_now(now)
    if expires_at <= current:
        raise TokenError(f"the token expired at {expires_text} (now is {_format_utc(current)})")
    return decoded.payload


def needs_reminting(issued_at: datetime, expires_at: datetime, now: datetime | None = None) -> bool:
    """True when a token has expired or less than 10% of its lifetime remains.

    Re-minting ahead of expiry means a ``pulumi up`` never hands out a token that dies
    minutes later, while a token that is still fresh keeps its value (no needless diff).
    Exactly 10% remaining still counts as fresh.
    """
    current = _aware_now(now)
    lifetime = expires_at - issued_at
    remaining = expires_at - current
    if remaining <= timedelta(0) or lifetime <= timedelta(0):
        return True
    # Integer timedelta arithmetic: no float rounding at the boundary.
    return remaining * 10 < lifetime
