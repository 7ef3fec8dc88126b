"""The LiveSettings dynamic provider (components/aws/providers/live_settings.py) with SSM stubbed by
botocore's Stubber: refusals at check with the local target's messages, an update that has every node
apply the cluster document through SSM Run Command and reads back, and what a node that did not take a
value says. And the node's own half (`python3 -m components.bundle.boot --apply`), run here on a
node's files in a temporary home, its SSM read stubbed: it renders from the document as a boot does."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from components.aws.cloud_config import aws_layout, node_code
from components.aws.providers.live_settings import LiveSettingsProvider
from components.aws.providers.membership import ClusterMembershipProvider
from components.bundle import boot, document
from components.bundle.users import MONITOR, ROLE_KEYS, placeholder
from components.local.state import new_password
from components.runtime import ssm_apply, ssm_membership, ssm_probe
from components.runtime.live_settings import REDIS_OPTIONS, SENTINEL_OPTIONS, LiveSettingsError, settings_to_json
from components.settings import ClusterSettings, parse_settings

REGION = "eu-west-1"
INSTANCES = ["i-0000000000000001", "i-0000000000000002", "i-0000000000000003"]
ADDRESSES = ["10.42.0.10", "10.42.64.10", "10.42.128.10"]


def settings(**raw: Any) -> ClusterSettings:
    return parse_settings({k: str(v) for k, v in raw.items()})


def document_text(s: ClusterSettings) -> str:
    addresses = list(s.node_private_ips) or [*ADDRESSES, "10.42.0.11", "10.42.64.11"][:s.node_count]
    return document.dump(document.build(s, addresses))


def props(s: ClusterSettings) -> dict[str, Any]:
    return {"settings": settings_to_json(s), "document": document_text(s), "instance_ids": INSTANCES,
            "addresses": ADDRESSES, "region": REGION, "quorum": {}, "timeout_s": 30}


def node_output(s: ClusterSettings, haproxy: str = "reloaded", lag: int | None = None,
                rendered: str | None = None) -> str:
    """What files/live-apply.sh prints on a node whose daemons took `s` (min-replicas-max-lag `lag` if given)
    after rendering from the document `rendered` (default: `s`'s)."""
    mark = ssm_probe.MARK
    render = {"document": boot.digest(rendered or document_text(s)), "files": 12, "haproxy": "staged"}
    master: list[str] = ["name", s.master_name]
    for name, value in SENTINEL_OPTIONS.items():
        master += [name, str(value(s))]
    config = {o: str(f(s)) for o, f in REDIS_OPTIONS.items()}
    if lag is not None:
        config["min-replicas-max-lag"] = str(lag)
    parts = [("render", render), ("sentinel-set", "OK"), ("config-set", "OK"), ("config-rewrite", "OK"),
             ("sentinel-master", master), ("config-get", config), ("haproxy", haproxy)]
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
    # A shrink is ClusterMembership's, which runs before this resource (test_a_shrink_...below).
    assert provider.check(props(settings(nodeCount=5)), props(settings())).failures == []
    assert provider.check(props(settings()), props(settings(downAfterMs=2000))).failures == []
    assert provider.check({}, props(settings())).failures == []  # create: nothing running to compare with


def test_diff_applies_only_when_what_the_nodes_run_would_change() -> None:
    provider = LiveSettingsProvider()
    assert not provider.diff("id", props(settings()), {**props(settings()), "timeout_s": 99}).changes
    assert provider.diff("id", props(settings()), props(settings(downAfterMs=2000))).changes
    assert provider.diff("id", props(settings()), {**props(settings()), "document": "changed"}).changes


def test_update_applies_on_every_node_over_ssm_and_reads_back(ssm: StubbedSsm) -> None:
    new = settings(downAfterMs=2000, minReplicasMaxLag=5)
    for instance in INSTANCES:
        ssm.command(instance, node_output(new))
    result = LiveSettingsProvider().update("id", props(settings()), props(new))
    outs = result.outs or {}
    assert outs["plan"]["changes"] == ["downAfterMs 5000 -> 2000", "minReplicasMaxLag 10 -> 5"]
    assert set(outs["applied"]) == set(INSTANCES)
    assert outs["applied"][INSTANCES[0]]["sentinel"]["down-after-milliseconds"] == 2000
    assert [s["InstanceIds"] for s in ssm.sent] == [[i] for i in INSTANCES]  # one node at a time
    scripts = {s["Parameters"]["commands"][0] for s in ssm.sent}
    assert len(scripts) == 1  # the same command on every node: no node's values, no setting in it
    (script,) = scripts
    # The node renders from the parameter: the command names the document by its digest only.
    assert f"DOCUMENT_SHA256={boot.digest(document_text(new))}" in script
    assert "NODE_JSON=/opt/hst-ha/etc/node.json" in script and "SECRET_SCRIPT=/opt/hst-ha/bin/hst-ha-secret" in script
    header = script.split("\n")[2:10]  # after the here-document's line and the shebang
    assert [line.split("=", 1)[0] for line in header] == [
        "MARK", "TIMEOUT_S", "HOME_DIR", "NODE_JSON", "SECRET_SCRIPT", "DOCUMENT_SHA256", "HAPROXY_UNIT",
        "RELOAD_WAIT_S"]
    assert "2000" not in "\n".join(header) and "down-after" not in script


def test_a_node_that_rendered_another_document_fails_the_update(ssm: StubbedSsm) -> None:
    new = settings(downAfterMs=2000)
    ssm.command(INSTANCES[0], node_output(new, rendered=document_text(settings())))
    with pytest.raises(LiveSettingsError, match=f"{INSTANCES[0]}: rendered from another cluster document"):
        LiveSettingsProvider().update("id", props(settings()), props(new))


def test_a_node_that_did_not_take_a_value_fails_the_update_naming_it(ssm: StubbedSsm) -> None:
    new = settings(minReplicasMaxLag=5)
    ssm.command(INSTANCES[0], node_output(new))
    ssm.command(INSTANCES[1], node_output(new, lag=10))
    with pytest.raises(LiveSettingsError, match=f"{INSTANCES[1]}: its Redis runs .*min-replicas-max-lag': 10"):
        LiveSettingsProvider().update("id", props(settings()), props(new))


FIVE = [*ADDRESSES, "10.42.0.11", "10.42.64.11"]
FIVE_INSTANCES = [*INSTANCES, "i-0000000000000004", "i-0000000000000005"]


def membership_props(count: int) -> dict[str, Any]:
    s = settings(nodeCount=count)
    return {"settings": settings_to_json(s), "document": document_text(s), "instance_ids": FIVE_INSTANCES[:count],
            "addresses": FIVE[:count], "region": REGION, "timeout_s": 30}


def step_output(label: str, reply: Any, rc: int = 0) -> str:
    """What files/membership.sh prints: one step's answer, framed and encoded as the probe's."""
    mark = ssm_probe.MARK
    body = json.dumps(reply) if rc == 0 else str(reply)
    raw = f"{mark} {label}\n{body}\n{mark}-rc {rc}\n{mark}-end\n"
    return base64.b64encode(gzip.compress(raw.encode())).decode() + "\n"


def test_membership_check_lets_only_the_last_nodes_leave() -> None:
    provider = ClusterMembershipProvider()
    assert provider.check(membership_props(5), membership_props(3)).failures == []
    assert provider.check({}, membership_props(3)).failures == []
    middle = {**membership_props(3), "addresses": [FIVE[0], FIVE[1], FIVE[3]]}
    (failure,) = provider.check(membership_props(5), middle).failures
    assert "only the last nodes in order can leave" in failure.reason and "10.42.128.10" in failure.reason
    moved = {**membership_props(3), "addresses": ["10.9.0.1", "10.9.0.2", "10.9.0.3"]}
    assert "no node of the running cluster" in provider.check(membership_props(3), moved).failures[0].reason


def test_a_grow_or_a_replaced_instance_contacts_no_node(ssm: StubbedSsm) -> None:
    provider = ClusterMembershipProvider()
    assert provider.diff("id", membership_props(3), membership_props(5)).changes
    assert not provider.diff("id", membership_props(3), {**membership_props(3), "document": "x"}).changes
    earlier_shrink = {"left": FIVE[3:], "document": "0" * 64, "applied": {i: {} for i in INSTANCES}}
    outs = provider.update("id", {**membership_props(3), "last_change": earlier_shrink}, membership_props(5)).outs or {}
    assert outs["addresses"] == FIVE and outs["last_change"] == {}
    assert ssm.sent == []


def test_a_shrink_moves_the_primary_applies_stops_the_leaving_nodes_then_resets(ssm: StubbedSsm) -> None:
    # In the local target's order, each step on the node that must do it, before Pulumi removes node-4/5.
    new = settings(nodeCount=3)
    ssm.command(INSTANCES[0], step_output("cluster", {"primary": f"{FIVE[1]}:31415", "log": ["switched over"]}))
    for instance in INSTANCES:
        ssm.command(instance, node_output(new))
    for instance in FIVE_INSTANCES[3:]:
        ssm.command(instance, step_output("stop", []))
    ssm.command(INSTANCES[0], step_output("cluster", {"reset_s": 21.5, "log": []}))
    outs = ClusterMembershipProvider().update("id", membership_props(5), membership_props(3)).outs or {}
    assert [s["InstanceIds"] for s in ssm.sent] == [[i] for i in [INSTANCES[0], *INSTANCES, *FIVE_INSTANCES[3:],
                                                                  INSTANCES[0]]]
    scripts = [s["Parameters"]["commands"][0] for s in ssm.sent]
    assert "STEP=cluster" in scripts[0] and "move-primary-off" in scripts[0]
    assert f"--leaving {FIVE[3]}:31415,{FIVE[4]}:31415" in scripts[0]
    assert all(f"{a}:41415" in scripts[0] for a in FIVE)  # every Sentinel still running is asked
    assert "DOCUMENT_SHA256=" + boot.digest(document_text(new)) in scripts[1]
    assert "STEP=stop" in scripts[4] and "UNITS=(hst-ha-haproxy.service hst-ha-sentinel.service" in scripts[4]
    assert "forget" in scripts[6] and FIVE[3] not in scripts[6]  # the remaining Sentinels know only the remaining
    for script in scripts[:1] + scripts[4:]:  # the membership steps' commands: paths, endpoints, nothing else
        header = script.split("\n")[2:10]
        assert [line.split("=", 1)[0] for line in header] == [
            "MARK", "HOME_DIR", "NODE_ENV", "SECRET_SCRIPT", "STEP_TIMEOUT_S", "STEP", "UNITS", "STEP_ARGS"]
    change = outs["last_change"]
    assert change["left"] == FIVE[3:] and change["stopped"] == FIVE_INSTANCES[3:]
    assert change["primary"] == f"{FIVE[1]}:31415" and set(change["applied"]) == set(INSTANCES)
    assert change["document"] == boot.digest(document_text(new))  # LiveSettings does not apply it again


def test_live_settings_takes_the_shrinks_apply_of_the_same_document_on_the_same_nodes_as_its_own(
        ssm: StubbedSsm) -> None:
    old, new = settings(nodeCount=5), settings(nodeCount=3)
    applied = {i: {"sentinel": {}, "redis": {}, "haproxy": "reloaded", "files": 12} for i in INSTANCES}
    shrink = {"left": FIVE[3:], "document": boot.digest(document_text(new)), "applied": applied}
    before = {**props(old), "instance_ids": FIVE_INSTANCES, "addresses": FIVE}
    outs = LiveSettingsProvider().update("id", before, {**props(new), "shrink": shrink}).outs or {}
    assert ssm.sent == [] and outs["applied"] == applied
    assert "nodeCount 5 -> 3" in outs["plan"]["changes"]


TIMING_CHANGE = settings(downAfterMs=2000)


@pytest.mark.parametrize("shrink", [
    {},  # ClusterMembership did nothing to the running cluster in this update
    {"document": "0" * 64, "applied": {i: {} for i in INSTANCES}},
    {"document": boot.digest(document_text(TIMING_CHANGE)), "applied": {i: {} for i in INSTANCES[:2]}},
], ids=["nothing-shrunk", "an-earlier-document", "not-every-node"])
def test_live_settings_applies_unless_the_shrink_applied_this_document_on_every_node(
        ssm: StubbedSsm, shrink: dict[str, Any]) -> None:
    for instance in INSTANCES:
        ssm.command(instance, node_output(TIMING_CHANGE))
    outs = LiveSettingsProvider().update("id", props(settings()), {**props(TIMING_CHANGE), "shrink": shrink}).outs or {}
    assert [s["InstanceIds"] for s in ssm.sent] == [[i] for i in INSTANCES] and set(outs["applied"]) == set(INSTANCES)


def test_a_leaving_node_whose_daemons_still_run_stops_the_shrink_naming_them(ssm: StubbedSsm) -> None:
    ssm.command(INSTANCES[0], step_output("cluster", {"primary": f"{FIVE[0]}:31415", "log": []}))
    for instance in INSTANCES:
        ssm.command(instance, node_output(settings(nodeCount=3)))
    ssm.command(FIVE_INSTANCES[3], step_output("stop", '["hst-ha-redis.service"]', rc=1))
    with pytest.raises(LiveSettingsError, match=f"{FIVE_INSTANCES[3]} .*still active .*hst-ha-redis.service"):
        ClusterMembershipProvider().update("id", membership_props(5), membership_props(3))


def test_a_failed_cluster_step_says_why() -> None:
    encoded = step_output("cluster", "move-primary-off: the Sentinels do not agree on a settled primary", rc=1)
    node = ssm_apply.NodeApply(INSTANCES[0], ADDRESSES[0])
    with pytest.raises(LiveSettingsError, match="the cluster step failed: .*do not agree on a settled primary"):
        ssm_membership._reply(node, "cluster", encoded)


def test_a_haproxy_unit_that_cannot_reload_is_named() -> None:
    new = settings(downAfterMs=2000)
    sha = boot.digest(document_text(new))
    with pytest.raises(LiveSettingsError, match="systemctl reload hst-ha-haproxy.service failed"):
        ssm_apply.judge_apply_output("i-1", node_output(new, haproxy="reload-failed"), new, sha)
    with pytest.raises(LiveSettingsError, match="restarted instead of reloading in place"):
        ssm_apply.judge_apply_output("i-1", node_output(new, haproxy="restarted"), new, sha)
    unchanged = ssm_apply.judge_apply_output("i-1", node_output(new, haproxy="unchanged"), new, sha)
    assert unchanged["haproxy"] == "unchanged"


def test_a_node_that_could_not_render_says_why() -> None:
    mark = ssm_probe.MARK
    raw = (f"{mark} render\nhst-ha-apply: RuntimeError: the cluster document /x is 0123, not the 4567 this apply "
           f"was sent for, after 60 s\n{mark}-rc 1\n{mark}-end\n")
    encoded = base64.b64encode(gzip.compress(raw.encode())).decode()
    with pytest.raises(LiveSettingsError, match="rendering from the cluster document failed: .*not the 4567"):
        ssm_apply.judge_apply_output("i-1", encoded, settings(), "4567")


@pytest.fixture
def node_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, boot.NodeIdentity, list[str]]]:
    """Node 2's files as its first boot left them, in a temporary home: node.json, the users' secret
    behind its secrets command (a file instead of Secrets Manager) and haproxy.cfg filled in; SSM
    stubbed to serve `served`."""
    secret = tmp_path / "users.json"
    passwords = {key: new_password() for key in ROLE_KEYS}
    secret.write_text(json.dumps(passwords))
    layout = replace(aws_layout("arn:secret", REGION, tls_secret_arn="arn:tls"), home=str(tmp_path),
                     secrets_command=f"cat {secret}")
    identity = boot.NodeIdentity(1, ADDRESSES[1], layout, "/stack/cluster-document", REGION)
    node_json = Path(layout.etc) / "node.json"
    node_json.parent.mkdir(parents=True)
    node_json.write_text(identity.to_json())
    # The code archive's files, as the node's fetcher extracts them before anything renders: among
    # them the module bin/hst-ha-secret runs (render_node leaves {home}/components/ to the archive).
    for f in node_code(layout.home):
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        Path(f.path).write_text(f.content)
    served = [document_text(settings())]
    monkeypatch.setattr(boot, "fetch_document", lambda *_args, **_kw: served[0])
    monkeypatch.setattr(boot.time, "sleep", lambda _s: served.append(served.pop(0)))
    boot.render_node(identity, served[0])
    template = Path(layout.template(layout.haproxy_cfg)).read_text()
    Path(layout.haproxy_cfg).write_text(template.replace(MONITOR.placeholder, passwords[MONITOR.key]))
    yield passwords[MONITOR.key], identity, served


