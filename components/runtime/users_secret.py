"""The Redis users' secret: one JSON object, a password per ACL role (components/bundle/users.py).

The passwords are generated here, by whoever calls this module (the `RedisUsersSecret` dynamic
provider on AWS), and go straight into the secret store: they are never returned, so they never
become a Pulumi input, output or state entry. What callers get back is where the secret is (name,
ARN or path, version id) and which roles it holds, nothing that decrypts to a password.

The life of the secret, as `pulumi up`/`destroy` drive it through the provider:
- create: a new secret under a name no one can have taken (`secret_store.unique_name`), carrying
  the stack's tags, one fresh password per role;
- the same roles again: nothing is read or written;
- a role added (or removed) in users.py: the current version is read, a password is generated
  for each new role only, a removed role's password is dropped, and every other password is kept
  exactly as it is, including one an operator rotated since (components/runtime/rotation.py);
- delete: only a secret carrying the stack's tags, with the configured recovery window.
Values already in the secret are never regenerated here: changing a password is the rotation's job,
which keeps the servers and the secret consistent.

Pure module: no Pulumi import; the store (and its boto3 client) is the caller's, built per call.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from components.bundle.names import PASSWORD_CHARACTERS
from components.bundle.users import MIN_PASSWORD_LENGTH
from components.runtime.bootstrap import SecretStore
from components.runtime.secret_store import (
    SecretRef,
    SecretStoreError,
    dump_string_map,
    load_string_map,
    unique_name,
)

__all__ = [
    "DESCRIPTION", "PASSWORD_LENGTH", "UsersSecret", "sync_roles", "create", "delete", "new_password",
    "role_problems", "stored_roles",
]

# Well above users.py's minimum; letters and digits only, which the boot script can put into
# redis.conf, sentinel.conf and HAProxy's tcp-check lines unquoted.
PASSWORD_LENGTH = 40
assert PASSWORD_LENGTH >= MIN_PASSWORD_LENGTH
DESCRIPTION = "hst-ha Redis and Sentinel users' passwords, one per role (JSON)"
_ROLE_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def new_password() -> str:
    """One password: PASSWORD_LENGTH characters drawn by `secrets` from users.py's alphabet."""
    return "".join(secrets.choice(PASSWORD_CHARACTERS) for _ in range(PASSWORD_LENGTH))


@dataclass(frozen=True)
class UsersSecret:
    """Where the secret is and which roles it holds. Nothing here is secret."""

    name: str
    ref: SecretRef  # ARN and version id on AWS; file path and version number locally
    roles: tuple[str, ...]  # sorted


def role_problems(roles: Sequence[str]) -> list[str]:
    """Why a role list cannot be a secret's keys; empty when it can."""
    if not roles:
        return ["must list at least one role"]
    problems = [f"{r!r}: a role key is 1-32 lower-case letters, digits or _" for r in roles
                if not isinstance(r, str) or not _ROLE_KEY.match(r)]
    if len(set(roles)) != len(roles):
        problems.append("lists a role twice")
    return problems


def _checked_roles(roles: Sequence[str]) -> tuple[str, ...]:
    problems = role_problems(roles)
    if problems:
        raise SecretStoreError(f"Redis users' secret roles {list(roles)}: {'; '.join(problems)}")
    return tuple(sorted(roles))


# What the secret holds, as a refusal to overwrite a spoiled one names it.
_DOCUMENT = "a JSON object of one password per role"


def create(store: SecretStore, name_prefix: str, roles: Sequence[str], tags: Mapping[str, str]) -> UsersSecret:
    """A new secret `<name_prefix>-<random>` with a fresh password per role, tagged `tags`."""
    wanted = _checked_roles(roles)
    if not tags:
        raise SecretStoreError("the Redis users' secret needs the stack's tags: they are what proves it ours")
    name = unique_name(name_prefix)
    ref = store.put(name, dump_string_map({r: new_password() for r in wanted}),
                    description=DESCRIPTION, tags=tags)
    return UsersSecret(name=name, ref=ref, roles=wanted)


def stored_roles(store: SecretStore, secret: SecretRef) -> tuple[str, ...]:
    """The roles the secret's current version holds a password for (for refresh and diff)."""
    return tuple(sorted(load_string_map(secret.name, store.get(secret), _DOCUMENT)))


def sync_roles(store: SecretStore, secret: SecretRef, roles: Sequence[str], tags: Mapping[str, str]) -> UsersSecret:
    """Bring the secret's roles to `roles`: new passwords for new roles only, removed roles dropped,
    every other password kept as it is now (a rotated one included). Writes a version only when the
    role set changed; `ref.version_id` is then the new version, else the one given."""
    wanted = _checked_roles(roles)
    current = load_string_map(secret.name, store.get(secret), _DOCUMENT)
    document = {r: current[r] if r in current else new_password() for r in wanted}
    if document == current:
        return UsersSecret(name=secret.name, ref=secret, roles=wanted)
    # By name: the store then checks the secret still carries our tags and no resource policy.
    ref = store.put(secret.name, dump_string_map(document), tags=tags)
    return UsersSecret(name=secret.name, ref=ref, roles=wanted)


def delete(store: SecretStore, secret: SecretRef, recovery_window_days: int, tags: Mapping[str, str]) -> None:
    """Delete the secret, refused unless it carries `tags`; a missing secret is not an error."""
    if not tags:
        raise SecretStoreError("refusing to delete the Redis users' secret without the stack's tags to prove it ours")
    store.delete(secret, recovery_window_days, tags=tags)
