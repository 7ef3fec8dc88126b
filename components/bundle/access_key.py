"""Register the bootstrap access key with HST Server, so that it accepts the bootstrap bearer tokens.

A bearer token is only honoured if the access key named in its scope carries, as its
`token_verification_key`, the public half of the key that signed it (spec aspera-hsts-ha.md §5.2).
The signing key is made before the nodes (the `SigningKey` provider), so its public key can be
rendered into the initial primary's user data, and that node registers the access key through its
local Node API once the cluster is up:

    GET  /access_keys/<id>                      200 -> PUT, 404 -> POST
    PUT  /access_keys/<id>  {"token_verification_key": "<PEM>"}
    POST /access_keys       {"id": "<id>", "token_verification_key": "<PEM>", "storage": {"type": "local", "path": "..."}}

Idempotent: run again, it finds the key and PUTs the same verification key.

Pure module (no Pulumi, no bundle import): it returns the requests as data, the files that hold
their bodies and the shell script that sends them; `components.bundle.render_bundle` adds them to
the initial primary's bundle when HST Server is installed. None of it is secret: a public key.

Not verified against a real HST Server here (none can run in this environment): the requests follow
IBM's documentation and aspera-cli; the tests check the rendered script and the exact requests.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from components.settings import NODE_API_PORT

__all__ = [
    "ASNODEADMIN",
    "AccessKeyStep",
    "DEFAULT_STORAGE_PATH",
    "DEFAULT_SYSTEM_USER",
    "NODE_API_USER",
    "NodeApiRequest",
    "access_key_requests",
    "render_access_key_step",
]

ASNODEADMIN = "/opt/aspera/bin/asnodeadmin"
NODE_API = f"https://127.0.0.1:{NODE_API_PORT}"  # HSTS's own self-signed certificate: loopback only, -k
# No stack setting names these yet: IBM's examples use the transfer user "xfer", and an access
# key needs a storage root that is not the whole filesystem.
DEFAULT_SYSTEM_USER = "xfer"
DEFAULT_STORAGE_PATH = "/srv/aspera"
# A Node API user only this step uses, with a password made on the node for this run and never
# stored: nobody can log in with it afterwards, and a re-run simply sets a new one.
NODE_API_USER = "hst-ha-bootstrap"
WAIT_S = 900  # cloud-init installs HST Server and the Sentinels settle first; bounded all the same


@dataclass(frozen=True)
class NodeApiRequest:
    method: str
    path: str
    body: dict[str, Any] | None = None

    def body_json(self) -> str:
        return json.dumps(self.body, separators=(",", ":")) if self.body is not None else ""


@dataclass(frozen=True)
class AccessKeyStep:
    """The registration step of the initial primary: requests (as data), files and script."""

    probe: NodeApiRequest
    update: NodeApiRequest
    create: NodeApiRequest
    files: tuple[tuple[str, str, int], ...]  # (path, content, mode)
    script_path: str
    script: str


def access_key_requests(
    access_key_id: str, public_key_pem: str, storage_path: str = DEFAULT_STORAGE_PATH
) -> tuple[NodeApiRequest, NodeApiRequest, NodeApiRequest]:
    """(probe, update, create): the exact requests the step may send, in that order of preference."""
    if not public_key_pem.startswith("-----BEGIN PUBLIC KEY-----"):
        # A private key here would end up in user data; refuse anything but a public key.
        raise ValueError("token_verification_key must be a PEM public key (BEGIN PUBLIC KEY)")
    path = f"/access_keys/{quote(access_key_id, safe='')}"
    return (
        NodeApiRequest("GET", path),
        NodeApiRequest("PUT", path, {"token_verification_key": public_key_pem}),
        NodeApiRequest(
            "POST", "/access_keys",
            {"id": access_key_id, "token_verification_key": public_key_pem,
             "storage": {"type": "local", "path": storage_path}},
        ),
    )


def render_access_key_step(
    access_key_id: str,
    public_key_pem: str,
    home: str,
    password_command: str,
    haproxy_address: str,
    haproxy_port: int,
    storage_path: str = DEFAULT_STORAGE_PATH,
    system_user: str = DEFAULT_SYSTEM_USER,
    asnodeadmin: str = ASNODEADMIN,
    node_api: str = NODE_API,
    wait_s: int = WAIT_S,
) -> AccessKeyStep:
    """Render the step for a node whose files live under `home` (the bundle's NodeLayout.home).

    `asnodeadmin`, `node_api` and `wait_s` exist for the tests, which run the script against a
    stand-in Node API; a node uses the defaults.
    """
    probe, update, create = access_key_requests(access_key_id, public_key_pem, storage_path)
    etc = f"{home}/etc/access-key"
    update_body, create_body = f"{etc}/update.json", f"{etc}/create.json"
    script_path = f"{home}/bin/hst-ha-access-key"
    q = shlex.quote
    script = f"""#!/bin/bash
# hst-ha: register the bootstrap access key with this node's Node API (rendered by
# components/bundle/access_key.py). Runs on the initial primary only, after its daemons started.
# GET the key; PUT the verification key if it exists, else POST it. Safe to run again.
set -euo pipefail
umask 077

ACCESS_KEY_ID={q(access_key_id)}
ASNODEADMIN={q(asnodeadmin)}
NODE_API={q(node_api)}
NODE_USER={q(NODE_API_USER)}
SYSTEM_USER={q(system_user)}
KEY_PATH={q(probe.path)}
DEADLINE=$((SECONDS + {int(wait_s)}))

log() {{ echo "hst-ha-access-key: $*" >&2; }}
fail() {{ log "$*; the tokens in the bearer-token secret are not accepted until this succeeds"; exit 1; }}
waited() {{ (( SECONDS < DEADLINE )) || fail "gave up after {int(wait_s)}s waiting for $1"; sleep 2; }}

until [[ -x "$ASNODEADMIN" ]]; do waited "HST Server ($ASNODEADMIN)"; done

# HST Server keeps its access keys in Redis: wait until HAProxy leads to a confirmed primary.
PASSWORD="$({password_command})" || fail "could not fetch the Redis password"
export REDISCLI_AUTH="$PASSWORD"  # redis-cli reads it from the environment, never from its argv
unset PASSWORD
until [[ "$(timeout 3 redis-cli --no-auth-warning -h {q(haproxy_address)} -p {haproxy_port} PING 2>/dev/null)" == PONG ]]; do
  waited "the Redis primary behind HAProxy"
done
unset REDISCLI_AUTH

# A Node API user for this run only. asnodeadmin takes the password as an argument (visible to
# local users for that instant, on a node without any); curl reads it from a 0600 file, not argv.
NODE_PW="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)"
if ! "$ASNODEADMIN" -a -u "$NODE_USER" -p "$NODE_PW" -x "$SYSTEM_USER" >/dev/null 2>&1; then
  "$ASNODEADMIN" -m -u "$NODE_USER" -p "$NODE_PW" -x "$SYSTEM_USER" >/dev/null 2>&1 \\
    || fail "asnodeadmin could not create Node API user $NODE_USER for system user $SYSTEM_USER"
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
printf 'user = "%s:%s"\\n' "$NODE_USER" "$NODE_PW" > "$WORK/curlrc"
unset NODE_PW

# api METHOD PATH [BODY FILE]: prints the HTTP status. The response stays in $WORK/response and
# is never printed on success (a created access key's answer carries its secret).
api() {{
  local body=()
  [[ $# -ge 3 ]] && body=(-H 'Content-Type: application/json' --data-binary "@$3")
  curl -sk -K "$WORK/curlrc" -o "$WORK/response" -w '%{{http_code}}' -X "$1" "${{body[@]}}" "$NODE_API$2" || echo 000
}}

until [[ "$(api GET /ping)" == 200 ]]; do waited "the Node API on $NODE_API"; done

status="$(api {probe.method} "$KEY_PATH")"
case "$status" in
  200) status="$(api {update.method} "$KEY_PATH" {q(update_body)})"; action="updated" ;;
  404) status="$(api {create.method} {q(create.path)} {q(create_body)})"; action="created" ;;
  *) fail "GET $KEY_PATH answered HTTP $status" ;;
esac
if [[ "$status" != 2?? ]]; then
  fail "the Node API answered HTTP $status: $(head -c 300 "$WORK/response" | tr -d '\\n')"
fi
log "access key $ACCESS_KEY_ID $action with the bearer-token verification key"
"""
    files = (
        (update_body, update.body_json() + "\n", 0o644),
        (create_body, create.body_json() + "\n", 0o644),
    )
    return AccessKeyStep(probe, update, create, files, script_path, script)
