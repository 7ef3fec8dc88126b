"""The whole HA Redis backend: network, the Redis password secret, the node role and the nodes,
then the proof that the Sentinels are failover-ready and the bootstrap bearer tokens."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pulumi
import pulumi_aws as aws

from components.aws.cloud_config import AWS_HOME, aws_layout, code_archive, node_code, node_user_data
from components.aws.monitoring import BACKUP_PREFIX, CODE_PREFIX, METRICS_NAMESPACE, Monitoring, MonitoringArgs
from components.aws.network import Network, NetworkArgs
from components.aws.node import Node, NodeArgs
from components.aws.providers import (
    BootstrapTokens,
    BootstrapTokensArgs,
    ClusterTls,
    ClusterTlsArgs,
    RedisUsersSecret,
    RedisUsersSecretArgs,
    SentinelQuorum,
    SentinelQuorumArgs,
    SigningKey,
    SigningKeyArgs,
    aws_store,
)
from components.aws.providers.live_settings import LiveSettings, LiveSettingsArgs
from components.aws.providers.membership import ClusterMembership, ClusterMembershipArgs
from components.bundle import NodePlace, Sinks, document, node_name
from components.bundle.users import ROLE_KEYS
from components.outputs import attribute_name, output_specs
from components.runtime.live_settings import settings_to_json
from components.settings import ClusterSettings

CANONICAL = "099720109477"  # the AWS account that publishes the official Ubuntu images
# On every resource the program creates: `<organization>/<project>/<stack>`. The deploy role's
# ssm:SendCommand is conditioned on it (README "Deploy role"), and the providers refuse to write
# into or delete a secret that does not carry it.
STACK_TAG = "hst-ha:stack"
# What the SSM agent needs for Session Manager and Run Command, instead of the managed
# AmazonSSMManagedInstanceCore (which also grants ssm:GetParameter(s) and more on every resource).
# AWS authorizes these actions only on "*": the instance's own identity is what scopes them.
SSM_AGENT_ACTIONS = (
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
    "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
)
# A fresh node boots, installs its packages and registers its SSM agent within a few minutes;
# HST Server's installer adds more. Past this, `pulumi up` fails with what each Sentinel said.
QUORUM_TIMEOUT_S = 900
# SSM's Standard tier holds 4 KiB: a 15-node cluster's document is well inside it (README "Cluster document").
DOCUMENT_LIMIT = 4096


def document_parameter_name(stack_tag: str) -> str:
    """The cluster document's SSM parameter: under the stack tag's own path, so no two stacks share it."""
    return f"/{stack_tag}/cluster-document"


def ubuntu_architecture(instance_type: str) -> str:
    """Graviton families carry a 'g' after the generation digit (t4g, m7g, c7gn); the rest are x86_64."""
    family = instance_type.split(".", 1)[0]
    return "arm64" if re.match(r"^[a-z]+\d+[a-z]*g", family) else "amd64"


class HstCluster(pulumi.ComponentResource):
    """The cluster. Its outputs are the stack outputs (`components.outputs.StackOutputs`, the one
    definition of their names, types and meaning), one attribute each, snake_case."""

    master_name: pulumi.Output[str]
    """masterName: the name Sentinel monitors the primary under."""
    node_private_ips: pulumi.Output[list[str]]
    """nodePrivateIps: each node's private IP, node-1 first."""
    node_public_ips: pulumi.Output[list[str | None]]
    """nodePublicIps: each node's public IP; None for a node without one (an existing VPC)."""
    redis_endpoints: pulumi.Output[list[str]]
    """redisEndpoints: each node's Redis as host:port."""
    sentinel_endpoints: pulumi.Output[list[str]]
    """sentinelEndpoints: each node's Sentinel as host:port."""
    haproxy_endpoint: pulumi.Output[str]
    """haproxyEndpoint: HST Server's db_host:db_port on every node (its HAProxy, loopback only)."""
    security_group_id: pulumi.Output[str]
    """securityGroupId: the cluster group; Redis and Sentinel are open only within it."""
    instance_ids: pulumi.Output[list[str]]
    """instanceIds: each node's EC2 instance id."""
    redis_auth_secret_arn: pulumi.Output[str]
    """redisAuthSecretArn: the secret holding the Redis password (the ARN itself is not secret)."""
    vpc_id: pulumi.Output[str]
    """vpcId: the VPC of the nodes (created or adopted)."""
    subnet_ids: pulumi.Output[list[str]]
    """subnetIds: the subnets of the nodes."""
    hst_installed: pulumi.Output[bool]
    """hstInstalled: whether the nodes install HST Server."""
    quorum: pulumi.Output[dict[str, Any]]
    """quorum: what the SentinelQuorum provider verified at the last change of the nodes."""
    bearer_token_secret_arn: pulumi.Output[str]
    """bearerTokenSecretArn: the secret holding the bootstrap bearer tokens."""
    token_verification_key: pulumi.Output[str]
    """tokenVerificationKey: the public half of the token signing key."""
    backup_bucket: pulumi.Output[str]
    """backupBucket: the S3 bucket holding the RDB snapshots (under snapshots/)."""
    alarm_topic_arn: pulumi.Output[str]
    """alarmTopicArn: the SNS topic the CloudWatch alarms notify."""

    def __init__(self, name: str, args: ClusterSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hst-ha:index:Cluster", name, None, opts)
        settings = args
        child = pulumi.ResourceOptions(parent=self)
        # A DIY backend's stacks belong to the organization "organization", as Pulumi names them.
        organization = pulumi.get_organization() or "organization"
        tags = {STACK_TAG: f"{organization}/{pulumi.get_project()}/{pulumi.get_stack()}"}
        region = aws.get_region(opts=pulumi.InvokeOptions(parent=self)).region

        self.network = Network(f"{name}-network", NetworkArgs(
            node_count=settings.node_count, redis_port=settings.redis_port, sentinel_port=settings.sentinel_port,
            vpc_cidr=settings.vpc_cidr, region=region, admin_cidrs=settings.admin_cidrs,
            transfer_cidrs=settings.transfer_cidrs, vpc_id=settings.vpc_id, subnet_ids=settings.subnet_ids,
            node_private_ips=settings.node_private_ips,
            package_mirror_prefix_list_ids=settings.package_mirror_prefix_list_ids,
            metrics_cidrs=settings.metrics_cidrs, tags=tags,
        ), opts=child)

        # One password per Redis role (components/bundle/users.py), in ONE secret, a JSON object, so
        # the node role reads a single ARN. Generated inside the provider and written straight into
        # Secrets Manager: the state holds the secret's ARN, name and version id, never a password.
        self.redis_secret = RedisUsersSecret(f"{name}-redis-auth", RedisUsersSecretArgs(
            store=aws_store(region), secret_name_prefix=f"{pulumi.get_project()}/{pulumi.get_stack()}/redis-users",
            roles=ROLE_KEYS, tags=tags, recovery_window_days=settings.secret_recovery_window_days,
        ), opts=child)

        readable: list[pulumi.Input[str]] = [self.redis_secret.secret_arn]
        # tlsEnabled: the cluster CA and a certificate per node, made inside the provider. The node
        # role reads the nodes' secret only; the CA's key stays in a secret only the deployer reads.
        self.tls: ClusterTls | None = None
        tls_secret_arn: pulumi.Input[str | None] = None
        if settings.tls_enabled:
            self.tls = ClusterTls(f"{name}-tls", ClusterTlsArgs(
                store=aws_store(region), secret_name_prefix=f"{pulumi.get_project()}/{pulumi.get_stack()}/tls",
                ca_secret_name_prefix=f"{pulumi.get_project()}/{pulumi.get_stack()}/tls-ca",
                addresses=list(self.network.node_addresses), tags=tags,
                recovery_window_days=settings.secret_recovery_window_days,
            ), opts=child)
            tls_secret_arn = self.tls.secret_arn
            readable.append(self.tls.secret_arn)
        if settings.hst_license_secret_arn:
            readable.append(settings.hst_license_secret_arn)
        installer = settings.hst_installer_url or ""
        installer_statement = [{
            "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{installer[len('s3://'):]}",
        }] if installer.startswith("s3://") else []
        role = aws.iam.Role(
            f"{name}-node-role",
            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole",
            }]}),
            tags=tags, opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-node-secrets", role=role.id,
            policy=pulumi.Output.all(*readable).apply(lambda arns: json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": list(arns),
            }, *installer_statement]})),
            opts=child,
        )
        # Operator access through SSM Session Manager (so SSH can stay closed) and the quorum
        # check's Run Command: the agent's own calls, nothing more.
        aws.iam.RolePolicy(
            f"{name}-node-ssm-agent", role=role.id,
            policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": list(SSM_AGENT_ACTIONS), "Resource": "*",
            }]}),
            opts=child,
        )
        # The node's code (scripts, renderer, observers), the same on every node and for any settings:
        # one S3 object named by its digest, fetched at first boot.
        addresses = tuple(self.network.node_addresses)
        archive, digest = code_archive(node_code(AWS_HOME), AWS_HOME)

        # The cluster document: the settings that reach the nodes and the membership, one readable
        # JSON that `pulumi up` updates in place. Each node reads it at boot; a timing change or a
        # new node changes it, and no node's user data.
        document_text = document.dump(document.build(settings, addresses))
        if len(document_text.encode()) > DOCUMENT_LIMIT:
            raise ValueError(
                f"the cluster document is {len(document_text.encode())} bytes, over SSM's Standard tier "
                f"({DOCUMENT_LIMIT}); shorten hstInstallerUrl or masterName")
        parameter_name = document_parameter_name(tags[STACK_TAG])
        self.document = aws.ssm.Parameter(
            f"{name}-cluster-document", name=parameter_name, type="String", tier="Standard",
            # `insecure_value`: `value` is always marked secret, and the preview would show no diff at all.
            # Nothing in it is secret (no password: those are in Secrets Manager).
            insecure_value=document_text, description="hst-ha cluster document: the nodes' settings and membership",
            tags=tags, opts=child,
        )
        # Exactly this parameter: not GetParameters, not a path.
        document_policy = aws.iam.RolePolicy(
            f"{name}-node-document", role=role.id,
            policy=self.document.arn.apply(lambda arn: json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "ssm:GetParameter", "Resource": arn,
            }]})),
            opts=child,
        )
        self.monitoring = Monitoring(f"{name}-monitoring", MonitoringArgs(
            cluster=tags[STACK_TAG], node_count=settings.node_count, node_role_arn=role.arn,
            node_role_name=role.id,
            region=region, code_key=f"{CODE_PREFIX}/{digest}.tar.gz", alarm_topic_arn=settings.alarm_topic_arn,
            replication_lag_alarm_seconds=settings.replication_lag_alarm_seconds,
            backup_retention_days=settings.backup_retention_days, backup_reader_arns=settings.backup_reader_arns,
            tags=tags,
        ), opts=child)
        profile = aws.iam.InstanceProfile(f"{name}-node-profile", role=role.name, tags=tags, opts=child)

        ami_id = settings.ami_id or aws.ec2.get_ami(
            most_recent=True, owners=[CANONICAL],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[
                    f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{ubuntu_architecture(settings.instance_type)}-server-*"]),
                aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
            ],
            opts=pulumi.InvokeOptions(parent=self),
        ).id

        store = aws_store(region)
        secret_prefix = f"{pulumi.get_project()}/{pulumi.get_stack()}"

        # Before the nodes: HST Server on the initial primary registers the public half as the
        # access key's token_verification_key (it is not secret). The private half stays in its
        # own secret, which the nodes' role cannot read.
        self.signing_key = SigningKey(f"{name}-token-signing-key", SigningKeyArgs(
            key_length=settings.tokens.key_length, store=store,
            secret_name_prefix=f"{secret_prefix}/token-signing-key",
            recovery_window_days=settings.secret_recovery_window_days, tags=tags,
        ), opts=child)
        # Only a node that installs HST Server uses the key: without HSTS, a new key changes no user data.
        verification_key = self.signing_key.public_key_pem if settings.hst_enabled else pulumi.Output.from_input(None)

        code = aws.s3.BucketObjectv2(
            f"{name}-node-code", bucket=self.monitoring.backup_bucket, key=f"{CODE_PREFIX}/{digest}.tar.gz",
            content_base64=base64.b64encode(archive).decode(), server_side_encryption="aws:kms", tags=tags, opts=child,
        )

        def user_data(index: int) -> pulumi.Output[str]:
            def render(values: list) -> str:
                secret_arn, key, bucket, tls_arn = values
                # The snapshot interval is a setting: the node takes it from the document.
                sinks = Sinks(cluster=tags[STACK_TAG], events=f"eventbridge:{region}",
                              metrics=f"cloudwatch:{region}:{METRICS_NAMESPACE}",
                              backups=f"s3://{bucket}/{BACKUP_PREFIX}")
                layout = aws_layout(secret_arn, region, settings.hst_license_secret_arn, sinks, tls_arn)
                return node_user_data(settings, NodePlace(index, addresses), layout, parameter=parameter_name,
                                      region=region, code_url=f"s3://{bucket}/{CODE_PREFIX}/{digest}.tar.gz",
                                      token_verification_key=key, install_packages=not settings.ami_has_packages)
            return pulumi.Output.all(self.redis_secret.secret_arn, verification_key, code.bucket,
                                     tls_secret_arn).apply(render)

        self.nodes = [
            Node(f"{name}-{node_name(i)}", NodeArgs(
                address=addresses[i], subnet_id=self.network.node_subnet_ids[i],
                security_group_id=self.network.security_group_id, instance_profile=profile.name,
                instance_type=settings.instance_type, ami_id=ami_id, ami_pinned=bool(settings.ami_id),
                user_data=user_data(i), public=self.network.public, tags=tags,
                # A node reads the document at its first boot: it and the right to read it come first.
                depends_on=[self.document, document_policy],
            ), opts=child)
            for i in range(settings.node_count)
        ]

        self.instance_ids = pulumi.Output.all(*[n.instance_id for n in self.nodes])

        # After every node: `up` fails unless the Sentinels are failover-ready. The Sentinel port is
        # open only inside the cluster group, so one node asks on our behalf over SSM Run Command.
        quorum_args = SentinelQuorumArgs(
            sentinels=[f"{a}:{settings.sentinel_port}" for a in addresses],
            servers=[f"{a}:{settings.redis_port}" for a in addresses],
            master_name=settings.master_name, expected_nodes=settings.node_count,
            password={"kind": "aws", "secret_id": self.redis_secret.secret_arn, "region": region},
            instance_ids=self.instance_ids, via="ssm", region=region,
            haproxy_endpoints=[f"127.0.0.1:{settings.haproxy_port}"],
            sentinel_settings={
                "quorum": settings.sentinel_quorum, "downAfterMs": settings.down_after_ms,
                "failoverTimeoutMs": settings.failover_timeout_ms, "parallelSyncs": settings.parallel_syncs,
                "sentinelPort": settings.sentinel_port, "redisPort": settings.redis_port,
            },
            timeout_s=QUORUM_TIMEOUT_S,
            tls_enabled=settings.tls_enabled,  # the probe asks the nodes' ports over TLS, with the node's CA file
        )
        # Nodes that leave (nodeCount down) leave the running cluster before the quorum is verified with
        # the smaller count, while their instances still exist (Pulumi removes them after every update).
        self.membership = ClusterMembership(f"{name}-membership", ClusterMembershipArgs(
            settings=settings_to_json(settings), document=document_text, instance_ids=self.instance_ids,
            addresses=list(addresses), region=region,
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=[*self.nodes, self.document]))
        self.sentinel_quorum = SentinelQuorum(f"{name}-sentinel-quorum", quorum_args, opts=pulumi.ResourceOptions(
            parent=self, depends_on=[*self.nodes, self.membership]))
        # A changed document reaches the running nodes (SSM Run Command): each reads the parameter and
        # renders from it as at boot, so the parameter is updated first; a grow's new nodes must have
        # booted and registered with SSM, which the quorum check waits for. Then the quorum is verified again.
        self.live_settings = LiveSettings(f"{name}-live-settings", LiveSettingsArgs(
            settings=settings_to_json(settings), document=document_text, instance_ids=self.instance_ids,
            addresses=list(addresses), region=region, quorum=quorum_args, shrink=self.membership.last_change,
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=[*self.nodes, self.document, self.sentinel_quorum]))

        # After the quorum: tokens for a cluster that is known to work.
        self.tokens = BootstrapTokens(f"{name}-bootstrap-tokens", BootstrapTokensArgs(
            signing_key_secret_id=self.signing_key.secret_arn, store=store,
            secret_name_prefix=f"{secret_prefix}/bearer-tokens", tokens=settings.tokens,
            recovery_window_days=settings.secret_recovery_window_days, tags=tags,
        ), opts=pulumi.ResourceOptions(parent=self, depends_on=[self.sentinel_quorum]))

        self.master_name = pulumi.Output.from_input(settings.master_name)
        self.node_private_ips = pulumi.Output.from_input(list(addresses))
        self.node_public_ips = pulumi.Output.all(*[n.public_ip for n in self.nodes])
        self.redis_endpoints = pulumi.Output.from_input([f"{a}:{settings.redis_port}" for a in addresses])
        self.sentinel_endpoints = pulumi.Output.from_input([f"{a}:{settings.sentinel_port}" for a in addresses])
        self.haproxy_endpoint = pulumi.Output.from_input(f"127.0.0.1:{settings.haproxy_port}")
        self.security_group_id = pulumi.Output.from_input(self.network.security_group_id)
        self.redis_auth_secret_arn = self.redis_secret.secret_arn
        self.vpc_id = pulumi.Output.from_input(self.network.vpc_id)
        self.subnet_ids = pulumi.Output.from_input(self.network.subnet_ids)
        self.hst_installed = pulumi.Output.from_input(settings.hst_enabled)
        self.quorum = self.sentinel_quorum.report
        self.bearer_token_secret_arn = self.tokens.secret_arn
        self.token_verification_key = self.signing_key.public_key_pem
        self.backup_bucket = self.monitoring.backup_bucket
        self.alarm_topic_arn = self.monitoring.alarm_topic_arn
        self.register_outputs({spec.name: getattr(self, attribute_name(spec.name)) for spec in output_specs()})
