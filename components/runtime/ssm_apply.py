"""Apply a changed cluster document on every node through AWS Systems Manager Run Command.

The AWS face of `components.runtime.live_settings`: the security group opens the Redis and Sentinel
ports only between cluster members, so each node applies the change to its own daemons.
`AWS-RunShellScript` runs `files/live-apply.sh` there. The node reads the cluster document (the SSM
parameter Pulumi updated just before) and renders its files from it with the renderer it boots with
(`python3 -m components.bundle.boot --apply`: node.env, the templates, haproxy.cfg filled in with
its own `hst-ha-secret`), then `SENTINEL SET` on its Sentinel, `CONFIG SET` and `CONFIG REWRITE` on
its Redis (the options of components/bundle/live.py, the very ones `live_settings` sets on the local
target), reads them back, and reloads HAProxy in place: `systemctl reload` of its master-worker unit
(components/aws/cloud_config.py): the former worker keeps its sessions, judged by the new one's
fence, as on the local target. The command carries no setting and no password: which node, where its
files are, and the digest of the document to apply. The output is read with the probe's reader
(`ssm_probe.parse_probe_output`) and judged against the settings here.

What a node needs: `redis-cli`, `haproxy`, `pgrep`, `gzip`, `base64`, systemd, the code archive in
its home, and its own secret command (`<home>/bin/hst-ha-secret <role>`, in every bundle: it reads
the Redis users' secret with the instance role).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from components.bundle.model import NodeLayout
from components.runtime import ssm_probe
from components.runtime.live_settings import REDIS_OPTIONS, SENTINEL_OPTIONS, LiveSettingsError, reply_fields
from components.settings import ClusterSettings

__all__ = ["APPLY_SCRIPT", "HAPROXY_DONE", "HAPROXY_UNIT", "NodeApply", "apply_on_nodes", "judge_apply_output",
           "render_apply_script"]

APPLY_SCRIPT = "live-apply.sh"  # in files/, package data
HAPROXY_UNIT = "hst-ha-haproxy.service"
HAPROXY_DONE = ("reloaded", "unchanged")
# How long the node waits for HAProxy's new worker to route after the reload (the fence holds new
# clients until every check ran once: about a second).
RELOAD_WAIT_S = 30


@dataclass(frozen=True)
class NodeApply:
    """One node: where SSM reaches it, and its address."""

    instance_id: str
    address: str


def render_apply_script(layout: NodeLayout, document_sha256: str) -> str:
    """`files/live-apply.sh` with the node's paths and the document's digest in a header after its
    first line, each quoted for the shell. The same on every node; no setting, no secret."""
    return ssm_probe.render_script(APPLY_SCRIPT, {
        "MARK": ssm_probe.MARK,
        "TIMEOUT_S": ssm_probe.PER_CALL_TIMEOUT_S,
        "HOME_DIR": layout.home,
        "NODE_JSON": f"{layout.etc}/node.json",
        "SECRET_SCRIPT": layout.secret_script,
        "DOCUMENT_SHA256": document_sha256,
        "HAPROXY_UNIT": HAPROXY_UNIT,
        "RELOAD_WAIT_S": RELOAD_WAIT_S,
    })


def judge_apply_output(instance_id: str, encoded: str, settings: ClusterSettings,
                       document_sha256: str) -> dict[str, Any]:
    """What the node runs after the apply, checked against `settings` and the document it was sent for;
    LiveSettingsError naming the node and the step otherwise. Returns {"sentinel": {...}, "redis": {...},
    "haproxy": status, "files": how many the node rendered}."""
    try:
        output = ssm_probe.parse_probe_output(encoded)
    except ssm_probe.ProbeError as error:
        raise LiveSettingsError(f"{instance_id}: {error}") from None
    rendered = output.replies.get("render")
    if rendered is None or isinstance(rendered, Exception):
        raise LiveSettingsError(f"{instance_id}: rendering from the cluster document failed: "
                                f"{rendered or 'no answer recorded'}")
    if not isinstance(rendered, dict) or rendered.get("document") != document_sha256:
        raise LiveSettingsError(f"{instance_id}: rendered from another cluster document than {document_sha256[:12]}: "
                                f"{rendered}")
    if "password" in output.replies:
        raise LiveSettingsError(f"{instance_id}: {output.replies['password']}")
    for label in ("sentinel-set", "config-set", "config-rewrite", "sentinel-master", "config-get", "haproxy"):
        reply = output.replies.get(label)
        if reply is None or isinstance(reply, Exception):
            raise LiveSettingsError(f"{instance_id}: {label} failed: {reply or 'no answer recorded'}")
    master = reply_fields(output.replies["sentinel-master"])
    sentinel = {o: int(master[o]) for o in SENTINEL_OPTIONS if o in master}
    config = reply_fields(output.replies["config-get"])
    redis_now = {o: int(config[o]) for o in REDIS_OPTIONS if o in config}
    wanted_sentinel = {o: f(settings) for o, f in SENTINEL_OPTIONS.items()}
    wanted_redis = {o: f(settings) for o, f in REDIS_OPTIONS.items()}
    if sentinel != wanted_sentinel:
        raise LiveSettingsError(
            f"{instance_id}: its Sentinel runs {sentinel} after SENTINEL SET, not {wanted_sentinel}")
    if redis_now != wanted_redis:
        raise LiveSettingsError(f"{instance_id}: its Redis runs {redis_now} after CONFIG SET, not {wanted_redis}")
    haproxy = str(output.replies["haproxy"])
    if haproxy not in HAPROXY_DONE:
        why = {
            "refused": "HAProxy refuses the re-rendered haproxy.cfg (haproxy -c); the previous one stays",
            "reload-failed": f"systemctl reload {HAPROXY_UNIT} failed (does its unit reload in place, `haproxy -Ws` "
                             "with ExecReload? a node booted before it did must be replaced once); the previous "
                             "haproxy.cfg was put back",
            "not-running": f"{HAPROXY_UNIT} is not running: nothing to reload (`systemctl status {HAPROXY_UNIT}`)",
            "restarted": f"{HAPROXY_UNIT} restarted instead of reloading in place (its master's pid changed)",
            "no-new-worker": f"HAProxy started no new worker that routes within {RELOAD_WAIT_S} s of the reload",
        }.get(haproxy, haproxy)
        raise LiveSettingsError(f"{instance_id}: {why}")
    return {"sentinel": sentinel, "redis": redis_now, "haproxy": haproxy, "files": rendered.get("files")}


def apply_on_nodes(
    nodes: Sequence[NodeApply], settings: ClusterSettings, layout: NodeLayout, document_sha256: str, region: str,
    timeout_s: float, client_factory: Callable[[str], Any] | None = None, poll_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Apply on each node in turn (one HAProxy reloading at a time); per instance id what it runs now."""
    say = progress or (lambda message: None)
    deadline = time.monotonic() + timeout_s
    results = {}
    script = render_apply_script(layout, document_sha256)
    for node in nodes:
        try:
            encoded = ssm_probe.run_probe(node.instance_id, region, script, deadline, client_factory, poll_s)
        except ssm_probe.ProbeError as error:
            raise LiveSettingsError(f"{node.instance_id} ({node.address}): {error}") from None
        results[node.instance_id] = judge_apply_output(node.instance_id, encoded, settings, document_sha256)
        say(f"{node.instance_id} ({node.address}): settings in force, HAProxy {results[node.instance_id]['haproxy']}")
    return results
