"""The LiveSettings dynamic provider (components/aws/providers/live_settings.py) with SSM stubbed by
botocore's Stubber: refusals at check with the local target's messages, an update that applies on
every node through SSM Run Command and reads back, and what a node that did not take a value says."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from components.aws.providers.live_settings import LiveSettingsProvider
from components.runtime import ssm_apply, ssm_probe
from components.runtime.live_settings import REDIS_OPTIONS, SENTINEL_OPTIONS, LiveSettingsError, settings_document
from components.settings import ClusterSettings, parse_settings

REGION = "eu-west-1"
INSTANCES = ["i-0000000000000001", "i-0000000000000002", "i-0000000000000003"]
ADDRESSES = ["10.42.0.10", "10.42.64.10", "10.42.128.10"]


def settings(**raw: Any) -> ClusterSettings:
    return parse_settings({k: str(v) for k, v in raw.items()})


def props(s: ClusterSettings, templates: list[str] | None = None) -> dict[str, Any]:
    return {"settings": settings_document(s), "instance_ids": INSTANCES, "addresses": ADDRESSES,
            "haproxy_templates": templates or ["cfg"] * 3, "region": REGION, "quorum": {}, "timeout_s": 30}


def node_output(s: ClusterSettings, haproxy: str = "reloaded", lag: int | None = None) -> str:
    """What files/live-apply.sh prints on a node whose daemons took `s` (min-replicas-max-lag `lag` if given)."""
    mark = ssm_probe.MARK
    master: list[str] = ["name", s.master_name]
    for name, value in SENTINEL_OPTIONS.items():
        master += [name, str(value(s))]
    config = {o: str(f(s)) for o, f in REDIS_OPTIONS.items()}
    if lag is not None:
        config["min-replicas-max-lag"] = str(lag)
    parts = [("sentinel-set", "OK"), ("config-set", "OK"), ("config-rewrite", "OK"), ("sentinel-master", master),
             ("config-get", config), ("haproxy", haproxy)]
    raw = "".join(f"{mark} {label}\n{json.dumps(reply)}\n{mark}-rc 0\n" for label, reply in parts) + f"{mark}-end\n"
    return base64.b64encode(gzip.compress(raw.encode())).decode() + "\n"


class StubbedSsm:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import botocore.session
        from botocore.stub import Stubber

        self.client = botocore.session.get_session().create_client(
            "ssm", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
        self.stubber = Stubber(self.client)
        self.sent: list[dict[str, Any]] = []
        self.client.meta.events.register(
            "provide-client-params.ssm.SendCommand", lambda params, **_: self.sent.append(dict(params)))
        monkeypatch.setattr("boto3.client", lambda service, **_: self.client)
        monkeypatch.setattr(ssm_probe, "POLL_S", 0.01)

    def command(self, instance: str, output: str) -> None:
        command_id = str(uuid.uuid4())
        self.stubber.add_response("send_command", {"Command": {"CommandId": command_id}})
        self.stubber.add_response("get_command_invocation", {
            "CommandId": command_id, "InstanceId": instance, "Status": "Success", "ResponseCode": 0,
            "StandardOutputContent": output, "StandardErrorContent": ""})


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubbedSsm]:
    stubbed = StubbedSsm(monkeypatch)
    with stubbed.stubber:
        yield stubbed
    stubbed.stubber.assert_no_pending_responses()


def test_check_refuses_what_no_running_cluster_can_change_with_the_local_targets_message() -> None:
    provider = LiveSettingsProvider()
    result = provider.check(props(settings()), props(settings(redisPort=31416, downAfterMs=2000)))
    assert [f.property for f in result.failures] == ["settings"]
    assert "redisPort 31415 -> 31416: cannot change on a running cluster" in result.failures[0].reason
    assert "nothing was applied" in result.failures[0].reason
    shrink = provider.check(props(settings(nodeCount=5)), props(settings()))
    assert "nodeCount 5 -> 3: shrinking a running cluster in place is not wired on AWS" in shrink.failures[0].reason
    assert provider.check(props(settings()), props(settings(downAfterMs=2000))).failures == []
    assert provider.check({}, props(settings())).failures == []  # create: nothing running to compare with


def test_diff_applies_only_when_what_the_nodes_run_would_change() -> None:
    provider = LiveSettingsProvider()
    assert not provider.diff("id", props(settings()), {**props(settings()), "timeout_s": 99}).changes
    assert provider.diff("id", props(settings()), props(settings(downAfterMs=2000))).changes
    assert provider.diff("id", props(settings()), props(settings(), ["cfg", "cfg", "other"])).changes


def test_update_applies_on_every_node_over_ssm_and_reads_back(ssm: StubbedSsm) -> None:
    new = settings(downAfterMs=2000, minReplicasMaxLag=5)
    for instance in INSTANCES:
        ssm.command(instance, node_output(new))
    template = "frontend x\n    tcp-check send AUTH\\ hst-ha-monitor\\ @@MONITOR_PASSWORD@@\\r\\n\n"
    result = LiveSettingsProvider().update("id", props(settings()), props(new, [template] * 3))
    outs = result.outs or {}
    assert outs["plan"]["changes"] == ["downAfterMs 5000 -> 2000", "minReplicasMaxLag 10 -> 5"]
    assert set(outs["applied"]) == set(INSTANCES)
    assert outs["applied"][INSTANCES[0]]["sentinel"]["down-after-milliseconds"] == 2000
    assert [s["InstanceIds"] for s in ssm.sent] == [[i] for i in INSTANCES]  # one node at a time
    script = ssm.sent[0]["Parameters"]["commands"][0]
    assert "SENTINEL_SET=(down-after-milliseconds 2000 failover-timeout 15000 parallel-syncs 1 quorum 2)" in script
    assert "CONFIG_SET=(min-replicas-to-write 1 min-replicas-max-lag 5 repl-diskless-sync-max-replicas 2)" in script
    assert "REDIS=10.42.0.10:31415" in script and "/opt/hst-ha/bin/hst-ha-secret operator" in script
    encoded = base64.b64encode(gzip.compress(template.encode(), mtime=0)).decode()
    assert f"HAPROXY_TEMPLATE={encoded}" in script  # the template travels with its placeholder, no password


def test_a_node_that_did_not_take_a_value_fails_the_update_naming_it(ssm: StubbedSsm) -> None:
    new = settings(minReplicasMaxLag=5)
    ssm.command(INSTANCES[0], node_output(new))
    ssm.command(INSTANCES[1], node_output(new, lag=10))
    with pytest.raises(LiveSettingsError, match=f"{INSTANCES[1]}: its Redis runs .*min-replicas-max-lag': 10"):
        LiveSettingsProvider().update("id", props(settings()), props(new))


def test_a_haproxy_unit_that_cannot_reload_is_named() -> None:
    new = settings(downAfterMs=2000)
    with pytest.raises(LiveSettingsError, match="systemctl reload hst-ha-haproxy.service failed"):
        ssm_apply.judge_apply_output("i-1", node_output(new, haproxy="reload-failed"), new)
    assert ssm_apply.judge_apply_output("i-1", node_output(new, haproxy="unchanged"), new)["haproxy"] == "unchanged"


def test_the_apply_script_asks_the_nodes_ports_over_tls_with_the_nodes_ca_file() -> None:
    from components.aws.cloud_config import aws_layout

    layout = aws_layout("arn:aws:secretsmanager:eu-west-1:123456789012:secret:users-AbCdEf", "eu-west-1")
    on = ssm_apply.render_apply_script(settings(), "10.0.1.10", layout, None)
    off = ssm_apply.render_apply_script(settings(tlsEnabled=False), "10.0.1.10", layout, None)
    assert f"\nTLS_CA_FILE={layout.tls_ca_file}\n" in on and "\nTLS_CA_FILE=''\n" in off
    # Every redis-cli call goes through `ask`, which adds the flags only when the file is named.
    calls = [line for line in on.splitlines() if "redis-cli " in line and not line.lstrip().startswith("#")]
    assert len(calls) == 1 and '${ca:+--tls --cacert "$ca"}' in calls[0]
