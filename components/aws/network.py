"""The cluster's network: a new VPC with one public subnet per availability zone (or the given
subnets), the cluster security group that carries the port contract (README "Architecture"), and the VPC
endpoints that are the nodes' only way out by default.

Egress is narrow: Redis and Sentinel to the other members, HTTPS to the interface endpoints
(Secrets Manager for the password at boot, SSM for Session Manager and the quorum check) and to S3
(the gateway endpoint in a new VPC, S3's own prefix list in an existing one), and tcp 80/443 to
the package mirrors only when `packageMirrorPrefixListIds` names them. Nothing goes to 0.0.0.0/0:
a Redis `REPLICAOF`/`MIGRATE` to an internet host finds no way out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.settings import (
    METRICS_PORTS,
    NODE_API_PORT,
    SSH_FASP_PORT,
    SettingsError,
    node_address_problems,
    spread,
    subnet_cidrs,
)

ZONES = 3
ANYWHERE = "0.0.0.0/0"
HTTPS = 443
HTTP = 80
# What a node calls: Secrets Manager at boot; SSM, ssmmessages and ec2messages for the SSM agent
# (Session Manager and the Run Command the quorum check uses).
# CloudWatch (monitoring) and EventBridge (events) for the node's metrics and failover events.
INTERFACE_ENDPOINTS = ("secretsmanager", "ssm", "ssmmessages", "ec2messages", "monitoring", "events")
# Peers of an egress rule that are not CIDRs.
SELF, ENDPOINTS, S3 = "self", "endpoints", "s3"

__all__ = [
    "INTERFACE_ENDPOINTS", "Network", "NetworkArgs", "node_addresses", "security_rules", "spread", "subnet_cidrs",
]


@dataclass
class NetworkArgs:
    node_count: int
    redis_port: int
    sentinel_port: int
    vpc_cidr: str
    region: str
    admin_cidrs: tuple[str, ...] = ()
    transfer_cidrs: tuple[str, ...] = ()
    vpc_id: str | None = None  # adopt this VPC and these subnets instead of creating them
    subnet_ids: tuple[str, ...] = ()
    node_private_ips: tuple[str, ...] = ()  # fixed addresses; otherwise host .10 upwards of each subnet
    package_mirror_prefix_list_ids: tuple[str, ...] = ()
    metrics_cidrs: tuple[str, ...] = ()  # Prometheus scrapers: the metrics ports, nothing else
    tags: Mapping[str, str] = field(default_factory=dict)


def node_addresses(cidrs: list[str], node_count: int) -> list[str]:
    """Stable private IPs known before any instance exists: host .10, .11, ... of each node's subnet."""
    import ipaddress

    placement = spread(node_count, len(cidrs))
    addresses = []
    for i, subnet in enumerate(placement):
        host = 10 + placement[:i].count(subnet)
        addresses.append(str(ipaddress.ip_network(cidrs[subnet]).network_address + host))
    return addresses


