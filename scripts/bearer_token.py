#!/usr/bin/env python3
"""Mint or verify Aspera Node API bearer tokens from the command line, like ``asnodeadmin``.

    python scripts/bearer_token.py --bearer-create --access-key AK --user-id U \\
        [--group-ids a,b] [--expires-at 2030-01-01T00:00:00Z] [--scope-role admin|user] \\
        [--token-key-length 4096] [--key-file-path key.pem] [--output-dir DIR]
    python scripts/bearer_token.py --bearer-verify --token TOKEN|- --public-key pub.pem [--access-key AK]

Unlike asnodeadmin it never prompts, so it can run in scripts: without --key-file-path it
generates a signing key and saves it (0600) with its verification key beside it, in --output-dir
or else in $XDG_STATE_HOME/hst-ha/bearer-keys (~/.local/state/hst-ha/bearer-keys), a 0700
directory: never in the current directory, which is often a checkout. The token alone goes to
stdout, everything else to stderr, so ``T=$(... --bearer-create ...)`` captures just the token.

Exit status: 0 ok, 1 verification failed, 2 bad options.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from components.runtime.bearer_token import (
    DEFAULT_KEY_LENGTH,
    SCOPE_ROLES,
    TokenError,
    TokenRequest,
    generate_signing_key,
    load_private_key_pem,
    mint,
    private_key_pem,
    public_key_pem,
    validate_key_length,
    verify,
)

EXIT_VERIFY_FAILED = 1
EXIT_USAGE = 2
SLOW_KEY_LENGTH = 8192  # seconds at 8192, minutes at 16384 on a small VM: show that we are alive
PROGRESS_INTERVAL_S = 2.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bearer_token.py",
        description="Create or verify Aspera Node API bearer tokens (asnodeadmin --bearer-create options).",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--bearer-create", action="store_true", help="mint a bearer token; prints it on stdout")
    mode.add_argument("--bearer-verify", action="store_true", help="check a token's signature and expiry")
    parser.add_argument("--access-key", help="access key ID the token is for (checked against the scope on verify)")
    parser.add_argument("--user-id", help="user ID granted access by /permissions")
    parser.add_argument("--group-ids", help="comma-separated group IDs granted access by /permissions")
    parser.add_argument("--expires-at", help="UTC expiry, e.g. 2030-01-01T00:00:00Z (default: 1 hour from now)")
    # No argparse `choices`: our own message names the rule the same way for every option.
    parser.add_argument("--scope-role", default="admin", help=f"one of {', '.join(SCOPE_ROLES)} (default admin)")
    parser.add_argument(
        "--token-key-length",
        default=str(DEFAULT_KEY_LENGTH),
        help="bits of a generated signing key, power of 2 from 1024 to 16384 (default 4096)",
    )
    parser.add_argument("--key-file-path", help="PEM RSA private key to sign with (default: generate and save one)")
    parser.add_argument(
        "--output-dir",
        help="existing directory where a generated key pair is saved "
        "(default: $XDG_STATE_HOME/hst-ha/bearer-keys, else ~/.local/state/hst-ha/bearer-keys, created 0700)",
    )
    parser.add_argument("--token", help="token to verify; '-' reads it from stdin (keeps it out of `ps`)")
    parser.add_argument("--public-key", help="PEM verification key (the access key's token_verification_key)")
    return parser


def _fail(code: int, message: str) -> int:
    for line in message.splitlines():
        print(f"bearer_token.py: error: {line}", file=sys.stderr)
    return code


@contextmanager
def _progress(bits: int) -> Iterator[None]:
    """Print a dot to stderr every few seconds while a slow key is generated."""
    if bits < SLOW_KEY_LENGTH:
        yield
        return
    print(f"generating a {bits}-bit RSA signing key; this can take minutes", file=sys.stderr, flush=True)
    done = threading.Event()
    dots = 0

    def tick() -> None:
        nonlocal dots
        while not done.wait(PROGRESS_INTERVAL_S):
            print(".", end="", file=sys.stderr, flush=True)
            dots += 1

    ticker = threading.Thread(target=tick, daemon=True)
    started = time.monotonic()
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        if dots:
            print(file=sys.stderr)  # end the line of dots
    print(f"key generated in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def _write_new_file(path: Path, text: str, mode: int) -> None:
    # O_EXCL: never overwrite an existing key; mode at creation: no window of wider access.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)


def _save_key_pair(key: rsa.RSAPrivateKey, access_key: str, output_dir: Path) -> tuple[Path, Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe_access_key = re.sub(r"[^A-Za-z0-9._-]", "_", access_key)
    private_path = output_dir / f"bearer-{safe_access_key}-{stamp}.pem"
    public_path = private_path.with_name(private_path.name[: -len(".pem")] + ".pub.pem")
    _write_new_file(private_path, private_key_pem(key), 0o600)
    _write_new_file(public_path, public_key_pem(key), 0o644)
    return private_path, public_path


def default_key_dir() -> Path:
    """Private keys go to the user's state directory by default, never into the current directory."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "hst-ha" / "bearer-keys"


