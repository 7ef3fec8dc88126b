"""Apply the runtime settings on every node through AWS Systems Manager Run Command.

The AWS face of `components.runtime.live_settings`: the security group opens the Redis and Sentinel
ports only between cluster members, so each node applies the settings to its own daemons.
`AWS-RunShellScript` runs `files/live-apply.sh` there: `SENTINEL SET` on its Sentinel, `CONFIG SET`
and `CONFIG REWRITE` on its Redis, its haproxy.cfg re-rendered from the template the program renders
for it (placeholders only; the node fills in the monitoring password itself) and `systemctl reload`ed,
then what its daemons run afterwards, read back. The options and values are the very ones
`live_settings` sets on the local target (`REDIS_OPTIONS`, `SENTINEL_OPTIONS`), and they are checked
the same way. The output is read with the probe's reader (`ssm_probe.parse_probe_output`).

What a node needs: `redis-cli`, `haproxy`, `gzip`, `base64`, systemd, and its own secret command
(`<home>/bin/hst-ha-secret <role>`, in every bundle: it reads the Redis users' secret with the
instance role).
HAProxy is reloaded without a restart only when its unit reloads in place (master-worker mode,
`haproxy -Ws` with `ExecReload=kill -USR2 $MAINPID`); a unit that cannot reload is reported as
`reload-failed` and the node keeps its previous haproxy.cfg. The former worker must not keep its
sessions for long (it runs no health check, so the fence no longer judges them): `hard-stop-after`
in haproxy.cfg bounds that on a node, as the local target ends them once the new worker routes.
"""

from __future__ import annotations

import base64
import gzip
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from components.bundle.model import NodeLayout
from components.bundle.users import MONITOR, OPERATOR
from components.runtime import ssm_probe
from components.runtime.live_settings import REDIS_OPTIONS, SENTINEL_OPTIONS, LiveSettingsError, reply_fields
from components.settings import ClusterSettings

__all__ = ["APPLY_SCRIPT", "NodeApply", "apply_on_nodes", "judge_apply_output", "render_apply_script"]

APPLY_SCRIPT = "live-apply.sh"  # in files/, package data
HAPROXY_UNIT = "hst-ha-haproxy.service"
HAPROXY_DONE = ("reloaded", "unchanged", "skipped")


@dataclass(frozen=True)
class NodeApply:
    """One node: where SSM reaches it, its address, and its haproxy.cfg template (None: leave HAProxy alone)."""

    instance_id: str
    address: str
    haproxy_template: str | None


@cache
def _source() -> str:
    return resources.files("components.runtime").joinpath("files", APPLY_SCRIPT).read_text(encoding="utf-8")


def render_apply_script(settings: ClusterSettings, address: str, layout: NodeLayout,
                        haproxy_template: str | None) -> str:
    """`files/live-apply.sh` with this node's values in a header after its first line, each quoted
    for the shell. No secret: the node reads the passwords with its own `hst-ha-secret`."""
    q = shlex.quote

    def array(words: Sequence[str]) -> str:
        return "(" + " ".join(q(w) for w in words) + ")"

    sentinel_set = [w for o, f in SENTINEL_OPTIONS.items() for w in (o, str(f(settings)))]
    config_set = [w for o, f in REDIS_OPTIONS.items() for w in (o, str(f(settings)))]
    template = base64.b64encode(gzip.compress(haproxy_template.encode(), mtime=0)).decode() if haproxy_template else ""
    header = [
        f"MARK={q(ssm_probe.MARK)}",
        f"TIMEOUT_S={ssm_probe.PER_CALL_TIMEOUT_S}",
        f"MASTER={q(settings.master_name)}",
        f"REDIS={q(f'{address}:{settings.redis_port}')}",
        f"SENTINEL={q(f'{address}:{settings.sentinel_port}')}",
        f"OPERATOR_USER={q(str(OPERATOR.redis_user))}",
        # tlsEnabled: the node's Redis and Sentinel speak TLS only; verified with the CA file its boot wrote.
        f"TLS_CA_FILE={q(layout.tls_ca_file if settings.tls_enabled else '')}",
        f"PASSWORD_COMMAND={q(f'{layout.secret_script} {OPERATOR.key}')}",
        f"MONITOR_PASSWORD_COMMAND={q(f'{layout.secret_script} {MONITOR.key}')}",
        f"SENTINEL_SET={array(sentinel_set)}",
        f"CONFIG_SET={array(config_set)}",
        f"CONFIG_GET={array(list(REDIS_OPTIONS))}",
        f"HAPROXY_CFG={q(layout.haproxy_cfg)}",
        f"HAPROXY_UNIT={q(HAPROXY_UNIT)}",
        f"HAPROXY_PLACEHOLDER={q(MONITOR.placeholder)}",
        f"HAPROXY_TEMPLATE={q(template)}",
    ]
    first, rest = _source().split("\n", 1)
    return "\n".join([first, *header, rest])


def judge_apply_output(instance_id: str, encoded: str, settings: ClusterSettings) -> dict[str, Any]:
    """What the node runs after the apply, checked against `settings`; LiveSettingsError naming the node
    and the step otherwise. Returns {"sentinel": {...}, "redis": {...}, "haproxy": status}."""
    try:
        output = ssm_probe.parse_probe_output(encoded)
    except ssm_probe.ProbeError as error:
        raise LiveSettingsError(f"{instance_id}: {error}") from None
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
                             "with ExecReload?); the previous haproxy.cfg was put back",
            "no-monitor-password": "the node could not read the monitoring password with its instance role",
        }.get(haproxy, haproxy)
        raise LiveSettingsError(f"{instance_id}: {why}")
    return {"sentinel": sentinel, "redis": redis_now, "haproxy": haproxy}


def apply_on_nodes(
    nodes: Sequence[NodeApply], settings: ClusterSettings, layout: NodeLayout, region: str, timeout_s: float,
    client_factory: Callable[[str], Any] | None = None, poll_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Apply on each node in turn (one HAProxy reloading at a time); per instance id what it runs now."""
    say = progress or (lambda message: None)
    deadline = time.monotonic() + timeout_s
    results = {}
    for node in nodes:
        script = render_apply_script(settings, node.address, layout, node.haproxy_template)
        try:
            encoded = ssm_probe.run_probe(node.instance_id, region, script, deadline, client_factory, poll_s)
        except ssm_probe.ProbeError as error:
            raise LiveSettingsError(f"{node.instance_id} ({node.address}): {error}") from None
        results[node.instance_id] = judge_apply_output(node.instance_id, encoded, settings)
        say(f"{node.instance_id} ({node.address}): settings in force, HAProxy {results[node.instance_id]['haproxy']}")
    return results