def test_the_node_apply_renders_node_env_and_haproxy_cfg_from_the_changed_document(node_home) -> None:
    monitor, identity, served = node_home
    layout = identity.layout
    node_json = Path(layout.etc) / "node.json"
    assert boot.apply_node(node_json, None)["haproxy"] == "unchanged"  # the same document: nothing to reload
    new = settings(downAfterMs=2000, nodeCount=5, nodePrivateIps=",".join([*ADDRESSES, "10.42.0.11", "10.42.64.11"]))
    text = document.dump(document.build(new, new.node_private_ips))
    served[0] = text
    done = boot.apply_node(node_json, boot.digest(text))
    assert done == {"document": boot.digest(text), "files": done["files"], "haproxy": "staged"}
    node_env = Path(layout.node_env).read_text()
    assert "DOWN_AFTER_MS=2000\n" in node_env and "SENTINEL_MAJORITY=3\n" in node_env
    assert "10.42.64.11" in node_env  # the new peers
    staged = Path(layout.haproxy_cfg + ".new").read_text()
    # The renderer's own haproxy.cfg for this node and document, filled in as the boot script does.
    expected = boot.node_bundle(identity, text)
    template = next(f.content for f in expected.files if f.path == layout.template(layout.haproxy_cfg))
    assert staged == template.replace(placeholder("monitor"), monitor).rstrip("\n") + "\n"
    assert "server node-5 10.42.64.11:31415" in staged and os.stat(layout.haproxy_cfg + ".new").st_mode & 0o777 == 0o600
    assert Path(layout.etc, "cluster.json").read_text() == text
    # The runtime values for the script's redis-cli calls, from the same table as the local target's.
    values = subprocess.run(["bash", "-c", f"source {shlex.quote(str(Path(layout.etc, boot.LIVE_ENV)))}; "
                             'echo "${SENTINEL_SET[*]}|${CONFIG_SET[*]}|$HAPROXY_STAGED"'],
                            check=True, capture_output=True, text=True).stdout.strip()
    assert values == ("down-after-milliseconds 2000 failover-timeout 15000 parallel-syncs 1 quorum 3|"
                      "min-replicas-to-write 1 min-replicas-max-lag 10 repl-diskless-sync-max-replicas 4|"
                      f"{layout.haproxy_cfg}.new")
    assert monitor not in Path(layout.etc, boot.LIVE_ENV).read_text()