def security_rules(args: NetworkArgs) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """(protocol, port, peer) for ingress and egress. A peer is a CIDR, a prefix list id (pl-...),
    `self` (members of the cluster group), `endpoints` (the VPC endpoints' group) or `s3` (S3's
    prefix list). Redis and Sentinel only between members; nothing at all for the HAProxy port
    (loopback only); SSH/FASP and the Node API only from the configured CIDRs."""
    ingress = [("tcp", args.redis_port, SELF), ("tcp", args.sentinel_port, SELF)]
    wanted = [(cidr, ("tcp", SSH_FASP_PORT)) for cidr in args.admin_cidrs]
    wanted += [(cidr, ("tcp", NODE_API_PORT)) for cidr in args.admin_cidrs]
    wanted += [(cidr, rule) for cidr in args.transfer_cidrs
               for rule in (("tcp", SSH_FASP_PORT), ("udp", SSH_FASP_PORT))]
    wanted += [(cidr, ("tcp", port)) for cidr in args.metrics_cidrs for port in METRICS_PORTS]
    for cidr, (protocol, port) in wanted:
        if (protocol, port, cidr) not in ingress:  # AWS refuses a duplicate rule
            ingress.append((protocol, port, cidr))
    egress = [
        ("tcp", args.redis_port, SELF),
        ("tcp", args.sentinel_port, SELF),
        ("tcp", HTTPS, ENDPOINTS),
        ("tcp", HTTPS, S3),  # an s3:// HST installer
    ]
    egress += [("tcp", port, prefix_list) for prefix_list in args.package_mirror_prefix_list_ids
               for port in (HTTP, HTTPS)]
    return ingress, egress


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    subnet_ids: pulumi.Output[list[str]]
    security_group_id: pulumi.Output[str]
    """The cluster group: Redis and Sentinel open only between its members."""
    endpoint_security_group_id: pulumi.Output[str]
    """The VPC endpoints' group: HTTPS from the cluster group only."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hst-ha:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        if args.vpc_id:
            vpc_id: pulumi.Input[str] = args.vpc_id
            subnet_ids: list[pulumi.Input[str]] = list(args.subnet_ids)
            found = [aws.ec2.get_subnet(id=s, opts=pulumi.InvokeOptions(parent=self)) for s in args.subnet_ids]
            cidrs = [subnet.cidr_block for subnet in found]
            # An interface endpoint takes one subnet per availability zone.
            by_zone = {subnet.availability_zone: subnet_id
                       for subnet_id, subnet in reversed(list(zip(args.subnet_ids, found, strict=True)))}
            endpoint_subnets: list[pulumi.Input[str]] = [s for s in args.subnet_ids if s in by_zone.values()]
            problems = node_address_problems(args.node_private_ips, cidrs) if args.node_private_ips else []
            if problems:
                # Only now are an existing VPC's subnets known; still before any resource is created.
                raise pulumi.RunError(str(SettingsError([f"hst-ha:nodePrivateIps = {p}" for p in problems])))
            # S3 is reached over whatever route the VPC has (its gateway endpoint or a NAT); the
            # rule names S3's own address list, so nothing else is reachable that way.
            s3_prefix_list: pulumi.Input[str] = aws.ec2.get_prefix_list(
                name=f"com.amazonaws.{args.region}.s3", opts=pulumi.InvokeOptions(parent=self)).id
            self.public = False
        else:
            vpc = aws.ec2.Vpc(
                f"{name}-vpc", cidr_block=args.vpc_cidr, enable_dns_hostnames=True, enable_dns_support=True,
                tags={**tags, "Name": f"{name}-vpc"}, opts=child,
            )
            # Inbound only (FASP and admin clients to the nodes' Elastic IPs): the security group
            # gives the nodes no egress to the internet.
            gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={**tags, "Name": f"{name}-igw"},
                                              opts=child)
            routes = aws.ec2.RouteTable(
                f"{name}-routes", vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block=ANYWHERE, gateway_id=gateway.id)],
                tags={**tags, "Name": f"{name}-routes"}, opts=child,
            )
            zones = aws.get_availability_zones(state="available", opts=pulumi.InvokeOptions(parent=self)).names
            if len(zones) < ZONES:
                raise ValueError(
                    f"the region offers {len(zones)} availability zones; hst-ha spreads nodes over {ZONES}")
            cidrs = subnet_cidrs(args.vpc_cidr)
            subnets = []
            # The region may offer more zones than the cluster spreads over: the first ZONES are used.
            for i, (zone, cidr) in enumerate(zip(zones, cidrs, strict=False)):
                subnet = aws.ec2.Subnet(
                    f"{name}-subnet-{i + 1}", vpc_id=vpc.id, cidr_block=cidr, availability_zone=zone,
                    tags={**tags, "Name": f"{name}-subnet-{i + 1}"}, opts=child,
                )
                aws.ec2.RouteTableAssociation(
                    f"{name}-subnet-{i + 1}-routes", subnet_id=subnet.id, route_table_id=routes.id, opts=child,
                )
                subnets.append(subnet)
            s3 = aws.ec2.VpcEndpoint(
                f"{name}-s3", vpc_id=vpc.id, service_name=f"com.amazonaws.{args.region}.s3",
                vpc_endpoint_type="Gateway", route_table_ids=[routes.id], tags={**tags, "Name": f"{name}-s3"},
                opts=child,
            )
            s3_prefix_list = s3.prefix_list_id
            vpc_id = vpc.id
            subnet_ids = [s.id for s in subnets]
            endpoint_subnets = list(subnet_ids)
            self.public = True  # nodes get an Elastic IP for FASP clients

        placement = spread(args.node_count, len(subnet_ids))
        self.node_subnet_ids: list[pulumi.Input[str]] = [subnet_ids[i] for i in placement]
        self.node_addresses: list[str] = list(args.node_private_ips) or node_addresses(cidrs, args.node_count)

        group = aws.ec2.SecurityGroup(
            f"{name}-nodes", vpc_id=vpc_id, description="hst-ha cluster nodes (Redis, Sentinel, HST Server)",
            tags={**tags, "Name": f"{name}-nodes"}, opts=child,
        )
        endpoints = aws.ec2.SecurityGroup(
            f"{name}-endpoints", vpc_id=vpc_id, description="hst-ha VPC endpoints (HTTPS from the cluster nodes only)",
            tags={**tags, "Name": f"{name}-endpoints"}, opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-endpoints-in-tcp-443-nodes", security_group_id=endpoints.id, ip_protocol="tcp",
            from_port=HTTPS, to_port=HTTPS, referenced_security_group_id=group.id,
            description="HTTPS from the cluster nodes", opts=child,
        )
        for service in INTERFACE_ENDPOINTS:
            aws.ec2.VpcEndpoint(
                f"{name}-{service}", vpc_id=vpc_id, service_name=f"com.amazonaws.{args.region}.{service}",
                vpc_endpoint_type="Interface", private_dns_enabled=True, subnet_ids=endpoint_subnets,
                security_group_ids=[endpoints.id], tags={**tags, "Name": f"{name}-{service}"}, opts=child,
            )

        # peer -> (label, referenced group, prefix list); any other peer is a prefix list id or a CIDR.
        peers: dict[str, tuple[str, pulumi.Input[str] | None, pulumi.Input[str] | None]] = {
            SELF: ("self", group.id, None),
            ENDPOINTS: ("endpoints", endpoints.id, None),
            S3: ("s3", None, s3_prefix_list),
        }
        ingress, egress = security_rules(args)
        for direction, rules, rule_type in (("in", ingress, aws.vpc.SecurityGroupIngressRule),
                                            ("out", egress, aws.vpc.SecurityGroupEgressRule)):
            for protocol, port, peer in rules:
                cidr_ipv4: str | None = None
                if peer in peers:
                    label, referenced, prefix_list = peers[peer]
                elif peer.startswith("pl-"):
                    label, referenced, prefix_list = peer, None, peer
                else:
                    label = peer.replace("/", "_").replace(".", "-")
                    referenced, prefix_list, cidr_ipv4 = None, None, peer
                rule_type(
                    f"{name}-{direction}-{protocol}-{port}-{label}", security_group_id=group.id,
                    ip_protocol=protocol, from_port=port, to_port=port, description=f"{protocol}/{port} {label}",
                    referenced_security_group_id=referenced, prefix_list_id=prefix_list, cidr_ipv4=cidr_ipv4,
                    opts=child,
                )

        self.vpc_id = pulumi.Output.from_input(vpc_id)
        self.subnet_ids = pulumi.Output.all(*subnet_ids)
        self.security_group_id = group.id
        self.endpoint_security_group_id = endpoints.id
        self.register_outputs({
            "vpcId": self.vpc_id, "subnetIds": self.subnet_ids, "securityGroupId": self.security_group_id,
            "endpointSecurityGroupId": self.endpoint_security_group_id,
        })
