"""Bearer tokens: the byte-exact layout of components/runtime/bearer_token.py's docstring, cross-checked
with the openssl CLI, and every refusal."""

from __future__ import annotations

import base64
import shutil
import subprocess
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from components.runtime.bearer_token import (
    DEFAULT_LIFETIME,
    TokenError,
    TokenRequest,
    decode,
    generate_signing_key,
    load_private_key_pem,
    mint,
    needs_reminting,
    parse_expires_at,
    private_key_pem,
    public_key_pem,
    validate_access_key,
    validate_key_length,
    validate_scope_role,
    validate_user_id,
    verify,
)

NOW = datetime(2029, 6, 1, 12, 0, 0, tzinfo=UTC)
ACCESS_KEY = "yl-g88EfwFmBj0KOXwU0QVPloe1IHg6QtlFbD5wCRH0A"  # the IBM KB example's access key
REQUEST = TokenRequest(
    access_key=ACCESS_KEY,
    user_id="luke@aspera.us",
    group_ids=("engineering", "emeryville"),
    scope_role="user",
    expires_at="2030-01-01T13:20:00.000Z",
)
# What aspera-cli's JSON.generate writes for REQUEST: compact, in this key order.
REQUEST_JSON = (
    '{"user_id":"luke@aspera.us","group_ids":["engineering","emeryville"],'
    f'"scope":"node.{ACCESS_KEY}:user:all","auth_type":"access_key",'
    '"expires_at":"2030-01-01T13:20:00.000Z"}'
)

requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")


@pytest.fixture(scope="module")
def key_2048() -> rsa.RSAPrivateKey:
    return generate_signing_key(2048)


@pytest.fixture(scope="module")
def key_1024() -> rsa.RSAPrivateKey:
    return generate_signing_key(1024)


def _container(token: str) -> bytes:
    return zlib.decompress(base64.b64decode(token, validate=True))


def _split(container: bytes) -> tuple[bytes, list[bytes]]:
    """Split the container by the exact layout, failing on any deviation."""
    payload_json, sep, rest = container.partition(b"\n==SIGNATURE==\n")
    assert sep, "no LF ==SIGNATURE== LF"
    assert rest.endswith(b"\n") and not rest.endswith(b"\n\n"), "exactly one trailing LF"
    return payload_json, rest[:-1].split(b"\n")


def _repack(payload_json: bytes, signature: bytes) -> str:
    sig = base64.b64encode(signature).decode()
    lines = "\n".join(sig[i : i + 60] for i in range(0, len(sig), 60))
    container = payload_json + b"\n==SIGNATURE==\n" + lines.encode() + b"\n"
    return base64.b64encode(zlib.compress(container)).decode()


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    ("bits", "line_lengths"),
    [(2048, [60] * 5 + [44]), (4096, [60] * 11 + [24])],
)
def test_token_layout_byte_by_byte(bits: int, line_lengths: list[int], key_2048: rsa.RSAPrivateKey) -> None:
    key = key_2048 if bits == 2048 else generate_signing_key(4096)
    minted = mint(REQUEST, key, now=NOW)
    token = minted.token

    assert token.startswith("eJ")
    assert "\n" not in token and "-" not in token and "_" not in token  # standard, unwrapped base64
    compressed = base64.b64decode(token, validate=True)
    assert compressed[:2] == b"\x78\x9c"  # zlib header, default level
    assert base64.b64encode(compressed).decode() == token
    container = zlib.decompress(compressed)

    payload_json, lines = _split(container)
    assert payload_json == REQUEST_JSON.encode()
    assert [len(line) for line in lines] == line_lengths
    signature = base64.b64decode(b"".join(lines), validate=True)
    assert len(signature) == bits // 8
    assert container == payload_json + b"\n==SIGNATURE==\n" + b"\n".join(lines) + b"\n"
    # Ruby Zlib::Deflate.deflate at the default level gives the same bytes as Python's zlib.
    assert compressed == zlib.compress(container)


def test_payload_key_order_and_defaults(key_1024: rsa.RSAPrivateKey) -> None:
    minted = mint(TokenRequest(access_key="AK1", user_id="666"), key_1024, now=NOW)
    payload_json, _ = _split(_container(minted.token))
    # No group_ids when there are none; asnodeadmin defaults: admin, 1 hour.
    assert payload_json == (
        b'{"user_id":"666","scope":"node.AK1:admin:all","auth_type":"access_key",'
        b'"expires_at":"2029-06-01T13:00:00Z"}'
    )
    assert list(minted.payload) == ["user_id", "scope", "auth_type", "expires_at"]
    assert minted.issued_at == NOW
    assert minted.expires_at == NOW + DEFAULT_LIFETIME