def test_the_node_apply_waits_for_the_document_it_was_sent_for_and_says_so(node_home, monkeypatch) -> None:
    _monitor, identity, served = node_home
    node_json = Path(identity.layout.etc) / "node.json"
    newer = document_text(settings(downAfterMs=3000))
    served.append(newer)  # the parameter reads stale once, then the new version
    assert boot.apply_node(node_json, boot.digest(newer), bound_s=30)["document"] == boot.digest(newer)
    assert "DOWN_AFTER_MS=3000\n" in Path(identity.layout.node_env).read_text()
    served[:] = [document_text(settings())]
    clock = iter(range(0, 1000, 40))
    monkeypatch.setattr(boot.time, "monotonic", lambda: float(next(clock)))
    with pytest.raises(RuntimeError, match="not the .* this apply was sent for"):
        boot.apply_node(node_json, "0" * 64, bound_s=30)



def test_the_apply_script_asks_the_nodes_ports_over_tls_when_its_node_env_says_so() -> None:
    script = (Path(ssm_apply.__file__).parent / "files" / "live-apply.sh").read_text()
    # Every redis-cli call goes through one function, which adds the flags when node.env names the CA
    # file (tlsEnabled: the node's Redis and Sentinel speak TLS only), as every node script does.
    joined = script.replace("\\\n", " ").splitlines()  # continuation lines joined
    calls = [line for line in joined if "redis-cli " in line and not line.lstrip().startswith("#")]
    to_nodes = [line for line in calls if "$HAPROXY_ADDRESS" not in line]  # HAProxy's port stays plaintext
    assert len(to_nodes) == 1 and '${TLS_CA_FILE:+--tls --cacert "$TLS_CA_FILE"}' in to_nodes[0]
    assert 'source "$ETC/node.env"' in script


