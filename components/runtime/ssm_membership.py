"""The membership steps on AWS, through SSM Run Command: shrinking a running cluster in place, and the
planned switchover an operator runs before maintenance (scripts/aws_switchover.py).

The cluster-wide steps (`components.runtime.membership`: move the primary off the leaving nodes,
reset the remaining Sentinels one at a time, switch over) run on a node that stays, from its code
archive, as the operator with the node's own password command: the Redis and Sentinel ports are open
only between cluster members. A leaving node stops and disables its own daemons. The shrink's order is
the local target's (components/local/cluster.py `_shrink`): a settled primary that stays; the new
cluster document applied on the remaining nodes (lower quorum, HAProxy reloaded without the leaving
servers: `ssm_apply.apply_on_nodes`); the leaving daemons stopped while their instances still exist;
then `SENTINEL RESET` on each remaining Sentinel in turn. Pulumi terminates the instances afterwards.

No command carries a setting beyond endpoints and the master name, and none a password.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from components.bundle.model import NodeLayout
from components.runtime import ssm_apply, ssm_probe
from components.runtime.membership import LiveSettingsError
from components.runtime.ssm_apply import NodeApply
from components.settings import ClusterSettings

__all__ = ["MEMBERSHIP_SCRIPT", "STOP_UNITS", "cluster_args", "cluster_step_result", "render_membership_script",
           "run_cluster_step", "shrink_on_nodes", "stop_node"]

MEMBERSHIP_SCRIPT = "membership.sh"  # in files/, package data
# A leaving node's daemons, in the order they stop: its HAProxy first (nothing routes through it any
# more), then its Sentinel (it must not vote while its Redis goes), then its Redis.
STOP_UNITS = ("hst-ha-haproxy.service", "hst-ha-sentinel.service", "hst-ha-redis.service")
STEP_TIMEOUT_S = 300  # on the node: a switchover and two settlings, or five Sentinel resets


def render_membership_script(layout: NodeLayout, step: str, step_args: Sequence[str] = (),
                             units: Sequence[str] = STOP_UNITS) -> str:
    """files/membership.sh with its values in a header after its first line, each quoted for the shell.
    `step` is "cluster" (`step_args`: `python3 -m components.runtime.membership`'s) or "stop"."""
    if step not in ("cluster", "stop"):
        raise ValueError(f"step must be 'cluster' or 'stop', not {step!r}")
    return ssm_probe.render_script(MEMBERSHIP_SCRIPT, {
        "MARK": ssm_probe.MARK,
        "HOME_DIR": layout.home,
        "NODE_ENV": f"{layout.etc}/node.env",
        "SECRET_SCRIPT": layout.secret_script,
        "STEP_TIMEOUT_S": STEP_TIMEOUT_S,
        "STEP": step,
        "UNITS": list(units),
        "STEP_ARGS": list(step_args),
    })


def _reply(node: NodeApply, label: str, encoded: str) -> Any:
    try:
        reply = ssm_probe.parse_probe_output(encoded).replies.get(label)
    except ssm_probe.ProbeError as error:
        raise LiveSettingsError(f"{node.instance_id} ({node.address}): {error}") from None
    if reply is None or isinstance(reply, Exception):
        raise LiveSettingsError(f"{node.instance_id} ({node.address}): the {label} step failed: "
                                f"{reply or 'no answer recorded'}")
    return reply


def _run(node: NodeApply, script: str, region: str, deadline: float, client_factory: Callable[[str], Any] | None,
         poll_s: float | None) -> str:
    try:
        return ssm_probe.run_probe(node.instance_id, region, script, deadline, client_factory, poll_s)
    except ssm_probe.ProbeError as error:
        raise LiveSettingsError(f"{node.instance_id} ({node.address}): {error}") from None


def cluster_step_result(node: NodeApply, encoded: str) -> dict[str, Any]:
    """The cluster step's JSON result from the script's output; LiveSettingsError saying why otherwise."""
    result = _reply(node, "cluster", encoded)
    if not isinstance(result, dict):
        raise LiveSettingsError(f"{node.instance_id} ({node.address}): unreadable membership result: {result!r}")
    return result


def run_cluster_step(node: NodeApply, layout: NodeLayout, step_args: Sequence[str], region: str, deadline: float,
                     client_factory: Callable[[str], Any] | None = None,
                     poll_s: float | None = None) -> dict[str, Any]:
    """`python3 -m components.runtime.membership <step_args>` on `node`; its JSON result."""
    script = render_membership_script(layout, "cluster", step_args)
    return cluster_step_result(node, _run(node, script, region, deadline, client_factory, poll_s))


def stop_node(node: NodeApply, layout: NodeLayout, region: str, deadline: float,
              client_factory: Callable[[str], Any] | None = None, poll_s: float | None = None) -> None:
    """A leaving node's daemons stopped and disabled; LiveSettingsError naming those still active."""
    encoded = _run(node, render_membership_script(layout, "stop"), region, deadline, client_factory, poll_s)
    try:
        reply = ssm_probe.parse_probe_output(encoded).replies.get("stop")
    except ssm_probe.ProbeError as error:
        raise LiveSettingsError(f"{node.instance_id} ({node.address}): {error}") from None
    if reply != []:
        raise LiveSettingsError(f"{node.instance_id} ({node.address}): still active after `systemctl disable "
                                f"--now`: {reply}; nothing terminated (stop them by hand, then `pulumi up` again)")


def cluster_args(step: str, sentinels: Sequence[str], redis_nodes: Sequence[str], master_name: str,
                 *extra: str) -> list[str]:
    """The arguments of `python3 -m components.runtime.membership` for `step`: endpoints, never a password."""
    return [step, "--sentinels", ",".join(sentinels), "--redis", ",".join(redis_nodes), "--master-name", master_name,
            *extra]


def shrink_on_nodes(
    staying: Sequence[NodeApply], leaving: Sequence[NodeApply], settings: ClusterSettings, layout: NodeLayout,
    document_sha256: str, region: str, timeout_s: float, client_factory: Callable[[str], Any] | None = None,
    poll_s: float | None = None, progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The `leaving` nodes leave the running cluster of `staying` + `leaving`, whose remaining nodes have
    the new cluster document (`settings`, `document_sha256`) in SSM already. What was done, per step:
    the primary afterwards, the document applied (`document`, its digest) and what each remaining node
    runs (`applied`, as `ssm_apply.apply_on_nodes`), the nodes stopped, how long the resets took."""
    say = progress or (lambda message: None)
    if not staying or not leaving:
        raise ValueError("a shrink needs nodes that stay and nodes that leave")
    deadline = time.monotonic() + timeout_s
    s = settings
    runner = staying[0]
    everyone = [*staying, *leaving]
    leaving_redis = ",".join(f"{n.address}:{s.redis_port}" for n in leaving)
    moved = run_cluster_step(runner, layout, cluster_args(
        "move-primary-off", [f"{n.address}:{s.sentinel_port}" for n in everyone],
        [f"{n.address}:{s.redis_port}" for n in everyone], s.master_name, "--leaving", leaving_redis),
        region, deadline, client_factory, poll_s)
    for line in moved.get("log", []):
        say(f"{runner.instance_id}: {line}")
    # Lowered quorum and min-replicas first, and the remaining HAProxys stop routing to, and asking, the
    # leaving nodes: the same apply as any changed document.
    applied = ssm_apply.apply_on_nodes(staying, s, layout, document_sha256, region,
                                       max(1.0, deadline - time.monotonic()), client_factory, poll_s, say)
    for node in leaving:
        stop_node(node, layout, region, deadline, client_factory, poll_s)
        say(f"{node.instance_id} ({node.address}): HAProxy, Sentinel and Redis stopped and disabled")
    reset = run_cluster_step(runner, layout, cluster_args(
        "forget", [f"{n.address}:{s.sentinel_port}" for n in staying],
        [f"{n.address}:{s.redis_port}" for n in staying], s.master_name), region, deadline, client_factory, poll_s)
    for line in reset.get("log", []):
        say(f"{runner.instance_id}: {line}")
    return {"primary": moved.get("primary"), "document": document_sha256, "applied": applied,
            "stopped": [n.instance_id for n in leaving], "reset_s": reset.get("reset_s")}
