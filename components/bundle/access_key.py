"""Register the bootstrap access key with HST Server, so that it accepts the bootstrap bearer tokens.

A bearer token is only honoured if the access key named in its scope carries, as its
`token_verification_key`, the public half of the key that signed it (the token format:
`components/runtime/bearer_token.py`).
The signing key is made before the nodes (the `SigningKey` provider), so its public key can be
rendered into the initial primary's user data, and that node registers the access key through its
local Node API once the cluster is up:

    GET  /access_keys/<id>                      200 -> PUT, 404 -> POST
    PUT  /access_keys/<id>  {"token_verification_key": "<PEM>"}
    POST /access_keys       {"id": "<id>", "token_verification_key": "<PEM>",
                             "storage": {"type": "local", "path": "..."}}

Idempotent: run again, it finds the key and PUTs the same verification key.

Pure module (no Pulumi): it returns the requests as data, the files that hold their bodies, the
shipped script that sends them (`files/hst-ha-access-key.sh`) and the values that script reads
from the node's data file; `components.bundle.render_bundle` adds them to the initial primary's
bundle when HST Server is installed. None of it is secret: a public key.

Not verified against a real HST Server here (none can run in this environment): the requests follow
IBM's documentation and aspera-cli; the tests check the rendered script and the exact requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from components.bundle.names import PASSWORD_ALPHABET
from components.bundle.ports import NODE_API_PORT
from components.bundle.scripts import ACCESS_KEY, shipped

__all__ = [
    "ASNODEADMIN",
    "DEFAULT_STORAGE_PATH",
    "DEFAULT_SYSTEM_USER",
    "NODE_API_USER",
    "AccessKeyStep",
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
    script: str  # files/hst-ha-access-key.sh, as shipped
    env: dict[str, str | int]  # what the script reads from the node's data file


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
    env: dict[str, str | int] = {
        "ACCESS_KEY_ID": access_key_id,
        "ACCESS_KEY_PATH": probe.path,
        "ACCESS_KEY_PROBE_METHOD": probe.method,
        "ACCESS_KEY_UPDATE_METHOD": update.method,
        "ACCESS_KEY_UPDATE_BODY": update_body,
        "ACCESS_KEY_CREATE_METHOD": create.method,
        "ACCESS_KEY_CREATE_PATH": create.path,
        "ACCESS_KEY_CREATE_BODY": create_body,
        "ACCESS_KEY_WAIT_S": int(wait_s),
        "ASNODEADMIN": asnodeadmin,
        "NODE_API": node_api,
        "NODE_API_USER": NODE_API_USER,
        "SYSTEM_USER": system_user,
        "PASSWORD_ALPHABET": PASSWORD_ALPHABET,
        "HAPROXY_ADDRESS": haproxy_address,
        "HAPROXY_PORT": haproxy_port,
    }
    files = (
        (update_body, update.body_json() + "\n", 0o644),
        (create_body, create.body_json() + "\n", 0o644),
    )
    return AccessKeyStep(probe, update, create, files, script_path, shipped(ACCESS_KEY), env)
