"""Rotate one Redis role's password without downtime.

Redis (and Sentinel) users may hold several passwords at once, so a rotation never has a moment
where the password a client holds is refused:

1. add    every Redis and Sentinel user of the role accepts the new password as well as the old
          (`ACL SETUSER u >new`, persisted by CONFIG REWRITE / SENTINEL FLUSHCONFIG);
2. publish the secret document carries the new password (clients that fetch it on connect switch);
3. switch the copies the daemons hold themselves take the new one: `masterauth` (replication),
          `sentinel auth-pass`/`sentinel-pass` (Sentinel), HAProxy's checks (monitoring, through
          `reconfigure`, which rewrites haproxy.cfg and restarts HAProxy node by node), HST Server's
          aspera.conf (its role, through `reconfigure` where HST Server runs);
4. remove every user of the role forgets the old password (`ACL SETUSER u <old`), persisted.

Plain Python over redis-py, authenticating as the operator role. The local target runs it from
`scripts/local_cluster.py rotate-password`; on AWS the same steps run on one node (over SSM Run
Command, the Redis and Sentinel ports being open only inside the cluster), with `publish` writing
a new secret version and `reconfigure` running on every node. No password is ever printed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from components.bundle.users import OPERATOR, REPLICATION, SENTINEL, parse_secret, role
from components.runtime.quorum import one_shot_client

__all__ = ["RotationError", "Topology", "rotate"]

Endpoint = tuple[str, int]
Progress = Callable[[str], None]


class RotationError(RuntimeError):
    """A step failed; says which and on which server. The secret is left consistent with the servers
    (the old password stays valid until every copy took the new one)."""


@dataclass(frozen=True)
class Topology:
    redis: Sequence[Endpoint]
    sentinels: Sequence[Endpoint]
    master_name: str
    tls_ca_file: str | None = None  # tlsEnabled: the CA the nodes' certificates are verified with


def _run(endpoint: Endpoint, user: str | None, password: str, *commands: tuple[str, ...],
         tls_ca_file: str | None) -> None:  # no default: every call says how it reaches the node
    client = one_shot_client(endpoint, password, 5.0, user, tls_ca_file)
    try:
        for command in commands:
            client.execute_command(*command)
    except Exception as exc:  # noqa: BLE001 - reported with where it happened, never with a value
        text = str(exc)
        raise RotationError(f"{endpoint[0]}:{endpoint[1]}: {commands[0][0]} {commands[0][1]} failed: "
                            f"{text.split(' ', 1)[0] if text else type(exc).__name__}") from None
    finally:
        client.close()


def _set_password(topology: Topology, redis_user: str | None, sentinel_user: str | None, operator: str,
                  rule: str) -> None:
    """`ACL SETUSER <user> <rule>` (`>pw` adds, `<pw` removes) on every server the role has a user on, persisted."""
    if redis_user:
        for endpoint in topology.redis:
            _run(endpoint, OPERATOR.redis_user, operator, ("ACL", "SETUSER", redis_user, rule), ("CONFIG", "REWRITE"),
                 tls_ca_file=topology.tls_ca_file)
    if sentinel_user:
        for endpoint in topology.sentinels:
            _run(endpoint, OPERATOR.sentinel_user, operator, ("ACL", "SETUSER", sentinel_user, rule),
                 ("SENTINEL", "FLUSHCONFIG"), tls_ca_file=topology.tls_ca_file)


def rotate(
    key: str,
    new_password: str,
    current: dict[str, str],
    topology: Topology,
    publish: Callable[[dict[str, str]], None],
    reconfigure: Callable[[str, str, str], None] | None = None,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Rotate role `key` from `current[key]` to `new_password`; returns the new document.

    `publish(document)` stores the new secret document. `reconfigure(key, old, new)` updates the
    copies outside Redis and Sentinel (HAProxy's checks for the monitoring role, HST Server's
    aspera.conf for its role); it runs after `publish` and before the old password is removed.
    """
    say = progress or (lambda message: None)
    target = role(key)
    old = current[key]
    document = parse_secret(json.dumps({**current, key: new_password}))
    if new_password == old:
        raise RotationError(f"the new {key} password is the current one")

    def operator_password() -> str:
        # Once published, an operator rotation goes on with the new password (both are valid).
        return document[OPERATOR.key] if published else current[OPERATOR.key]

    published = False
    redis_user, sentinel_user = target.redis_user, target.sentinel_user
    _set_password(topology, redis_user, sentinel_user, operator_password(), f">{new_password}")
    say(f"{key}: every server accepts the old and the new password")

    publish(document)
    published = True
    say(f"{key}: the secret holds the new password")

    if key == REPLICATION.key:
        for endpoint in topology.redis:
            _run(endpoint, OPERATOR.redis_user, operator_password(),
                 ("CONFIG", "SET", "masterauth", new_password), ("CONFIG", "REWRITE"), tls_ca_file=topology.tls_ca_file)
    if key == SENTINEL.key:
        for endpoint in topology.sentinels:
            _run(endpoint, OPERATOR.sentinel_user, operator_password(),
                 ("SENTINEL", "SET", topology.master_name, "auth-pass", new_password),
                 ("SENTINEL", "CONFIG", "SET", "sentinel-pass", new_password), tls_ca_file=topology.tls_ca_file)
    if reconfigure is not None:
        reconfigure(key, old, new_password)
    say(f"{key}: every daemon's own copy uses the new password")

    _set_password(topology, redis_user, sentinel_user, operator_password(), f"<{old}")
    say(f"{key}: the old password is refused everywhere")
    return document
