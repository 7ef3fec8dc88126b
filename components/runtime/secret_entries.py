"""What bin/hst-ha-secret (components/bundle/files/hst-ha-secret.sh) does with a secret once it has
fetched it: check the Redis users' secret and print the wanted roles' passwords, or check the TLS
secret and write the node's CA certificate, certificate and key.

    python3 -m components.runtime.secret_entries passwords ALPHABET MINIMUM "ROLES" ROLE...
    python3 -m components.runtime.secret_entries tls "ENTRY NAMES" CA_FILE CERT_FILE KEY_FILE

The secret document comes on stdin, never in argv (a command line is readable by every user of the
node). The rules (the password alphabet and length, the roles, the TLS entry names) come in argv
from the node's node.env, where components/bundle (names.py, users.py, tls.py) put them: they have
one definition, there. Errors name the role or the entry, never a value; each one exits 1, a
wrong command line 2.

Only the standard library: it runs with the distribution's python3 on every node, before anything
else is installed, and on the local target.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence

__all__ = [
    "TLS_MODES", "SecretError", "UnknownRole", "main", "parse_document", "passwords", "tls_entries", "write_entry",
]

PROGRAM = "hst-ha-secret"
# The CA certificate and the certificate are public; the key is the node's alone.
TLS_MODES = (0o644, 0o644, 0o600)
_USAGE = ("usage: python3 -m components.runtime.secret_entries passwords ALPHABET MINIMUM ROLES ROLE... | "
          "tls ENTRIES CA_FILE CERT_FILE KEY_FILE (the secret on stdin)")


class SecretError(Exception):
    """The secret is unusable: the message names what is wrong and never holds a value from it."""


class UnknownRole(ValueError):
    """A role the caller asked for that the cluster does not have: the caller's mistake, not the secret's."""


def parse_document(text: str | bytes, what: str, shape: str) -> dict[str, object]:
    """The secret `text` as a JSON object; `what` names the secret and `shape` what it should be."""
    try:
        document = json.loads(text)
    # ValueError: also bytes that are not UTF-8. Either error's own message may quote the document.
    except (ValueError, RecursionError):
        raise SecretError(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise SecretError(f"{what} is not a JSON object of {shape}")
    return document


def passwords(text: str | bytes, alphabet: str, minimum: int, known: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The passwords of the roles `wanted`, in that order, from the Redis users' secret `text`.
    A password is at least `minimum` characters of [`alphabet`] (the rule of users.parse_secret)."""
    unknown = [role for role in wanted if role not in known]
    if unknown:
        raise UnknownRole(f"no role {unknown[0]!r}; the roles are {list(known)}")
    document = parse_document(text, "the Redis users secret", "one password per role")
    rule = re.compile(f"^[{alphabet}]{{{minimum},}}$")
    values = []
    for role in wanted:
        value = document.get(role)
        if not isinstance(value, str) or not rule.match(value):
            raise SecretError(f"the password of role {role} is missing or not at least {minimum} "
                              f"characters of [{alphabet}]")
        values.append(value)
    return values


def tls_entries(text: str | bytes, names: Sequence[str]) -> list[str]:
    """The PEM entries `names`, in that order, from the TLS secret `text`."""
    document = parse_document(text, "the TLS secret", "PEM entries")
    values = []
    for name in names:
        value = document.get(name)
        if not isinstance(value, str) or not value.startswith("-----BEGIN ") or "-----END " not in value:
            raise SecretError(f"the TLS secret has no PEM entry {name!r}")
        values.append(value)
    return values


def write_entry(path: str, value: str, mode: int) -> None:
    """`value` to `path` with `mode`, replaced whole: a reader sees the old file or the new one, and
    a key is never readable by others, not even while it is written."""
    tmp = f"{path}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as out:
        out.write(value)
    os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask, and a left-over tmp keeps its own
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    try:
        if command == "passwords" and len(rest) >= 4 and rest[1].isdigit():
            alphabet, minimum, known, wanted = rest[0], int(rest[1]), rest[2].split(), rest[3:]
            values = passwords(sys.stdin.buffer.read(), alphabet, minimum, known, wanted)
            # All checked before any is printed: a caller never gets some of the passwords.
            sys.stdout.write("".join(f"{v}\n" for v in values))
            return 0
        if command == "tls" and len(rest) == 4 and len(rest[0].split()) == len(TLS_MODES):
            values = tls_entries(sys.stdin.buffer.read(), rest[0].split())
            for path, value, mode in zip(rest[1:], values, TLS_MODES, strict=True):
                write_entry(path, value, mode)
            return 0
    except UnknownRole as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 1
    except SecretError as exc:
        print(f"{PROGRAM}: {exc}; {'regenerate it' if command == 'tls' else 'regenerate the secret'}", file=sys.stderr)
        return 1
    print(_USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
