"""The CloudWatch collector: every minute, scrape this node's exporters and publish what the alarms read.

Every node runs `python3 -m components.runtime.metrics <node.env>`. It reads the node's Prometheus
endpoints (components/bundle/observe.py: redis_exporter for Redis and for Sentinel, the fence's
counters in HAProxy), asks every node's Redis for its ROLE (the one fact no single node's exporter
has), and publishes to CloudWatch (`cloudwatch:<region>:<namespace>`, PutMetricData) or, on the
local target, to JSON lines (`file:<path>`).

Cluster-wide metrics carry only the `Cluster` dimension, so each alarm reads one metric whatever
the node count, and its statistic (Minimum or Maximum over every node's datapoint) is the rule:
see `CLUSTER_METRICS` and components/aws/monitoring.py, which builds the alarms from the same table.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request

from components.runtime.nodeenv import Sink, node_env, secret, tls_kwargs

__all__ = ["CLUSTER_METRICS", "NODE_METRICS", "MetricSink", "collect", "parse_prometheus"]

# name -> what one node's datapoint says. Alarms: components/aws/monitoring.py.
CLUSTER_METRICS = {
    "SentinelsOk": "Sentinels this node's Sentinel sees healthy, itself included (redis_sentinel_master_ok_sentinels)",
    "CkquorumOk": "1 when this node's Sentinel answers SENTINEL CKQUORUM OK (redis_sentinel_master_ckquorum_status)",
    "PrimaryCount": "nodes whose Redis answers ROLE master, as this node sees them",
    "RedisReachable": "nodes whose Redis answers ROLE at all, as this node sees them",
    "HaproxyRoute": "1 when this node's HAProxy has a routable primary (the fence's hst_ha_fence_routable)",
    "ReplicationLagSeconds": "the primary's oldest replica acknowledgement, in seconds (only the primary sends it)",
}
NODE_METRICS = ("RedisUp", "IsPrimary", "HaproxyRoute")

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition as (name, labels, value) samples."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            samples.append((match[1], dict(_LABEL.findall(match[2] or "")), float(match[3])))
    return samples


def _first(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, value in samples:
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


def _scrape(url: str) -> list[tuple[str, dict[str, str], float]] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return parse_prometheus(answer.read().decode())
    except OSError:
        return None


def _roles(env: dict[str, str], password: str) -> list[str | None]:
    import redis

    roles: list[str | None] = []
    for address in [env["SELF"], *env.get("PEERS", "").split()]:
        try:
            client = redis.Redis(
                address,
                int(env["REDIS_PORT"]),
                username=env.get("MONITOR_REDIS_USER") or None,
                password=password,
                socket_timeout=2,
                socket_connect_timeout=2,
                **tls_kwargs(env.get("TLS_CA_FILE")),
            )
            roles.append(client.execute_command("ROLE")[0].decode())
        except Exception:  # noqa: BLE001 - down, unreachable or refusing: not reachable
            roles.append(None)
    return roles


def collect(env: dict[str, str], password: str) -> tuple[dict[str, float], dict[str, float]]:
    """(cluster-wide, per-node) values from this node's point of view; a source that does not
    answer leaves its metrics out (the alarm's missing-data rule decides)."""
    me = env["SELF"]
    cluster: dict[str, float] = {}
    node: dict[str, float] = {}
    redis_samples = _scrape(f"http://{me}:{env['REDIS_EXPORTER_PORT']}/metrics")
    if redis_samples is not None:
        node["RedisUp"] = _first(redis_samples, "redis_up") or 0.0
        node["IsPrimary"] = 1.0 if _first(redis_samples, "redis_instance_info", role="master") else 0.0
        lags = [v for n, _, v in redis_samples if n == "redis_connected_slave_lag_seconds"]
        if node["IsPrimary"] and lags:
            cluster["ReplicationLagSeconds"] = max(lags)
    sentinel_samples = _scrape(f"http://{me}:{env['SENTINEL_EXPORTER_PORT']}/metrics")
    if sentinel_samples is not None:
        master = env["MASTER_NAME"]
        cluster["SentinelsOk"] = (
            _first(sentinel_samples, "redis_sentinel_master_ok_sentinels", master_name=master) or 0.0
        )
        cluster["CkquorumOk"] = (
            _first(sentinel_samples, "redis_sentinel_master_ckquorum_status", master_name=master) or 0.0
        )
    fence = _scrape(f"http://{me}:{env['HAPROXY_METRICS_PORT']}/fence")
    if fence is not None:
        routable = sum(v for n, _, v in fence if n == "hst_ha_fence_routable")
        cluster["HaproxyRoute"] = node["HaproxyRoute"] = 1.0 if routable >= 1 else 0.0
    roles = _roles(env, password)
    cluster["PrimaryCount"] = float(sum(1 for r in roles if r == "master"))
    cluster["RedisReachable"] = float(sum(1 for r in roles if r is not None))
    return cluster, node


class MetricSink(Sink):
    """`cloudwatch:<region>:<namespace>` or `file:<path>`."""

    def publish(self, cluster_name: str, node_name: str, cluster: dict[str, float], node: dict[str, float]) -> None:
        data = [
            {"MetricName": k, "Dimensions": [{"Name": "Cluster", "Value": cluster_name}], "Value": v}
            for k, v in cluster.items()
        ]
        data += [
            {
                "MetricName": k,
                "Dimensions": [{"Name": "Cluster", "Value": cluster_name}, {"Name": "Node", "Value": node_name}],
                "Value": v,
            }
            for k, v in node.items()
        ]
        if self.path is not None:
            self.append_lines([json.dumps({"time": time.time(), "node": node_name, **d}, sort_keys=True) for d in data])
            return
        import boto3  # only on AWS

        _, region, namespace = self.spec.split(":", 2)
        boto3.client("cloudwatch", region_name=region).put_metric_data(Namespace=namespace, MetricData=data)


def run(env_path: str, period_s: float = 60.0) -> None:
    env = node_env(env_path)
    sink = MetricSink(env["METRICS_SINK"])
    password = None
    while True:
        started = time.monotonic()
        try:
            password = password or secret(env, "monitor")
            cluster, node = collect(env, password)
            sink.publish(env.get("CLUSTER", ""), env["NODE_NAME"], cluster, node)
        except Exception as exc:  # noqa: BLE001 - the next round tries again; missing data raises the alarms
            print(f"hst-ha-metrics: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        time.sleep(max(1.0, period_s - (time.monotonic() - started)))


if __name__ == "__main__":
    run(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 60.0)
