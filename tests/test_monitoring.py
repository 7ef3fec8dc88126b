"""Monitoring and backups under mocks: the alarms, the backup bucket, the metrics ports' rules and the
nodes' rights (components/aws/monitoring.py, network.py)."""

from __future__ import annotations

import json

import pytest

from components.aws.monitoring import ALARMS, METRICS_NAMESPACE
from components.settings import METRICS_PORTS
from tests.pulumi_harness import run_program

pytestmark = pytest.mark.timeout(120)

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
CLUSTER = "organization/hst-ha/test"


@pytest.fixture(scope="module")
def program():
    return run_program(
        {
            "nodeCount": 5,
            "replicationLagAlarmSeconds": 7,
            "backupRetentionDays": 12,
            "backupReaderArns": ["arn:aws:iam::123456789012:role/redis-restore"],
        }
    )


def test_every_condition_has_one_alarm_on_one_cluster_metric_notifying_the_topic(program):
    alarms = {r.name.removeprefix("hst-ha-monitoring-"): r.inputs for r in program.of_type(ALARM)}
    assert set(alarms) == {a.name for a in ALARMS}
    (topic,) = program.of_type("aws:sns/topic:Topic")
    topic_arn = f"arn:aws:sns:eu-west-1:123456789012:{topic.name}"
    for alarm in alarms.values():
        assert alarm["namespace"] == METRICS_NAMESPACE and alarm["dimensions"] == {"Cluster": CLUSTER}
        assert alarm["alarmActions"] == [topic_arn]
    # Fewer Sentinels than N, and a node's Redis down: N is the node count.
    assert (alarms["sentinels-missing"]["threshold"], alarms["sentinels-missing"]["comparisonOperator"]) == (
        5,
        "LessThanThreshold",
    )
    assert alarms["sentinels-missing"]["statistic"] == "Maximum"
    assert (alarms["redis-down"]["threshold"], alarms["redis-down"]["statistic"]) == (5, "Minimum")
    # Not exactly one primary: two alarms on the same metric.
    assert {
        (a["comparisonOperator"], a["threshold"]) for n, a in alarms.items() if a["metricName"] == "PrimaryCount"
    } == {("LessThanThreshold", 1), ("GreaterThanThreshold", 1)}
    assert alarms["replication-lag"]["threshold"] == 7
    assert alarms["ckquorum-failing"]["metricName"] == "CkquorumOk"
    assert alarms["haproxy-no-route"]["metricName"] == "HaproxyRoute"
    # A silent cluster (every collector down) must alarm, not look healthy.
    assert alarms["sentinels-missing"]["treatMissingData"] == "breaching"


def test_a_given_topic_is_used_and_none_is_created():
    topic = "arn:aws:sns:eu-west-1:123456789012:ops"
    program = run_program({"alarmTopicArn": topic})
    assert not program.of_type("aws:sns/topic:Topic")
    assert all(a.inputs["alarmActions"] == [topic] for a in program.of_type(ALARM))
    assert program.outputs["alarmTopicArn"] == topic


