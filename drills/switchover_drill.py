"""The planned switchover drill: `components/runtime/switchover.py` run on a cluster with every client
kind writing, the way an operator runs it before maintenance (`local_cluster.py switchover`).

The fault clock starts just before the writes are paused (after the other replicas' priorities are
set and seen, which takes up to 10 s and pauses nothing); `write_pause_s` is the module's own measure (CLIENT
PAUSE to CLIENT UNPAUSE on the old primary), `longest_gap_by_kind_s` the clients' (the longest time
each kind went without an acknowledgement).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from components.bundle.users import OPERATOR
from components.runtime.switchover import direct_commands, switchover
from drills.client_kinds import CLIENT_KINDS, writer_kind

if TYPE_CHECKING:
    from drills.drill import Drill

__all__ = ["drill_switchover"]


def drill_switchover(d: Drill, tail_s: float) -> str:
    """11. A planned switchover to the most caught-up replica, with every client kind writing."""
    cluster = d.cluster
    redis_nodes = [f"{h}:{p}" for h, p in cluster.redis_endpoints]
    sentinels = [f"{h}:{p}" for h, p in cluster.sentinel_endpoints]
    # Connections kept: the writers are threads of this process, and each round trip waits for the GIL.
    commands = direct_commands(cluster.password(OPERATOR.key), tls_ca_file=cluster.tls_ca_file,
                               reuse_connections=True)
    report = switchover(sentinels, redis_nodes, d.settings.master_name, commands,
                        progress=lambda m: d.progress(f"  {m}"),
                        on_pause=lambda: d.fault("planned switchover: CLIENT PAUSE WRITE", lambda: None))
    d.extra["switchover"] = report.to_dict()
    d.extra["write_pause_s"] = round(report.write_pause_s, 3)
    if not d.wait_recovered():
        d.extra["not_recovered"] = True
    time.sleep(tail_s)
    d.writers.stop_all()
    d.extra["failed_writes_by_client_kind"] = failed_writes(d)
    return d.settle()


def failed_writes(d: Drill) -> dict[str, dict[str, int]]:
    """Per client kind, the writes that got an error during the run, by error: a connection ended (the
    switchover ending the sessions on the old primary, HAProxy with no routable server until the
    Sentinels switch), a refusal by Redis (READONLY: a connection routed to the old primary just after
    its demotion) or a client timeout (the pause outlasting the client's socket timeout). None was
    acknowledged; what the client does next is its own (README, "ambiguous outcomes")."""
    out: dict[str, Counter[str]] = {kind: Counter() for kind in CLIENT_KINDS}
    for writer in d.writers.writers:
        out[writer_kind(writer)].update(error for _, _, _, error in writer.errors)
    return {kind: dict(errors) for kind, errors in out.items()}
