"""An example consumer of the hst-ha stack outputs: the wiring for an application that calls the
HST Node API with a bootstrap bearer token.

- a security group in the cluster's VPC that may reach the Node API (9092) on the node private IPs
  and AWS APIs over HTTPS, and nothing else: no Redis (31415), no Sentinel (41415);
- an ingress rule on the cluster's security group that admits that group to the Node API;
- a task role that can read the bearer-token secret and no other;
- an ECS task definition whose environment carries the Node API URLs and the secret's ARN (an ARN,
  not the token: the application reads the token at run time with its role).
"""

import json

import pulumi
import pulumi_aws as aws

NODE_API_PORT = 9092  # HSTS Node API over HTTPS

config = pulumi.Config()
cluster = pulumi.StackReference(config.require("clusterStack"))

vpc_id = cluster.require_output("vpcId")
node_ips = cluster.require_output("nodePrivateIps")
cluster_group_id = cluster.require_output("securityGroupId")
token_secret_arn = cluster.require_output("bearerTokenSecretArn")
api_cidrs = config.get_object("awsApiCidrs") or ["0.0.0.0/0"]

client_group = aws.ec2.SecurityGroup(
    "hst-client",
    vpc_id=vpc_id,
    description="HST Node API client: Node API on the hst-ha nodes, AWS APIs, nothing else",
    # One rule whose CIDRs follow the node list, so the resource count is known at preview.
    egress=[
        aws.ec2.SecurityGroupEgressArgs(
            description="HST Node API on the hst-ha nodes", protocol="tcp",
            from_port=NODE_API_PORT, to_port=NODE_API_PORT,
            cidr_blocks=node_ips.apply(lambda ips: [f"{ip}/32" for ip in ips]),
        ),
        aws.ec2.SecurityGroupEgressArgs(
            description="AWS APIs (Secrets Manager) over HTTPS", protocol="tcp",
            from_port=443, to_port=443, cidr_blocks=api_cidrs,
        ),
    ],
    tags={"Name": "hst-client"},
)

# The cluster admits the Node API only from the configured adminCidrs; this rule, owned by this
# stack, adds the client group. Separate rule resources do not fight the cluster's own rules.
aws.vpc.SecurityGroupIngressRule(
    "hst-client-to-node-api",
    security_group_id=cluster_group_id,
    referenced_security_group_id=client_group.id,
    ip_protocol="tcp", from_port=NODE_API_PORT, to_port=NODE_API_PORT,
    description="HST Node API from hst-client",
)

task_role = aws.iam.Role(
    "hst-client-task",
    assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole",
    }]}),
)
aws.iam.RolePolicy(
    "hst-client-read-token",
    role=task_role.id,
    policy=token_secret_arn.apply(lambda arn: json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": arn,
    }]})),
)

node_api_urls = node_ips.apply(lambda ips: ",".join(f"https://{ip}:{NODE_API_PORT}" for ip in ips))
task = aws.ecs.TaskDefinition(
    "hst-client",
    family="hst-client",
    requires_compatibilities=["FARGATE"],
    network_mode="awsvpc",
    cpu="256",
    memory="512",
    task_role_arn=task_role.arn,
    container_definitions=pulumi.Output.json_dumps([{
        "name": "client",
        "image": config.get("image") or "public.ecr.aws/docker/library/python:3.12-slim",
        "essential": True,
        "environment": [
            {"name": "HST_NODE_API_URLS", "value": node_api_urls},
            {"name": "HST_BEARER_TOKEN_SECRET_ARN", "value": token_secret_arn},
        ],
    }]),
)

pulumi.export("clientSecurityGroupId", client_group.id)
pulumi.export("taskRoleArn", task_role.arn)
pulumi.export("taskDefinitionArn", task.arn)
pulumi.export("nodeApiUrls", node_api_urls)
