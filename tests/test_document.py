"""The cluster document (components/bundle/document.py) and the node's boot renderer
(components/bundle/boot.py): what a node reads at boot and renders its files from. Plain Python;
moto stands in for SSM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from components.aws.cloud_config import AWS_HOME, code_archive, node_code
from components.bundle import NodeLayout, NodePlace, Sinks, boot, document, render_bundle
from components.bundle.render import LONGEST_DOWN_AFTER_MS, LONGEST_FAILOVER_TIMEOUT_MS
from components.settings import MAX_FAILOVER_TIMEOUT_MS, SettingsError, parse_settings

ROOT = Path(__file__).resolve().parent.parent
ADDRESSES = ("10.42.0.10", "10.42.64.10", "10.42.128.10")
PARAMETER = "/organization/hst-ha/test/cluster-document"


def text_of(config: dict | None = None, addresses: tuple[str, ...] = ADDRESSES) -> str:
    settings = parse_settings({"nodeCount": len(addresses), **(config or {})})
    return document.dump(document.build(settings, addresses))


def test_the_document_round_trips_to_what_the_renderer_reads():
    settings = parse_settings({"nodeCount": 3, "downAfterMs": 3000, "minReplicasToWrite": 2})
    parsed = document.parse(text_of({"downAfterMs": 3000, "minReplicasToWrite": 2}))
    assert parsed.addresses == ADDRESSES and parsed.initial_primary == ADDRESSES[0]
    s = parsed.settings
    assert (s.node_count, s.down_after_ms, s.min_replicas_to_write, s.sentinel_majority) == (3, 3000, 2, 2)
    # The same configuration whether rendered from ClusterSettings or from the parsed document.
    layout = NodeLayout(home="/opt/hst-ha", secrets_command="true", tls_command="true")
    for i in range(3):
        assert render_bundle(settings, NodePlace(i, ADDRESSES), layout) == \
            render_bundle(s, NodePlace(i, ADDRESSES), layout)


def test_the_document_is_pretty_key_sorted_and_names_settings_as_the_stack_does():
    text = text_of()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    doc = json.loads(text)
    assert set(doc) == {"format", "initialPrimary", "nodes", "settings"}
    assert doc["nodes"][1] == {"address": ADDRESSES[1], "index": 1, "name": "node-2"}
    assert '"downAfterMs": 5000' in text  # one line: a timing change is a one-line diff
    from components.settings import SCHEMA_BY_KEY

    assert set(doc["settings"]) <= set(SCHEMA_BY_KEY), "every key is a stack setting's own name"


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(format="hst-ha cluster document 9"), "format"),
    (lambda d: d["settings"].update(downAfterMs="5000"), "settings.downAfterMs must be int"),
    (lambda d: d["settings"].update(redisPort=True), "settings.redisPort must be int"),
    (lambda d: d["settings"].pop("masterName"), "lack \\['masterName'\\]"),
    (lambda d: d["settings"].update(tlsEverywhere=1), "unknown \\['tlsEverywhere'\\]"),
    (lambda d: d["nodes"][1].update(index=5), "nodes\\[1\\] must be index 1"),
    (lambda d: d["nodes"][2].update(address=ADDRESSES[0]), "distinct"),
    (lambda d: d.update(initialPrimary=ADDRESSES[1]), "initialPrimary"),
    (lambda d: d.update(extra=1), "unknown keys"),
])
def test_a_document_that_is_not_fully_understood_is_refused(mutate, message):
    doc = json.loads(text_of())
    mutate(doc)
    with pytest.raises(document.DocumentError, match=message):
        document.parse(json.dumps(doc))


def test_the_unit_timeouts_are_bounded_by_the_longest_timings_the_settings_accept():
    # The units are in user data, which a timing change must not touch (components/bundle/render.py).
    assert LONGEST_FAILOVER_TIMEOUT_MS == MAX_FAILOVER_TIMEOUT_MS
    parse_settings({"downAfterMs": LONGEST_DOWN_AFTER_MS - 1, "failoverTimeoutMs": LONGEST_FAILOVER_TIMEOUT_MS})
    with pytest.raises(SettingsError, match="failoverTimeoutMs"):
        parse_settings({"downAfterMs": LONGEST_DOWN_AFTER_MS, "failoverTimeoutMs": LONGEST_FAILOVER_TIMEOUT_MS + 1})
    layout = NodeLayout(home="/opt/hst-ha", secrets_command="true", tls_command="true")
    steps = [render_bundle(parse_settings({"downAfterMs": ms, "failoverTimeoutMs": 30_000}),
                           NodePlace(0, ADDRESSES), layout).start_steps for ms in (1000, 20_000)]
    assert steps[0] == steps[1]


def test_the_renderer_the_node_imports_needs_only_the_stdlib():
    """The node runs components.bundle.boot with the distribution's Python: no cryptography, no
    Pulumi, no settings module (which pulls cryptography) on that path."""
    probe = ("import sys, components.bundle.boot; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('cryptography', 'pulumi', 'pulumi_aws', 'yaml', 'redis', 'boto3') or m == 'components.settings'))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "[]"


def test_the_code_archive_carries_the_renderer_and_is_the_same_for_any_settings():
    packed, digest = code_archive(node_code(AWS_HOME), AWS_HOME)
    assert (packed, digest) == code_archive(node_code(AWS_HOME), AWS_HOME)  # reproducible: a stable key
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        names = tar.getnames()
    for needed in ("components/bundle/boot.py", "components/bundle/render.py", "components/bundle/document.py",
                   "components/bundle/files/hst-ha-boot.sh", "components/runtime/events.py"):
        assert needed in names
    assert "components/settings.py" not in names


def identity(tmp_path: Path, index: int = 1, **extra) -> boot.NodeIdentity:
    layout = NodeLayout(home=str(tmp_path / "home"), secrets_command="cat /dev/null", tls_command="cat /dev/null",
                        sinks=Sinks("org/hst-ha/test", "eventbridge:eu-west-1", "cloudwatch:eu-west-1:hst-ha",
                                    "s3://bucket/snapshots"))
    return boot.NodeIdentity(index, ADDRESSES[index], layout, PARAMETER, "eu-west-1", **extra)


def test_the_identity_survives_its_json_and_holds_no_setting(tmp_path):
    node = identity(tmp_path)
    text = node.to_json()
    assert boot.NodeIdentity.from_json(text).to_json() == text
    # The snapshot interval is a setting: the document's, never the user data's.
    assert "backup_interval_minutes" not in text and "5000" not in text


@mock_aws
def test_boot_renders_the_nodes_files_from_the_parameter_and_keeps_a_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    ssm = boto3.client("ssm", region_name="eu-west-1")
    ssm.put_parameter(Name=PARAMETER, Type="String", Value=text_of({"downAfterMs": 3000, "backupIntervalMinutes": 60}))
    node = identity(tmp_path)
    node_json = tmp_path / "node.json"
    node_json.write_text(node.to_json())
    assert boot.main([str(node_json)]) == 0
    home = tmp_path / "home"
    env = (home / "etc/node.env").read_text()
    assert "\nDOWN_AFTER_MS=3000\n" in env and "\nBACKUP_INTERVAL_MINUTES=60\n" in env
    assert f"\nSELF={ADDRESSES[1]}\n" in env
    assert f"replicaof {ADDRESSES[0]} 31415" in (home / "etc/templates/redis.conf").read_text()
    assert (home / "etc/templates/redis.conf").stat().st_mode & 0o777 == 0o600
    assert (home / "bin/hst-ha-boot").stat().st_mode & 0o777 == 0o755
    assert not (home / "components").exists()  # the modules come with the code archive
    assert (tmp_path / boot.DOCUMENT_COPY).read_text() == text_of({"downAfterMs": 3000, "backupIntervalMinutes": 60})

    # A later boot with SSM unreadable renders from the copy, and says so.
    ssm.delete_parameter(Name=PARAMETER)
    monkeypatch.setattr(boot.fetch_document, "__defaults__", (0,))
    (home / "etc/node.env").unlink()
    assert boot.main([str(node_json)]) == 0
    assert "rendering from the copy of the last one read" in capsys.readouterr().err
    assert "\nDOWN_AFTER_MS=3000\n" in (home / "etc/node.env").read_text()


@mock_aws
def test_boot_fails_clearly_without_a_document_or_when_it_does_not_list_the_node(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(boot.fetch_document, "__defaults__", (0,))
    node_json = tmp_path / "node.json"
    node_json.write_text(identity(tmp_path).to_json())
    assert boot.main([str(node_json)]) == 1
    assert "was not readable for 0 s (ParameterNotFound" in capsys.readouterr().err
    boto3.client("ssm", region_name="eu-west-1").put_parameter(
        Name=PARAMETER, Type="String", Value=text_of(addresses=("10.42.0.10", "10.42.64.99", "10.42.128.10")))
    assert boot.main([str(node_json)]) == 1
    assert f"does not list this node ({ADDRESSES[1]}) as node 2" in capsys.readouterr().err
    assert not (tmp_path / "home/etc/node.env").exists()
