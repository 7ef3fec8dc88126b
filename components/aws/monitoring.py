"""What watches and keeps the cluster on AWS: the backup bucket, the nodes' rights to report and to
upload, the alarms (and their topic) and a dashboard.

The nodes publish (components/runtime/metrics.py) cluster-wide metrics with only the `Cluster`
dimension, so each alarm reads ONE metric whatever the node count; `ALARMS` below is the one
table of them, and README "Monitoring" says for each what it means and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.runtime.events import EVENT_SOURCE

__all__ = [
    "ALARMS",
    "BACKUP_PREFIX",
    "CODE_PREFIX",
    "METRICS_NAMESPACE",
    "Alarm",
    "Monitoring",
    "MonitoringArgs",
    "bucket_policy",
    "node_policy",
]

METRICS_NAMESPACE = "hst-ha"
BACKUP_PREFIX = "snapshots"
CODE_PREFIX = "code"  # the node's Python modules (cloud_config.code_archive), written by the deployment
PERIOD_S = 60  # the collector publishes once a minute


@dataclass(frozen=True)
class Alarm:
    name: str
    metric: str
    statistic: str
    comparison: str
    threshold: str  # "N", "N-1" or a settings attribute
    missing: str  # treat_missing_data
    evaluation_periods: int
    description: str


ALARMS = (
    Alarm(
        "sentinels-missing",
        "SentinelsOk",
        "Maximum",
        "LessThanThreshold",
        "N",
        "breaching",
        3,
        "No node's Sentinel sees all N Sentinels healthy: a Sentinel is down or cut off.",
    ),
    Alarm(
        "ckquorum-failing",
        "CkquorumOk",
        "Minimum",
        "LessThanThreshold",
        "1",
        "notBreaching",
        2,
        "A Sentinel answers SENTINEL CKQUORUM with an error: it could not authorize a failover.",
    ),
    Alarm(
        "no-primary",
        "PrimaryCount",
        "Maximum",
        "LessThanThreshold",
        "1",
        "breaching",
        2,
        "No node sees any Redis that says role:master: writes fail.",
    ),
    Alarm(
        "several-primaries",
        "PrimaryCount",
        "Maximum",
        "GreaterThanThreshold",
        "1",
        "notBreaching",
        2,
        "A node sees more than one Redis that says role:master (a split brain the fence keeps unrouted).",
    ),
    Alarm(
        "haproxy-no-route",
        "HaproxyRoute",
        "Minimum",
        "LessThanThreshold",
        "1",
        "notBreaching",
        2,
        "A node's HAProxy has no primary it may route to: HST Server on that node cannot reach Redis.",
    ),
    Alarm(
        "replication-lag",
        "ReplicationLagSeconds",
        "Maximum",
        "GreaterThanThreshold",
        "replication_lag_alarm_seconds",
        "notBreaching",
        3,
        "A replica has not acknowledged the primary's stream for longer than the threshold.",
    ),
    Alarm(
        "redis-down",
        "RedisReachable",
        "Minimum",
        "LessThanThreshold",
        "N",
        "breaching",
        2,
        "A node sees fewer than N Redis servers answering: a node's Redis is down or unreachable.",
    ),
)


@dataclass
class MonitoringArgs:
    cluster: str  # the `Cluster` dimension: <organization>/<project>/<stack>
    node_count: int
    node_role_arn: pulumi.Input[str]
    node_role_name: pulumi.Input[str]
    region: str
    code_key: str  # the node code archive's key, the one object the nodes may read
    alarm_topic_arn: str | None = None
    replication_lag_alarm_seconds: int = 10
    backup_retention_days: int = 30
    backup_reader_arns: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


def node_policy(bucket_arn: str, region: str, account: str, code_key: str) -> str:
    """The nodes' rights beyond their secrets: put metrics in our namespace only, put events on the
    default bus with our source only, write snapshots under our prefix only (never read or delete)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                # CloudWatch authorizes PutMetricData only on "*": the namespace condition is what scopes it.
                {
                    "Effect": "Allow",
                    "Action": "cloudwatch:PutMetricData",
                    "Resource": "*",
                    "Condition": {"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}},
                },
                {
                    "Effect": "Allow",
                    "Action": "events:PutEvents",
                    "Resource": f"arn:aws:events:{region}:{account}:event-bus/default",
                    "Condition": {"StringEquals": {"events:source": EVENT_SOURCE}},
                },
                {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{bucket_arn}/{BACKUP_PREFIX}/*"},
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{bucket_arn}/{code_key}"},
            ],
        }
    )


def bucket_policy(bucket_arn: str, node_role_arn: str, readers: list[str]) -> str:
    statements = [
        {
            "Sid": "TlsOnly",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        # Nobody but the nodes writes a snapshot, whatever their own IAM policies allow (the
        # deployment writes only the node code, under its own prefix).
        {
            "Sid": "OnlyNodesWriteSnapshots",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": f"{bucket_arn}/{BACKUP_PREFIX}/*",
            "Condition": {"ArnNotEquals": {"aws:PrincipalArn": node_role_arn}},
        },
        {
            "Sid": "NodesWrite",
            "Effect": "Allow",
            "Principal": {"AWS": node_role_arn},
            "Action": "s3:PutObject",
            "Resource": f"{bucket_arn}/{BACKUP_PREFIX}/*",
        },
    ]
    if readers:
        statements.append(
            {
                "Sid": "OperatorsRead",
                "Effect": "Allow",
                "Principal": {"AWS": readers},
                "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions"],
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


class Monitoring(pulumi.ComponentResource):
    backup_bucket: pulumi.Output[str]
    """The bucket's name; snapshots are under snapshots/."""
    backup_bucket_arn: pulumi.Output[str]
    alarm_topic_arn: pulumi.Output[str]
    """The SNS topic the alarms notify (given, or created here)."""
    alarm_names: pulumi.Output[list[str]]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hst-ha:index:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        bucket = aws.s3.BucketV2(
            f"{name}-backups", bucket_prefix="hst-ha-backups-", force_destroy=False, tags=tags, opts=child
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-backups-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfigurationV2(
            f"{name}-backups-encryption",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationV2RuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationV2RuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="aws:kms"
                    ),
                    bucket_key_enabled=True,
                )
            ],
            opts=child,
        )
        aws.s3.BucketVersioningV2(
            f"{name}-backups-versioning",
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningV2VersioningConfigurationArgs(status="Enabled"),
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-backups-ownership",
            bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=child,
        )
        days = args.backup_retention_days
        aws.s3.BucketLifecycleConfigurationV2(
            f"{name}-backups-lifecycle",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationV2RuleArgs(
                    id="expire-snapshots",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationV2RuleFilterArgs(prefix=f"{BACKUP_PREFIX}/"),
                    expiration=aws.s3.BucketLifecycleConfigurationV2RuleExpirationArgs(days=days),
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationV2RuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=days
                    ),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationV2RuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=1
                    ),
                )
            ],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-backups-policy",
            bucket=bucket.id,
            policy=pulumi.Output.all(bucket.arn, args.node_role_arn).apply(
                lambda v: bucket_policy(v[0], v[1], list(args.backup_reader_arns))
            ),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-node-observe",
            role=args.node_role_name,
            policy=pulumi.Output.all(bucket.arn, args.node_role_arn).apply(
                lambda v: node_policy(v[0], args.region, v[1].split(":")[4], args.code_key)
            ),
            opts=child,
        )

        topic_arn: pulumi.Input[str]
        if args.alarm_topic_arn:
            topic_arn = args.alarm_topic_arn
        else:
            topic_arn = aws.sns.Topic(f"{name}-alarms", kms_master_key_id="alias/aws/sns", tags=tags, opts=child).arn
        dimensions = {"Cluster": args.cluster}
        alarms = []
        for alarm in ALARMS:
            threshold = {"N": args.node_count, "1": 1}.get(alarm.threshold) or getattr(args, alarm.threshold)
            alarms.append(
                aws.cloudwatch.MetricAlarm(
                    f"{name}-{alarm.name}",
                    alarm_description=f"hst-ha {args.cluster}: {alarm.description} (README Monitoring)",
                    namespace=METRICS_NAMESPACE,
                    metric_name=alarm.metric,
                    dimensions=dimensions,
                    statistic=alarm.statistic,
                    period=PERIOD_S,
                    evaluation_periods=alarm.evaluation_periods,
                    datapoints_to_alarm=alarm.evaluation_periods,
                    comparison_operator=alarm.comparison,
                    threshold=float(threshold),
                    treat_missing_data=alarm.missing,
                    alarm_actions=[topic_arn],
                    ok_actions=[topic_arn],
                    tags=tags,
                    opts=child,
                )
            )
        aws.cloudwatch.Dashboard(
            f"{name}-dashboard",
            dashboard_name=f"{name}-{pulumi.get_stack()}"[:255],
            dashboard_body=json.dumps(
                {
                    "widgets": [
                        {
                            "type": "metric",
                            "width": 12,
                            "height": 6,
                            "properties": {
                                "title": metric,
                                "region": args.region,
                                "stat": stat,
                                "period": PERIOD_S,
                                "metrics": [[METRICS_NAMESPACE, metric, "Cluster", args.cluster]],
                            },
                        }
                        for metric, stat in dict((a.metric, a.statistic) for a in ALARMS).items()
                    ],
                }
            ),
            opts=child,
        )

        self.backup_bucket = bucket.bucket
        self.backup_bucket_arn = bucket.arn
        self.alarm_topic_arn = pulumi.Output.from_input(topic_arn)
        self.alarm_names = pulumi.Output.all(*[a.name for a in alarms])
        self.register_outputs(
            {"backupBucket": self.backup_bucket, "alarmTopicArn": self.alarm_topic_arn, "alarmNames": self.alarm_names}
        )
