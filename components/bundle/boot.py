"""A node's first act at every boot: read the cluster document, render the node's files from it.

    python3 -m components.bundle.boot /opt/hst-ha/etc/node.json
    python3 -m components.bundle.boot --apply [--expect SHA256] /opt/hst-ha/etc/node.json

`node.json` is what the node's user data writes: its identity (index, address), where its files
live and how it fetches its secrets (`NodeLayout`), where the cluster document is (an SSM parameter),
and, on the initial primary with HST Server, the access key to register. Everything else (timings,
quorum, membership) comes from the document (components/bundle/document.py), rendered by the same
`render_bundle` as the local target's. Redis and Sentinel own their files after the first boot
(the boot script writes them from the templates only once); node.env and the templates are
rendered afresh at every boot from the current document, so they follow a changed document.

Stdlib only, plus boto3 for SSM (the node's python3-boto3). The last document read is kept beside
node.json: when SSM cannot be read at a later boot, the node renders from that copy and says so.

`--apply` is the node's half of a live change (the LiveSettings resource runs it over SSM Run
Command, through components/runtime/files/live-apply.sh): it reads the document again (with
`--expect`, until it is the one Pulumi just wrote), renders the node's files from it exactly as a
boot does (node.env: the start gate's timings and peers; the templates), fills haproxy.cfg's
placeholders with the node's own `hst-ha-secret` as the boot script does and stages it beside the
running one when it differs, and writes the runtime values the daemons take (`LIVE_ENV`, from
components/bundle/live.py) for the script's redis-cli calls. It prints one JSON line, no secret.
There is no fallback to the copy here: a live change applies the current document or nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from components.bundle import document, live
from components.bundle.model import Bundle, NodeLayout, NodePlace, Sinks
from components.bundle.render import render_bundle
from components.bundle.users import ROLE_KEYS, placeholder

__all__ = ["FETCH_BOUND_S", "LIVE_ENV", "NodeIdentity", "apply_node", "digest", "fetch_document", "main",
           "node_bundle", "render_node"]

FETCH_BOUND_S = 60  # as the secret's fetch: instance-profile credentials may take seconds to appear
DOCUMENT_COPY = "cluster.json"  # the last document read, beside node.json
LIVE_ENV = "live-settings.env"  # the runtime values of the last live apply, beside node.json (no secret)
STAGED = ".new"  # haproxy.cfg re-rendered by a live apply, beside the running one until it is reloaded


@dataclass(frozen=True)
class NodeIdentity:
    """What a node's user data says about it: nothing a timing change or a new member changes."""

    index: int
    address: str
    layout: NodeLayout
    parameter: str  # the cluster document's SSM parameter name
    region: str
    access_key_id: str | None = None  # only the initial primary with HST Server registers the access key
    token_verification_key: str | None = None

    def to_json(self) -> str:
        layout = asdict(self.layout)
        if self.layout.sinks is not None:
            # The snapshot interval is a setting: it comes from the document.
            layout["sinks"].pop("backup_interval_minutes")
        data: dict[str, Any] = {"index": self.index, "address": self.address, "layout": layout,
                                "parameter": self.parameter, "region": self.region}
        if self.token_verification_key:
            data["accessKey"] = {"id": self.access_key_id, "verificationKey": self.token_verification_key}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> NodeIdentity:
        data = json.loads(text)
        layout = dict(data["layout"])
        sinks = layout.pop("sinks", None)
        access = data.get("accessKey") or {}
        return cls(
            index=int(data["index"]), address=str(data["address"]),
            layout=NodeLayout(**layout, sinks=Sinks(**sinks) if sinks else None),
            parameter=str(data["parameter"]), region=str(data["region"]),
            access_key_id=access.get("id"), token_verification_key=access.get("verificationKey"),
        )


def fetch_document(parameter: str, region: str, bound_s: float = FETCH_BOUND_S) -> str:
    """The document's text from SSM, retried for `bound_s` (each call bounded too)."""
    import boto3
    import botocore.config

    client = boto3.client("ssm", region_name=region,
                          config=botocore.config.Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}))
    deadline = time.monotonic() + bound_s
    while True:
        try:
            return str(client.get_parameter(Name=parameter)["Parameter"]["Value"])
        except Exception as exc:  # noqa: BLE001 - any failure is retried, then reported by its type
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster document {parameter} was not readable for {bound_s:g} s "
                                   f"({type(exc).__name__}: {exc})") from None
            print(f"hst-ha-boot: cluster document not readable yet ({type(exc).__name__}), retrying", file=sys.stderr)
            time.sleep(2)


def node_bundle(identity: NodeIdentity, text: str) -> Bundle:
    """The node's bundle rendered from the document `text` (nothing written)."""
    parsed = document.parse(text)
    place = NodePlace(identity.index, parsed.addresses) if identity.index < len(parsed.addresses) else None
    if place is None or place.address != identity.address:
        raise document.DocumentError(
            f"the cluster document does not list this node ({identity.address}) as node {identity.index + 1}: "
            f"its nodes are {list(parsed.addresses)}")
    layout = identity.layout
    if layout.sinks is not None:
        interval = parsed.settings.backup_interval_minutes
        layout = replace(layout, sinks=replace(layout.sinks, backup_interval_minutes=interval))
    return render_bundle(parsed.settings, place, layout, token_verification_key=identity.token_verification_key,
                         access_key_id=identity.access_key_id)


