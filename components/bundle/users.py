"""The cluster's Redis and Sentinel users: one per role, each with its own password and only the
commands that role needs. Defined once; the renderer writes them into redis.conf and sentinel.conf,
HAProxy's checks, the quorum probes, the local target, the drills and the rotation read them here.

The passwords live in ONE secret, a JSON object with one password per role (`ROLE_KEYS`): Secrets
Manager on AWS, a 0600 file locally. The config templates carry a placeholder per role
(`placeholder`), which the boot script fills in once, at first boot.

Users are declared by `user` lines in redis.conf and sentinel.conf, not in an aclfile: Redis's
CONFIG REWRITE (which Sentinel runs at every failover) and Sentinel's own config flush write the
users back into the same file, with their passwords as SHA-256 hashes, so a rotation persists with
the rest of the node's state and there is no second file to keep 0600 and written once. (With an
aclfile, CONFIG REWRITE leaves users alone and ACL SAVE is a separate step; Sentinel 7.0 has no
CONFIG REWRITE for it.)

Who authenticates as whom:
- HST Server sends only `AUTH <password>` (hiredis, `db_password`), so its role is Redis's `default`
  user, restricted: no @admin, no @dangerous (CONFIG, SHUTDOWN, FLUSHALL, REPLICAOF, MIGRATE, DEBUG,
  KEYS...), no PUBLISH (a client could forge `__sentinel__:hello` and poison the Sentinels' view of
  the topology), but INFO. It has no user on the Sentinels.
- Replication (`masteruser`/`masterauth`) and Sentinel (`sentinel auth-user`/`auth-pass` to Redis,
  `sentinel sentinel-user`/`sentinel-pass` between Sentinels) each have their own user, with the
  minimal sets Redis documents.
- Monitoring (HAProxy's checks, the boot script's questions, the quorum probes): read-only. On Redis
  PING, INFO, ROLE; on Sentinel it is the `default` user (Sentinel's requirepass in ACL form), so a
  client that sends only a password, such as redis-py's Sentinel client, gets read-only queries.
- Operators: everything, on both.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from components.bundle.names import PASSWORD_ALPHABET

__all__ = [
    "HST", "MONITOR", "OPERATOR", "REPLICATION", "ROLES", "ROLE_KEYS", "SENTINEL", "Role", "parse_secret",
    "placeholder", "redis_user_lines", "role", "sentinel_user_lines",
]

MIN_PASSWORD_LENGTH = 16


@dataclass(frozen=True)
class Role:
    key: str  # the role's key in the secret document
    redis_user: str | None  # the Redis user it authenticates as (None: no access to Redis)
    redis_rules: str
    sentinel_user: str | None  # the Sentinel user it authenticates as (None: no access to Sentinels)
    sentinel_rules: str
    purpose: str

    @property
    def placeholder(self) -> str:
        return placeholder(self.key)


def placeholder(key: str) -> str:
    """Stands for a role's password in the config templates. The boot script derives the same text
    from the role key (`@@${key^^}_PASSWORD@@`)."""
    return f"@@{key.upper()}_PASSWORD@@"


# Sentinel answers read-only queries to its default user; FAILOVER, RESET, REMOVE, SET, CONFIG and
# DEBUG stay the operator's. Subscribing is allowed (event listeners), publishing is not.
_SENTINEL_READ = (
    "+ping +info +role +sentinel|get-master-addr-by-name +sentinel|master +sentinel|masters "
    "+sentinel|replicas +sentinel|slaves +sentinel|sentinels +sentinel|ckquorum +sentinel|myid "
    "+subscribe +psubscribe +unsubscribe +punsubscribe"
)

HST = Role(
    "hst", "default", "~* &* +@all -@admin -@dangerous +info -publish -spublish",
    None, "", "HST Server (and any application through HAProxy): data commands only",
)
REPLICATION = Role(
    "replication", "hst-ha-replication", "resetchannels -@all +psync +replconf +ping",
    None, "", "replicas authenticating to their primary (masteruser/masterauth)",
)
SENTINEL = Role(
    "sentinel", "hst-ha-sentinel",
    # Redis's documented minimal set for Sentinel.
    "resetchannels &__sentinel__:hello -@all +multi +slaveof +ping +exec +subscribe +config|rewrite +role "
    "+publish +info +client|setname +client|kill +script|kill",
    # What a Sentinel sends to its peers: PING, CLIENT SETNAME, hello messages, and the vote request.
    "hst-ha-sentinel", "resetchannels &__sentinel__:hello -@all +ping +publish +client|setname "
    "+sentinel|is-master-down-by-addr",
    "the Sentinels, to Redis (auth-user/auth-pass) and to each other (sentinel-user/sentinel-pass)",
)
MONITOR = Role(
    "monitor", "hst-ha-monitor", "resetchannels -@all +ping +info +role",
    "default", f"resetchannels &* -@all {_SENTINEL_READ}",
    "HAProxy's checks, the boot script's questions and the quorum probes: read-only",
)
OPERATOR = Role(
    "operator", "hst-ha-operator", "~* &* +@all", "hst-ha-operator", "~* &* +@all",
    "operators and the node's own admin steps (Sentinel timers, password rotation): everything",
)

ROLES = (HST, REPLICATION, SENTINEL, MONITOR, OPERATOR)
ROLE_KEYS = tuple(r.key for r in ROLES)


def role(key: str) -> Role:
    for r in ROLES:
        if r.key == key:
            return r
    raise KeyError(f"no Redis role {key!r}; the roles are {', '.join(ROLE_KEYS)}")


def _user_line(user: str, rules: str, password: str) -> str:
    return f"user {user} reset on >{password} {rules}"


def redis_user_lines() -> list[str]:
    """redis.conf's users, each with its role's placeholder for a password."""
    return [_user_line(r.redis_user, r.redis_rules, r.placeholder) for r in ROLES if r.redis_user]


def sentinel_user_lines() -> list[str]:
    """sentinel.conf's users, each with its role's placeholder for a password."""
    return [_user_line(r.sentinel_user, r.sentinel_rules, r.placeholder) for r in ROLES if r.sentinel_user]


_PASSWORD = re.compile(f"^[{PASSWORD_ALPHABET}]{{{MIN_PASSWORD_LENGTH},}}$")


def parse_secret(text: str) -> dict[str, str]:
    """The secret document as {role key: password}, every role present and well formed. Errors name
    the role, never a value."""
    try:
        document = json.loads(text)
    except ValueError:
        raise ValueError("the Redis users' secret is not a JSON object of one password per role "
                         f"({', '.join(ROLE_KEYS)})") from None
    if not isinstance(document, dict):
        raise ValueError(f"the Redis users' secret must be a JSON object with the keys {', '.join(ROLE_KEYS)}")
    missing = [k for k in ROLE_KEYS if k not in document]
    if missing:
        raise ValueError(f"the Redis users' secret has no password for {', '.join(missing)}")
    bad = [k for k in ROLE_KEYS if not isinstance(document[k], str) or not _PASSWORD.match(document[k])]
    if bad:
        raise ValueError(f"the Redis users' secret: the password of {', '.join(bad)} must be at least "
                         f"{MIN_PASSWORD_LENGTH} characters of [{PASSWORD_ALPHABET}]")
    return {k: document[k] for k in ROLE_KEYS}
