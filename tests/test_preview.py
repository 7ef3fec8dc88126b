"""Preview friendliness: `pulumi preview` on a fresh stack registers the whole plan, and nothing in
the program needs live infrastructure while it does (only the known read-only lookups run)."""

from __future__ import annotations

import socket
from collections import Counter

import pulumi
import pytest

from tests.fresh_preview import run_fresh_preview
from tests.pulumi_harness import ADOPTED_SUBNETS, MIRROR, run_program

pytestmark = pytest.mark.timeout(120)

# Read-only data-source lookups the program may make at preview; each answers from the AWS API
# without any of this stack's resources existing.
KNOWN_LOOKUPS = {
    "aws:index/getAvailabilityZones:getAvailabilityZones",
    "aws:ec2/getAmi:getAmi",
    "aws:index/getRegion:getRegion",
    "aws:ec2/getSubnet:getSubnet",
    "aws:ec2/getPrefixList:getPrefixList",  # S3's address list, in an existing VPC
}

PER_NODE = {
    "aws:ec2/instance:Instance": 1,
    "aws:ec2/networkInterface:NetworkInterface": 1,
    "aws:ec2/eip:Eip": 1,
    "hst-ha:index:Node": 1,
}
ONCE = {
    "hst-ha:index:Cluster": 1,
    "hst-ha:index:Network": 1,
    "aws:ec2/vpc:Vpc": 1,
    "aws:ec2/internetGateway:InternetGateway": 1,
    "aws:ec2/routeTable:RouteTable": 1,
    "aws:ec2/subnet:Subnet": 3,
    "aws:ec2/routeTableAssociation:RouteTableAssociation": 3,
    "aws:ec2/securityGroup:SecurityGroup": 2,  # the nodes' and the VPC endpoints'
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": 3,
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": 4,
    # secretsmanager, ssm, ssmmessages, ec2messages, monitoring, events; s3 (gateway)
    "aws:ec2/vpcEndpoint:VpcEndpoint": 7,
    # One per Redis role in one secret, generated inside the provider (components/aws/providers/redis_users.py).
    "pulumi-python:dynamic/hstha:RedisUsersSecret": 1,
    "aws:iam/role:Role": 1,
    # the secrets it reads; the cluster document; the SSM agent's own calls; metrics, events, snapshots
    "aws:iam/rolePolicy:RolePolicy": 4,
    "aws:iam/instanceProfile:InstanceProfile": 1,
    # components/aws/monitoring.py
    "hst-ha:index:Monitoring": 1,
    "aws:s3/bucketV2:BucketV2": 1,
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": 1,
    "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2": 1,
    "aws:s3/bucketVersioningV2:BucketVersioningV2": 1,
    "aws:s3/bucketOwnershipControls:BucketOwnershipControls": 1,
    "aws:s3/bucketLifecycleConfigurationV2:BucketLifecycleConfigurationV2": 1,
    "aws:s3/bucketPolicy:BucketPolicy": 1,
    "aws:s3/bucketObjectv2:BucketObjectv2": 1,  # the node code archive
    "aws:ssm/parameter:Parameter": 1,  # the cluster document
    "aws:sns/topic:Topic": 1,
    "aws:cloudwatch/metricAlarm:MetricAlarm": 7,
    "aws:cloudwatch/dashboard:Dashboard": 1,
}


class NoNetwork(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a TCP/UDP connection from the program (a Redis or Sentinel probe, a
    boto3 call, an HTTP request) fails the test: the mocks themselves run in-process."""
    def refuse(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise NoNetwork(f"the program opened a network connection to {address} during preview")
        return original_connect(self, address, *args, **kwargs)

    original_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(socket.socket(), address))


def types(program) -> Counter:
    return Counter(r.typ for r in program.mocks.resources)


@pytest.mark.parametrize("nodes", [3, 5])
def test_fresh_preview_registers_the_whole_plan(no_network, nodes):
    preview = run_fresh_preview({"nodeCount": nodes})
    registered = types(preview)
    for typ, count in ONCE.items():
        assert registered[typ] == count, typ
    for typ, count in PER_NODE.items():
        assert registered[typ] == count * nodes, typ
    # Nothing is left for `up` to discover: preview registers exactly what an update registers,
    # including whatever resources are added after the nodes (quorum check, tokens).
    assert registered == types(run_program({"nodeCount": nodes}))


def test_preview_makes_no_invoke_but_the_known_lookups(no_network):
    adopted = {**MIRROR, "vpcId": "vpc-0123", "subnetIds": list(ADOPTED_SUBNETS)}
    for program in (run_fresh_preview(MIRROR), run_fresh_preview(adopted)):
        made = {token for token, _ in program.mocks.calls}
        assert made <= KNOWN_LOOKUPS, f"invokes beyond the known lookups at preview: {made - KNOWN_LOOKUPS}"
    pinned = run_fresh_preview({"amiId": "ami-0123456789abcdef0"})
    assert {t for t, _ in pinned.mocks.calls} <= KNOWN_LOOKUPS - {"aws:ec2/getAmi:getAmi"}


def test_fresh_preview_shows_unknowns_only_where_expected(no_network):
    preview = run_fresh_preview(MIRROR)  # the stock image, looked up
    instances = preview.of_type("aws:ec2/instance:Instance")
    for instance in instances:
        # Known from config and lookups: what `pulumi preview` shows for review.
        assert instance.inputs["instanceType"] == "t3.medium"
        assert instance.inputs["ami"] == "ami-0ubuntu2404"
        assert instance.inputs["metadataOptions"]["httpTokens"] == "required"
        assert instance.inputs["userDataReplaceOnChange"] is True
        # Unknown until the resources it names exist: the interface id, and the user data, which
        # names the Redis secret's ARN (a later preview of the same stack shows it in full).
        assert isinstance(instance.inputs["primaryNetworkInterface"]["networkInterfaceId"], pulumi.output.Unknown)
        assert isinstance(instance.inputs["userData"], pulumi.output.Unknown)
    # The stable private addresses every node's configuration names are known before anything exists.
    interfaces = preview.of_type("aws:ec2/networkInterface:NetworkInterface")
    addresses = sorted(ip for r in interfaces for ip in r.inputs["privateIps"])
    assert addresses == ["10.42.0.10", "10.42.128.10", "10.42.64.10"]


def test_the_network_guard_works(no_network):
    with pytest.raises(NoNetwork):
        socket.create_connection(("127.0.0.1", 9))