def test_issued_at_truncated_to_seconds(key_1024: rsa.RSAPrivateKey) -> None:
    minted = mint(TokenRequest("AK1", "666"), key_1024, now=NOW + timedelta(microseconds=999_999))
    assert minted.issued_at == NOW
    assert minted.payload["expires_at"] == "2029-06-01T13:00:00Z"
    assert minted.expires_at - minted.issued_at == DEFAULT_LIFETIME


def test_expires_at_forms_kept_verbatim(key_1024: rsa.RSAPrivateKey) -> None:
    with_millis = mint(TokenRequest("AK1", "u", expires_at="2030-01-01T13:20:00.453Z"), key_1024, now=NOW)
    assert with_millis.payload["expires_at"] == "2030-01-01T13:20:00.453Z"
    assert with_millis.expires_at == datetime(2030, 1, 1, 13, 20, 0, 453000, tzinfo=UTC)
    plain = mint(TokenRequest("AK1", "u", expires_at="2030-01-01T00:00:00Z"), key_1024, now=NOW)
    assert plain.payload["expires_at"] == "2030-01-01T00:00:00Z"


def test_non_ascii_is_raw_utf8_and_slash_unescaped(key_1024: rsa.RSAPrivateKey) -> None:
    minted = mint(TokenRequest("AK1", "zoë/ops"), key_1024, now=NOW)
    payload_json, _ = _split(_container(minted.token))
    assert payload_json.startswith('{"user_id":"zoë/ops",'.encode())


def test_deterministic_for_same_inputs(key_1024: rsa.RSAPrivateKey) -> None:
    assert mint(REQUEST, key_1024, now=NOW).token == mint(REQUEST, key_1024, now=NOW).token


# --------------------------------------------------------------------------- openssl cross-check


def _write_material(tmp_path: Path, key: rsa.RSAPrivateKey, token: str) -> tuple[Path, Path, Path, Path]:
    payload_json, lines = _split(_container(token))
    paths = tmp_path / "payload.json", tmp_path / "sig.bin", tmp_path / "pub.pem", tmp_path / "key.pem"
    paths[0].write_bytes(payload_json)
    paths[1].write_bytes(base64.b64decode(b"".join(lines)))
    paths[2].write_text(public_key_pem(key))
    paths[3].write_text(private_key_pem(key))
    return paths


