"""Failover events: the local Sentinel's pub/sub messages, published once per cluster.

Every node runs `python3 -m components.runtime.events <node.env>`. It subscribes to its own
Sentinel (the monitoring user: read-only, subscribing allowed) and turns the messages that matter
to an operator into events:

    +switch-master            a failover completed (who was primary, who is now)
    +sdown / +odown master    the primary is seen down (subjectively / by a quorum)
    -failover-abort-*         a failover attempt gave up

Every Sentinel publishes these, so without a rule a 3-node cluster would send three events per
fact. The rule (`should_emit`): +switch-master is sent by the node that BECAME the primary (exactly
one node has that address, and its Sentinel is up: the leader just chose its Redis for being
reachable); every other event by the "reporter", the first node in address order that is not the
primary's node and whose Sentinel the local Sentinel does not flag as down. Only the reporter's own
Sentinel's messages count, so one node sends each. (In a partition two sides may each elect a
reporter: then a subscriber sees the same fact twice, each event naming its reporter.)

Sinks: `eventbridge:<region>` (PutEvents on the default bus, source `hst-ha`) on AWS,
`file:<path>` (JSON lines) on the local target: the same code path decides and formats both.
`sentinel deny-scripts-reconfig yes` stays: nothing here runs on the Sentinel.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from components.runtime.nodeenv import Sink, node_env, secret, tls_kwargs

__all__ = ["EVENT_SOURCE", "EventSink", "parse_message", "reporter", "should_emit"]

EVENT_SOURCE = "hst-ha"
PATTERNS = ("+switch-master", "+sdown", "+odown", "-failover-abort-*")


def parse_message(channel: str, data: str) -> dict[str, Any] | None:
    """A Sentinel message as an event body, or None when it is not about the primary."""
    words = data.split()
    if channel == "+switch-master" and len(words) == 5:
        return {"type": channel, "master": words[0], "from": f"{words[1]}:{words[2]}", "to": f"{words[3]}:{words[4]}"}
    # `<instance type> <name> <ip> <port> [@ <master name> <ip> <port>]`: only the master itself.
    if len(words) >= 4 and words[0] == "master":
        return {"type": channel, "master": words[1], "primary": f"{words[2]}:{words[3]}", "detail": " ".join(words[4:])}
    return None


def reporter(addresses: list[str], primary_host: str, down: set[str]) -> str | None:
    """The node that reports events other than +switch-master (see the module's docstring)."""
    for address in sorted(addresses, key=ipaddress.ip_address):
        if address != primary_host and address not in down:
            return address
    return None


def should_emit(event: dict[str, Any], me: str, addresses: list[str], down: set[str]) -> bool:
    if event["type"] == "+switch-master":
        return event["to"].rsplit(":", 1)[0] == me
    return reporter(addresses, event["primary"].rsplit(":", 1)[0], down) == me


class EventSink(Sink):
    def emit(self, event: dict[str, Any]) -> None:
        if self.path is not None:
            self.append_lines([json.dumps(event, sort_keys=True)])
            return
        import boto3  # only on AWS

        region = self.spec.split(":", 1)[1]
        answer = boto3.client("events", region_name=region).put_events(
            Entries=[
                {
                    "Source": EVENT_SOURCE,
                    "DetailType": f"Sentinel {event['type']}",
                    "Detail": json.dumps(event),
                }
            ]
        )
        if answer.get("FailedEntryCount"):
            raise RuntimeError(f"EventBridge refused the event: {answer['Entries']}")


def _down_sentinels(client: Any, master: str) -> set[str]:
    """Addresses of the Sentinels this Sentinel flags as down (so the reporter role moves on)."""
    try:
        return {s["ip"] for s in client.sentinel_sentinels(master) if "down" in str(s.get("flags", ""))}
    except Exception:  # noqa: BLE001 - an unknown view must not stop the event; assume none down
        return set()


def run(env_path: str, max_seconds: float | None = None) -> None:
    import redis

    env = node_env(env_path)
    me, port = env["SELF"], int(env["SENTINEL_PORT"])
    addresses = [me, *env.get("PEERS", "").split()]
    sink = EventSink(env["EVENTS_SINK"])
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    while deadline is None or time.monotonic() < deadline:
        try:
            client = redis.Redis(
                me,
                port,
                password=secret(env, "monitor"),
                socket_timeout=None,
                socket_connect_timeout=2,
                decode_responses=True,
                **tls_kwargs(env.get("TLS_CA_FILE")),
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.psubscribe(*PATTERNS)
            print(f"hst-ha-events {env['NODE_NAME']}: listening to {me}:{port}", file=sys.stderr, flush=True)
            for message in pubsub.listen():
                event = parse_message(message["channel"], message["data"])
                if event is None or not should_emit(event, me, addresses, _down_sentinels(client, event["master"])):
                    continue
                event.update(
                    cluster=env.get("CLUSTER", ""),
                    reporter=env["NODE_NAME"],
                    sentinel=f"{me}:{port}",
                    time=datetime.now(UTC).isoformat(timespec="milliseconds"),
                )
                sink.emit(event)
                print(f"hst-ha-events: sent {event['type']}", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - Sentinel restarts, credentials not there yet: retry
            print(f"hst-ha-events: {type(exc).__name__}: {exc}; retrying in 1 s", file=sys.stderr, flush=True)
            time.sleep(1)


if __name__ == "__main__":
    run(sys.argv[1])