def aws_switchover() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("aws_switchover", Path(__file__).parent.parent / "scripts"
                                                  / "aws_switchover.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_aws_switchover_runs_the_switchover_module_on_node_1_over_ssm(ssm: StubbedSsm, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    outputs = {"instanceIds": INSTANCES, "redisEndpoints": [f"{a}:31415" for a in ADDRESSES],
               "sentinelEndpoints": [f"{a}:41415" for a in ADDRESSES], "masterName": "myprimary"}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    report = {"old_primary": f"{ADDRESSES[0]}:31415", "new_primary": f"{ADDRESSES[2]}:31415", "write_pause_s": 1.0,
              "log": ["writes paused"]}
    ssm.command(INSTANCES[0], step_output("cluster", report))
    script = aws_switchover()
    rc = script.main(["--region", REGION, "--to", ADDRESSES[2], "--outputs", str(tmp_path / "outputs.json")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out)["new_primary"] == f"{ADDRESSES[2]}:31415"
    assert f"{INSTANCES[0]}: writes paused" in out.err
    (sent,) = ssm.sent
    assert sent["InstanceIds"] == [INSTANCES[0]]
    command = sent["Parameters"]["commands"][0]
    assert "STEP=cluster" in command and f"--to {ADDRESSES[2]}:31415" in command and "STEP_ARGS=(switchover" in command


def test_the_aws_switchover_refuses_bad_input_before_sending_anything(ssm: StubbedSsm, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    script = aws_switchover()
    (tmp_path / "bad.json").write_text(json.dumps({"masterName": "myprimary"}))
    assert script.main(["--region", REGION, "--outputs", str(tmp_path / "bad.json")]) == 2
    assert "lack instanceIds, redisEndpoints, sentinelEndpoints" in capsys.readouterr().err
    outputs = {"instanceIds": INSTANCES, "redisEndpoints": [f"{a}:31415" for a in ADDRESSES],
               "sentinelEndpoints": [f"{a}:41415" for a in ADDRESSES], "masterName": "myprimary"}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    assert script.main(["--region", REGION, "--to", "10.9.9.9", "--outputs", str(tmp_path / "outputs.json")]) == 2
    assert "--to 10.9.9.9 is not one of the nodes" in capsys.readouterr().err
    assert ssm.sent == []