@requires_openssl
def test_signature_verified_by_openssl(tmp_path: Path, key_2048: rsa.RSAPrivateKey) -> None:
    payload, sig, pub, _ = _write_material(tmp_path, key_2048, mint(REQUEST, key_2048, now=NOW).token)
    result = subprocess.run(
        ["openssl", "dgst", "-sha512", "-verify", str(pub), "-signature", str(sig), str(payload)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Verified OK" in result.stdout

    # The same check must fail when one byte of the signed JSON changes.
    payload.write_bytes(payload.read_bytes().replace(b"user:all", b"admin:all"))
    tampered = subprocess.run(
        ["openssl", "dgst", "-sha512", "-verify", str(pub), "-signature", str(sig), str(payload)],
        capture_output=True, text=True, timeout=60,
    )
    assert tampered.returncode != 0


@requires_openssl
def test_signature_equals_openssl_sign(tmp_path: Path, key_2048: rsa.RSAPrivateKey) -> None:
    payload, sig, _, key_pem = _write_material(tmp_path, key_2048, mint(REQUEST, key_2048, now=NOW).token)
    result = subprocess.run(
        ["openssl", "dgst", "-sha512", "-sign", str(key_pem), str(payload)],
        capture_output=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == sig.read_bytes()  # PKCS#1 v1.5 is deterministic


@requires_openssl
def test_kb_recipe_token_with_76_column_signature_verifies(tmp_path: Path, key_1024: rsa.RSAPrivateKey) -> None:
    # The IBM KB builds tokens with `openssl dgst ... | base64` (76 columns); accept them.
    payload = tmp_path / "bearer_token.json"
    payload.write_bytes(REQUEST_JSON.encode())
    key_pem = tmp_path / "key.pem"
    key_pem.write_text(private_key_pem(key_1024))
    signature = subprocess.run(
        ["openssl", "dgst", "-sha512", "-sign", str(key_pem), str(payload)],
        capture_output=True, check=True, timeout=60,
    ).stdout
    sig76 = base64.encodebytes(signature)  # 76-column lines, trailing LF
    token = base64.b64encode(zlib.compress(REQUEST_JSON.encode() + b"\n==SIGNATURE==\n" + sig76)).decode()
    assert verify(token, public_key_pem(key_1024), now=NOW)["user_id"] == "luke@aspera.us"


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("bits", "message"),
    [
        (1000, "--token-key-length 1000: must be a power of 2 from 1024 to 16384 bits"),
        (3000, "--token-key-length 3000: must be a power of 2 from 1024 to 16384 bits"),
        (32768, "--token-key-length 32768: must be a power of 2 from 1024 to 16384 bits"),
        (512, "--token-key-length 512: must be a power of 2 from 1024 to 16384 bits"),
        ("abc", "--token-key-length 'abc': not a number; must be a power of 2 from 1024 to 16384 bits"),
        (True, "--token-key-length True: not a number"),
    ],
)
def test_bad_key_length_refused(bits: object, message: str) -> None:
    with pytest.raises(TokenError) as caught:
        validate_key_length(bits)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(("bits", "expected"), [(1024, 1024), ("4096", 4096), ("8192.0", 8192), (16384, 16384)])
def test_good_key_length_accepted(bits: object, expected: int) -> None:
    assert validate_key_length(bits) == expected  # type: ignore[arg-type]


def test_generate_signing_key_validates_bits() -> None:
    with pytest.raises(TokenError, match="--token-key-length 3000"):
        generate_signing_key(3000)


def test_bad_scope_role_refused() -> None:
    with pytest.raises(TokenError, match=r"^--scope-role 'root': must be one of admin, user$"):
        validate_scope_role("root")
    assert validate_scope_role("user") == "user"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "2020-01-01T00:00:00Z",
            r"^--expires-at '2020-01-01T00:00:00Z': is not in the future \(now is 2029-06-01T12:00:00Z\)$",
        ),
        ("2029-06-01T12:00:00Z", r"is not in the future"),  # exactly now is already expired
        ("tomorrow", r"^--expires-at 'tomorrow': not a UTC date-time like 2030-01-01T00:00:00Z$"),
        ("2030-01-01T00:00:00", r"^--expires-at '2030-01-01T00:00:00': has no time zone; write UTC with a trailing Z"),
        ("2030-01-01T00:00:00+02:00", r"must be UTC written with a trailing Z, not the offset \+02:00"),
        ("2030-01-01T00:00:00+00:00", r"not the offset \+00:00"),
        ("2030-02-30T00:00:00Z", r"not a valid calendar date and time"),
        ("2030-01-01 00:00:00Z", r"not a UTC date-time"),
        ("2030-01-01T00:00:00.45Z", r"not a UTC date-time"),
        ("", r"not a UTC date-time"),
    ],
)
def test_bad_expires_at_refused(text: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        parse_expires_at(text, NOW)


def test_expires_at_accepted_forms() -> None:
    assert parse_expires_at("2030-01-01T00:00:00Z", NOW) == datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_expires_at("2030-01-01T00:00:00.001Z", NOW) == datetime(2030, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_expires_at("2030-01-01T00:00:00Z", datetime(2029, 1, 1))


@pytest.mark.parametrize(
    ("func", "value", "message"),
    [
        (validate_user_id, "", r"^--user-id '': must be a non-empty user ID$"),
        (validate_user_id, "   ", r"--user-id '   ': must be a non-empty"),
        (validate_access_key, "", r"^--access-key '': must be a non-empty access key ID$"),
        (validate_access_key, "ak:admin", r"^--access-key 'ak:admin': must not contain ':'"),
        (validate_access_key, " ak", r"must not start or end with whitespace"),
    ],
)
def test_bad_identifiers_refused(func: object, value: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        func(value)  # type: ignore[operator]


def test_all_problems_reported_together(key_1024: rsa.RSAPrivateKey) -> None:
    request = TokenRequest(
        access_key="a:b", user_id="", group_ids=("eng", ""), scope_role="root", expires_at="2030-01-01T00:00:00"
    )
    with pytest.raises(TokenError) as caught:
        mint(request, key_1024, now=NOW)
    lines = str(caught.value).splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [
        "--access-key", "--user-id", "--group-ids", "--scope-role", "--expires-at",
    ]
    assert caught.value.problems == tuple(lines)


def test_valid_request_validates_to_expiry() -> None:
    assert REQUEST.validate(NOW) == datetime(2030, 1, 1, 13, 20, tzinfo=UTC)
    assert TokenRequest("AK", "u").validate(NOW) is None


# --------------------------------------------------------------------------- keys


def test_private_key_pem_round_trip(key_1024: rsa.RSAPrivateKey) -> None:
    pem = private_key_pem(key_1024)
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    loaded = load_private_key_pem(pem)
    assert public_key_pem(loaded) == public_key_pem(key_1024)
    assert public_key_pem(key_1024).startswith("-----BEGIN PUBLIC KEY-----\n")  # SubjectPublicKeyInfo
    assert public_key_pem(key_1024.public_key()) == public_key_pem(key_1024)


def test_load_private_key_refusals_do_not_leak_material(key_1024: rsa.RSAPrivateKey) -> None:
    pem = private_key_pem(key_1024)
    broken = pem[:100] + "!!!" + pem[100:]
    with pytest.raises(TokenError) as caught:
        load_private_key_pem(broken)
    assert "not an unencrypted PEM private key" in str(caught.value)
    assert pem.splitlines()[1] not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    from cryptography.hazmat.primitives import serialization

    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(TokenError, match="not an RSA key"):
        load_private_key_pem(ec_pem)


# --------------------------------------------------------------------------- verify / decode


def test_verify_round_trip_and_bearer_prefix(key_1024: rsa.RSAPrivateKey) -> None:
    minted = mint(REQUEST, key_1024, now=NOW)
    assert verify(minted.token, public_key_pem(key_1024), now=NOW) == minted.payload
    assert verify(f"Bearer {minted.token}\n", public_key_pem(key_1024), now=NOW) == minted.payload
    decoded = decode(minted.token)
    assert decoded.payload_json == REQUEST_JSON.encode()
    assert len(decoded.signature) == 128


def test_verify_rejects_tampered_payload(key_1024: rsa.RSAPrivateKey) -> None:
    decoded = decode(mint(REQUEST, key_1024, now=NOW).token)
    forged = _repack(decoded.payload_json.replace(b":user:all", b":admin:all"), decoded.signature)
    assert decode(forged).payload["scope"].endswith(":admin:all")
    with pytest.raises(TokenError, match="^bad signature"):
        verify(forged, public_key_pem(key_1024), now=NOW)


def test_verify_rejects_other_key(key_1024: rsa.RSAPrivateKey, key_2048: rsa.RSAPrivateKey) -> None:
    token = mint(REQUEST, key_2048, now=NOW).token
    with pytest.raises(TokenError, match="^bad signature"):
        verify(token, public_key_pem(key_1024), now=NOW)


def test_verify_rejects_expired(key_1024: rsa.RSAPrivateKey) -> None:
    minted = mint(TokenRequest("AK1", "u"), key_1024, now=NOW)
    assert verify(minted.token, public_key_pem(key_1024), now=minted.expires_at - timedelta(seconds=1))
    with pytest.raises(TokenError, match=r"^the token expired at 2029-06-01T13:00:00Z"):
        verify(minted.token, public_key_pem(key_1024), now=minted.expires_at)


def test_verify_rejects_bad_verification_key(key_1024: rsa.RSAPrivateKey) -> None:
    token = mint(REQUEST, key_1024, now=NOW).token
    with pytest.raises(TokenError, match="not a PEM public key"):
        verify(token, "not a key", now=NOW)


def _zlib_b64(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "empty"),
        ("not base64 at all!", "not standard base64"),
        ("eJw-_A==", "not standard base64"),  # URL-safe alphabet
        (base64.b64encode(b"plain bytes, not zlib").decode(), "not zlib data"),
        (base64.b64encode(zlib.compress(b'{"a":1}\n==SIGNATURE==\nAAAA\n')[:-6]).decode(), "truncated"),
        (base64.b64encode(zlib.compress(b'{"a":1}\n==SIGNATURE==\nAAAA\n') + b"xx").decode(), "trailing bytes"),
        (_zlib_b64(b'{"user_id":"u"}\nAAAA\n'), "no ==SIGNATURE== delimiter"),
        (_zlib_b64(b'{"user_id":\n==SIGNATURE==\nAAAA\n'), "not UTF-8 JSON"),
        (_zlib_b64(b'["user_id"]\n==SIGNATURE==\nAAAA\n'), "not a JSON object"),
        (_zlib_b64(b'{"user_id":"u"}\n==SIGNATURE==\n\n'), "the signature is empty"),
        (_zlib_b64(b'{"user_id":"u"}\n==SIGNATURE==\n*&^%\n'), "the signature is not standard base64"),
        (_zlib_b64(b"\0" * (2 << 20)), "inflates to more than"),
    ],
)
def test_decode_rejects_garbage(token: str, reason: str) -> None:
    with pytest.raises(TokenError) as caught:
        decode(token)
    assert str(caught.value).startswith("not an Aspera bearer token: ")
    assert reason in str(caught.value)


# --------------------------------------------------------------------------- re-minting


def test_needs_reminting_boundaries() -> None:
    issued, expires = NOW, NOW + timedelta(hours=1)
    ninety_percent = issued + timedelta(minutes=54)
    assert needs_reminting(issued, expires, issued) is False
    assert needs_reminting(issued, expires, ninety_percent - timedelta(microseconds=1)) is False
    assert needs_reminting(issued, expires, ninety_percent) is False  # exactly 10% left is still fresh
    assert needs_reminting(issued, expires, ninety_percent + timedelta(microseconds=1)) is True
    assert needs_reminting(issued, expires, expires) is True
    assert needs_reminting(issued, expires, expires + timedelta(days=1)) is True


def test_needs_reminting_degenerate_lifetime() -> None:
    assert needs_reminting(NOW, NOW, NOW - timedelta(seconds=1)) is True