def render_node(identity: NodeIdentity, text: str) -> list[str]:
    """Write the node's files rendered from the document `text`; the paths written."""
    bundle = node_bundle(identity, text)
    written = []
    # The node's Python modules came with the code archive (the same files).
    for f in (f for f in bundle.files if not f.path.startswith(f"{identity.layout.home}/components/")):
        path = Path(f.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f.mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f.content)
        os.chmod(tmp, f.mode)
        os.replace(tmp, path)
        written.append(f.path)
    return written


def digest(text: str) -> str:
    """The document's SHA-256: how the deploy side names the document a node must apply."""
    return hashlib.sha256(text.encode()).hexdigest()


def _expected_document(identity: NodeIdentity, expect: str | None, bound_s: float) -> str:
    """The document from SSM; with `expect`, re-read until it is that one (a just-written parameter)."""
    deadline = time.monotonic() + bound_s
    while True:
        text = fetch_document(identity.parameter, identity.region, max(1.0, deadline - time.monotonic()))
        if expect is None or digest(text) == expect:
            return text
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster document {identity.parameter} is {digest(text)[:12]}, not the "
                               f"{expect[:12]} this apply was sent for, after {bound_s:g} s")
        time.sleep(2)


def _filled(template: str, secret_script: str) -> str:
    """The template with each role's placeholder replaced by its password, read with the node's own
    `hst-ha-secret` (as the boot script fills them in); only the roles the template names."""
    roles = [key for key in ROLE_KEYS if placeholder(key) in template]
    if not roles:
        return template
    result = subprocess.run([secret_script, *roles], check=False, capture_output=True, text=True, timeout=120)
    passwords = result.stdout.split("\n")[:len(roles)]
    if result.returncode != 0 or len(passwords) != len(roles):
        why = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        raise RuntimeError(f"could not read the passwords for haproxy.cfg: {why[0]}")
    for key, password in zip(roles, passwords, strict=True):
        template = template.replace(placeholder(key), password)
    return template


def _write(path: Path, text: str, mode: int, like: Path | None = None) -> None:
    """Write whole (temporary file, then rename), with `like`'s owner when it exists."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(tmp, mode)
    if like is not None and like.exists():
        st = like.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


def apply_node(node_json: Path, expect: str | None, bound_s: float = FETCH_BOUND_S) -> dict[str, Any]:
    """The node's half of a live change (see the module docstring); what it did, for the deploy side."""
    identity = NodeIdentity.from_json(node_json.read_text())
    text = _expected_document(identity, expect, bound_s)
    written = render_node(identity, text)
    node_json.with_name(DOCUMENT_COPY).write_text(text)
    settings = document.parse(text).settings
    layout = identity.layout
    # haproxy.cfg as the boot script renders it at first boot: the template just written, filled in.
    running = Path(layout.haproxy_cfg)
    staged = running.with_name(running.name + STAGED)
    cfg = _filled(Path(layout.template(layout.haproxy_cfg)).read_text(), layout.secret_script)
    cfg = cfg.rstrip("\n") + "\n"  # as the boot script's `printf '%s\n' "$(<template)"`
    staged.unlink(missing_ok=True)
    if running.exists() and running.read_text() == cfg:
        haproxy = "unchanged"
    else:
        _write(staged, cfg, 0o600, like=running)
        haproxy = "staged"

    def array(words: list[str]) -> str:
        return "(" + " ".join(shlex.quote(w) for w in words) + ")"

    _write(node_json.with_name(LIVE_ENV), "\n".join([
        "# hst-ha: the runtime values of the cluster document last applied live (components/bundle/live.py).",
        f"SENTINEL_SET={array(live.sentinel_set_words(settings))}",
        f"CONFIG_SET={array(live.config_set_words(settings))}",
        f"CONFIG_GET={array(list(live.REDIS_OPTIONS))}",
        f"HAPROXY_STAGED={shlex.quote(str(staged) if haproxy == 'staged' else '')}",
        "",
    ]), 0o644)
    return {"document": digest(text), "files": len(written), "haproxy": haproxy}


def _apply_main(argv: list[str]) -> int:
    expect = None
    if len(argv) == 3 and argv[0] == "--expect":
        expect, argv = argv[1], argv[2:]
    if len(argv) != 1:
        print("usage: python3 -m components.bundle.boot --apply [--expect SHA256] NODE_JSON", file=sys.stderr)
        return 2
    try:
        done = apply_node(Path(argv[0]), expect)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as error:
        # The last stderr line is what the deploy side reports (ssm_probe's reader); never a password.
        print(f"hst-ha-apply: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(done, sort_keys=True))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--apply"]:
        return _apply_main(argv[1:])
    if len(argv) != 1:
        print("usage: python3 -m components.bundle.boot NODE_JSON", file=sys.stderr)
        return 2
    node_json = Path(argv[0])
    identity = NodeIdentity.from_json(node_json.read_text())
    name = f"node-{identity.index + 1}"
    copy = node_json.with_name(DOCUMENT_COPY)
    try:
        text = fetch_document(identity.parameter, identity.region)
    except RuntimeError as error:
        if not copy.exists():
            print(f"hst-ha-boot {name}: {error}; nothing to render from yet", file=sys.stderr)
            return 1
        print(f"hst-ha-boot {name}: {error}; rendering from the copy of the last one read ({copy})", file=sys.stderr)
        text = copy.read_text()
    try:
        written = render_node(identity, text)
    except (document.DocumentError, ValueError) as error:
        print(f"hst-ha-boot {name}: cannot render from the cluster document {identity.parameter}: {error}",
              file=sys.stderr)
        return 1
    copy.write_text(text)
    print(f"hst-ha-boot {name}: rendered {len(written)} files from the cluster document {identity.parameter}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