def _make_private_dir(directory: Path) -> str | None:
    """Create the default key directory 0700 (or find it so); the problem when that fails."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(directory.stat().st_mode)
    except OSError as err:
        return f"cannot create {directory} for the generated key ({err.strerror}): set --output-dir"
    if mode & 0o077:
        return f"{directory} is open to other users (mode {mode:04o}): `chmod 700 {directory}`, or set --output-dir"
    return None


def _group_ids(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",")) if text else ()


def _create(args: argparse.Namespace) -> int:
    problems: list[str] = []
    # A missing --access-key or --user-id is reported by validate() as an empty one.
    request = TokenRequest(
        access_key=args.access_key or "",
        user_id=args.user_id or "",
        group_ids=_group_ids(args.group_ids),
        scope_role=args.scope_role,
        expires_at=args.expires_at,
    )
    # Validate everything before a key generation that can take minutes.
    try:
        request.validate()
    except TokenError as err:
        problems.extend(err.problems)
    bits = DEFAULT_KEY_LENGTH
    key_path = Path(args.key_file_path) if args.key_file_path else None
    if key_path is None:
        try:
            bits = validate_key_length(args.token_key_length)
        except TokenError as err:
            problems.extend(err.problems)
        if args.output_dir is not None and not Path(args.output_dir).is_dir():
            problems.append(f"--output-dir {args.output_dir!r}: not an existing directory")
    elif not key_path.is_file():
        problems.append(f"--key-file-path {args.key_file_path!r}: not an existing PEM private key file")
    if problems:
        return _fail(EXIT_USAGE, "\n".join(problems))
    key_dir = Path(args.output_dir) if args.output_dir is not None else default_key_dir()
    if key_path is None and args.output_dir is None:
        problem = _make_private_dir(key_dir)
        if problem:
            return _fail(EXIT_USAGE, problem)

    try:
        if key_path is not None:
            key = load_private_key_pem(key_path.read_bytes())
        else:
            with _progress(bits):
                key = generate_signing_key(bits)
            private_path, public_path = _save_key_pair(key, request.access_key, key_dir)
            print(f"signing key saved to {private_path} (mode 0600)", file=sys.stderr)
            print(
                f"verification key saved to {public_path}; set it as the access key's token_verification_key",
                file=sys.stderr,
            )
        minted = mint(request, key)
    except TokenError as err:
        return _fail(EXIT_USAGE, str(err))
    except OSError as err:
        return _fail(EXIT_USAGE, f"{err.filename}: {err.strerror}")
    print(minted.token)
    print(f"token expires at {minted.payload['expires_at']}", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    problems = [f"{option}: required with --bearer-verify" for option, value in
                (("--token", args.token), ("--public-key", args.public_key)) if not value]
    if problems:
        return _fail(EXIT_USAGE, "\n".join(problems))
    token = sys.stdin.read() if args.token == "-" else args.token
    try:
        verification_key = Path(args.public_key).read_bytes()
    except OSError as err:
        return _fail(EXIT_USAGE, f"--public-key {args.public_key!r}: {err.strerror}")
    try:
        payload = verify(token, verification_key)
    except TokenError as err:
        return _fail(EXIT_VERIFY_FAILED, str(err))
    if args.access_key:
        scope = str(payload.get("scope", ""))
        # HSTS reads the access key from the scope `node.<access key>:<role>:all` (split on the first ':').
        token_access_key = scope.removeprefix("node.").partition(":")[0] if scope.startswith("node.") else ""
        if token_access_key != args.access_key:
            return _fail(
                EXIT_VERIFY_FAILED,
                f"--access-key {args.access_key!r}: the token's scope {scope!r} is for another access key",
            )
    print(json.dumps(payload, indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _create(args) if args.bearer_create else _verify(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