def test_the_backup_bucket_is_encrypted_versioned_private_and_expires_snapshots(program):
    (bucket,) = program.of_type("aws:s3/bucketV2:BucketV2")
    bucket_id = f"{bucket.name}-id"
    (sse,) = program.of_type(
        "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2"
    )
    assert sse.inputs["bucket"] == bucket_id
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    (block,) = program.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(
        block.inputs[k] is True
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    (versioning,) = program.of_type("aws:s3/bucketVersioningV2:BucketVersioningV2")
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    (lifecycle,) = program.of_type("aws:s3/bucketLifecycleConfigurationV2:BucketLifecycleConfigurationV2")
    (rule,) = lifecycle.inputs["rules"]
    assert rule["status"] == "Enabled" and rule["expiration"]["days"] == 12
    assert rule["noncurrentVersionExpiration"]["noncurrentDays"] == 12
    assert program.outputs["backupBucket"].startswith("hst-ha-backups-")


def test_only_the_nodes_write_snapshots_only_operators_read_and_only_over_tls(program):
    (policy,) = program.of_type("aws:s3/bucketPolicy:BucketPolicy")
    statements = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    assert statements["TlsOnly"]["Effect"] == "Deny" and statements["TlsOnly"]["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    deny = statements["OnlyNodesWriteSnapshots"]
    assert deny["Effect"] == "Deny" and deny["Action"] == "s3:PutObject"
    assert deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == "arn:aws:iam::123456789012:role/hst-ha-node-role"
    assert statements["OperatorsRead"]["Principal"] == {"AWS": ["arn:aws:iam::123456789012:role/redis-restore"]}
    assert all(a.startswith(("s3:Get", "s3:List")) for a in statements["OperatorsRead"]["Action"])
    assert not [s for s in statements.values() if s["Effect"] == "Allow" and s.get("Principal") == "*"]


def test_the_nodes_may_put_only_our_metrics_our_events_and_snapshots(program):
    policy = json.loads(program.named("hst-ha-monitoring-node-observe").inputs["policy"])
    by_action = {s["Action"]: s for s in policy["Statement"]}
    assert set(by_action) == {"cloudwatch:PutMetricData", "events:PutEvents", "s3:PutObject", "s3:GetObject"}
    assert by_action["cloudwatch:PutMetricData"]["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}
    }
    assert by_action["events:PutEvents"]["Resource"] == "arn:aws:events:eu-west-1:123456789012:event-bus/default"
    assert by_action["events:PutEvents"]["Condition"] == {"StringEquals": {"events:source": "hst-ha"}}
    bucket = program.outputs["backupBucket"]
    assert by_action["s3:PutObject"]["Resource"] == f"arn:aws:s3:::{bucket}/snapshots/*"
    (code,) = program.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    assert by_action["s3:GetObject"]["Resource"] == f"arn:aws:s3:::{bucket}/{code.inputs['key']}"
    assert not [s for s in policy["Statement"] if "s3:DeleteObject" in s["Action"] or s["Effect"] != "Allow"]


def metrics_rules(program):
    return {
        (r.inputs["fromPort"], r.inputs.get("cidrIpv4"))
        for r in program.of_type(INGRESS)
        if r.inputs["fromPort"] in METRICS_PORTS
    }


def test_no_rule_opens_the_metrics_ports_without_metrics_cidrs(program):
    assert metrics_rules(program) == set()


def test_metrics_cidrs_open_exactly_the_metrics_ports_to_them():
    program = run_program({"metricsCidrs": ["10.9.0.0/24"]})
    assert metrics_rules(program) == {(port, "10.9.0.0/24") for port in METRICS_PORTS}


def test_the_nodes_run_the_observers_from_fetched_code(program):
    from components.aws.cloud_config import node_files, written_files

    (code,) = program.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    (parameter,) = program.of_type("aws:ssm/parameter:Parameter")
    for instance in program.of_type("aws:ec2/instance:Instance"):
        text = instance.inputs["userData"]
        files = written_files(text)
        assert "/etc/systemd/system/hst-ha-events.service" in files
        assert "WorkingDirectory=/opt/hst-ha" in files["/etc/systemd/system/hst-ha-events.service"]
        assert not [p for p in files if p.startswith("/opt/hst-ha/components/")]  # in the archive instead
        # Fetched first, by the preparation (the renderer is in the archive too), before any daemon.
        prepare = files["/etc/systemd/system/hst-ha-prepare.service"]
        url = f"s3://{program.outputs['backupBucket']}/{code.inputs['key']}"
        fetch = f"ExecStartPre=/usr/bin/python3 /opt/hst-ha/bin/hst-ha-fetch-code {url} /opt/hst-ha eu-west-1\n"
        assert fetch in prepare
        assert prepare.index(fetch) < prepare.index("ExecStartPre=/usr/bin/python3 -m components.bundle.boot")
        rendered = node_files(text, parameter.inputs["insecureValue"])
        assert "/opt/hst-ha/etc/hst-ha-fence-metrics.lua" in rendered  # HAProxy loads it at start
        env = rendered["/opt/hst-ha/etc/node.env"]
        assert (
            "EVENTS_SINK=eventbridge:eu-west-1" in env
            and f"METRICS_SINK=cloudwatch:eu-west-1:{METRICS_NAMESPACE}" in env
            and "BACKUP_INTERVAL_MINUTES=360" in env  # a setting: from the document
        )


def test_bad_monitoring_settings_stop_before_any_resource():
    from components.settings import SettingsError, parse_settings

    with pytest.raises(SettingsError) as error:
        parse_settings(
            {
                "alarmTopicArn": "ops",
                "backupReaderArns": ["arn:aws:iam::123456789012:role/*"],
                "backupIntervalMinutes": 5,
                "metricsCidrs": ["0.0.0.0/0"],
            }
        )
    text = str(error.value)
    for key in ("alarmTopicArn", "backupReaderArns", "backupIntervalMinutes", "metricsCidrs"):
        assert f"hst-ha:{key} " in text
