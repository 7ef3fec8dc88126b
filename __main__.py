"""hst-ha: a highly-available Redis backend for an IBM Aspera HST Server cluster on AWS."""

import pulumi

from components.aws.cluster import HstCluster
from components.settings import SettingsError, read_settings

try:
    settings = read_settings(pulumi.Config().get)
except SettingsError as error:
    # A clean message naming every bad key, before any resource is registered.
    raise pulumi.RunError(str(error)) from None

cluster = HstCluster("hst-ha", settings)

pulumi.export("masterName", settings.master_name)
pulumi.export("nodePrivateIps", cluster.node_private_ips)
pulumi.export("nodePublicIps", cluster.node_public_ips)
pulumi.export("redisEndpoints", [f"{ip}:{settings.redis_port}" for ip in cluster.node_private_ips])
pulumi.export("sentinelEndpoints", [f"{ip}:{settings.sentinel_port}" for ip in cluster.node_private_ips])
pulumi.export("haproxyEndpoint", f"127.0.0.1:{settings.haproxy_port}")
pulumi.export("securityGroupId", cluster.network.security_group_id)
pulumi.export("instanceIds", cluster.instance_ids)
pulumi.export("redisAuthSecretArn", cluster.redis_secret.arn)
pulumi.export("vpcId", cluster.network.vpc_id)
pulumi.export("subnetIds", cluster.network.subnet_ids)
pulumi.export("hstInstalled", settings.hst_enabled)
pulumi.export("quorum", cluster.quorum.report)
pulumi.export("bearerTokenSecretArn", cluster.tokens.secret_arn)
pulumi.export("tokenVerificationKey", cluster.signing_key.public_key_pem)
