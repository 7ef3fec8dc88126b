"""The node's observers: metrics exporters, the failover-event listener, the CloudWatch collector and
the snapshot job, as bundle files and daemon steps (only when the layout names `Sinks`).

- redis_exporter twice (`files/hst-ha-exporter.sh`): Redis on REDIS_EXPORTER_PORT, Sentinel as its
  own target on SENTINEL_EXPORTER_PORT, both on the node's private address, as the monitoring user.
- HAProxy's built-in Prometheus exporter at /metrics and the fence's counters at /fence on
  HAPROXY_METRICS_PORT, also on the private address (`render_haproxy_metrics`).
- `python3 -m components.runtime.{events,metrics,backup}`: the modules are shipped under the node's
  home (`RUNTIME_MODULES`, with the package every bundle has: scripts.module_files), the same files
  the local target and the tests import, and run from there.

Nothing but the security group's rules for `metricsCidrs` reaches the metrics ports (network.py).
"""

from __future__ import annotations

from components.bundle import scripts
from components.bundle.document import NodeSettings
from components.bundle.model import BundleFile, NodeLayout, NodePlace, StartStep
from components.bundle.ports import HAPROXY_METRICS_PORT, REDIS_EXPORTER_PORT, SENTINEL_EXPORTER_PORT

__all__ = [
    "PYTHON",
    "fence_metrics",
    "RUNTIME_MODULES",
    "observer_files",
    "observer_steps",
    "observer_values",
    "render_haproxy_metrics",
]

PYTHON = "/usr/bin/python3"  # the distribution's, with python3-redis and python3-boto3
RUNTIME_MODULES = ("nodeenv", "events", "metrics", "backup")
METRICS_FRONTEND = "hst_ha_metrics"


def exporter_script(layout: NodeLayout) -> str:
    return f"{layout.bin}/hst-ha-exporter"


def fence_metrics(layout: NodeLayout) -> str:
    """The fence's /fence service, beside the fence: HAProxy loads it at start (the node renders it
    with its other files, before any daemon starts)."""
    return f"{layout.etc}/hst-ha-fence-metrics.lua"


def observer_values(settings: NodeSettings, layout: NodeLayout) -> dict[str, scripts.EnvValue]:
    assert layout.sinks is not None
    return {
        "CLUSTER": layout.sinks.cluster,
        "REDIS_EXPORTER_PORT": REDIS_EXPORTER_PORT,
        "SENTINEL_EXPORTER_PORT": SENTINEL_EXPORTER_PORT,
        "HAPROXY_METRICS_PORT": HAPROXY_METRICS_PORT,
        "EVENTS_SINK": layout.sinks.events,
        "METRICS_SINK": layout.sinks.metrics,
        "BACKUP_SINK": layout.sinks.backups,
        "BACKUP_INTERVAL_MINUTES": layout.sinks.backup_interval_minutes,
    }


def observer_files(layout: NodeLayout) -> list[BundleFile]:
    """The observers' scripts; their Python modules are `RUNTIME_MODULES` (render_bundle ships them)."""
    return [
        BundleFile(exporter_script(layout), scripts.shipped(scripts.EXPORTER), 0o755),
        BundleFile(fence_metrics(layout), scripts.shipped(scripts.FENCE_METRICS), 0o644),
    ]


def observer_steps(place: NodePlace, layout: NodeLayout) -> list[StartStep]:
    """After HAProxy: they observe what the steps before them run."""

    def python(module: str) -> tuple[str, ...]:
        return (PYTHON, "-m", f"components.runtime.{module}", layout.node_env)

    return [
        StartStep(
            "redis-exporter",
            (exporter_script(layout), "redis"),
            daemon=True,
            user="redis",
            ready_port=REDIS_EXPORTER_PORT,
            ready_address=place.address,
        ),
        StartStep(
            "sentinel-exporter",
            (exporter_script(layout), "sentinel"),
            daemon=True,
            user="redis",
            ready_port=SENTINEL_EXPORTER_PORT,
            ready_address=place.address,
        ),
        StartStep("events", python("events"), daemon=True, user="redis", workdir=layout.home),
        StartStep("metrics", python("metrics"), daemon=True, user="redis", workdir=layout.home),
        StartStep("backup", python("backup"), daemon=True, user="redis", workdir=layout.home),
    ]


def render_haproxy_metrics(place: NodePlace) -> list[str]:
    """haproxy.cfg's metrics frontend: HAProxy's exporter and the fence's counters, private address only."""
    return [
        "",
        f"frontend {METRICS_FRONTEND}",
        "    mode http",
        f"    bind {place.address}:{HAPROXY_METRICS_PORT}",
        "    timeout client 10s",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    http-request use-service lua.hst_ha_metrics if { path /fence }",
        "    http-request return status 404",
    ]
