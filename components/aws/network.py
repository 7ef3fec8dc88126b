"""The cluster's network: a new VPC with one public subnet per availability zone (or the given
subnets), and the cluster security group that carries the port contract of design.md."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.settings import NODE_API_PORT, SSH_FASP_PORT

ZONES = 3
ANYWHERE = "0.0.0.0/0"


@dataclass
class NetworkArgs:
    node_count: int
    redis_port: int
    sentinel_port: int
    vpc_cidr: str
    admin_cidrs: tuple[str, ...] = ()
    transfer_cidrs: tuple[str, ...] = ()
    vpc_id: str | None = None  # adopt this VPC and these subnets instead of creating them
    subnet_ids: tuple[str, ...] = ()
    node_private_ips: tuple[str, ...] = ()  # fixed addresses; otherwise host .10 upwards of each subnet


def subnet_cidrs(vpc_cidr: str, zones: int = ZONES) -> list[str]:
    """One subnet per zone, each a quarter of the VPC block (the fourth quarter stays free)."""
    return [str(net) for net in list(ipaddress.ip_network(vpc_cidr).subnets(prefixlen_diff=2))[:zones]]


def spread(node_count: int, subnets: int) -> list[int]:
    """Subnet index of each node: round-robin, so no subnet (zone) holds a majority of nodes."""
    return [i % subnets for i in range(node_count)]


def node_addresses(cidrs: list[str], node_count: int) -> list[str]:
    """Stable private IPs known before any instance exists: host .10, .11, ... of each node's subnet."""
    placement = spread(node_count, len(cidrs))
    addresses = []
    for i, subnet in enumerate(placement):
        host = 10 + placement[:i].count(subnet)
        addresses.append(str(ipaddress.ip_network(cidrs[subnet]).network_address + host))
    return addresses


def security_rules(args: NetworkArgs) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """(protocol, port, source) for ingress and egress. `self` means members of the cluster group.
    Redis and Sentinel only between members; nothing at all for the HAProxy port (loopback only);
    SSH/FASP and the Node API only from the configured CIDRs."""
    ingress = [("tcp", args.redis_port, "self"), ("tcp", args.sentinel_port, "self")]
    wanted = [(cidr, ("tcp", SSH_FASP_PORT)) for cidr in args.admin_cidrs]
    wanted += [(cidr, ("tcp", NODE_API_PORT)) for cidr in args.admin_cidrs]
    wanted += [(cidr, rule) for cidr in args.transfer_cidrs for rule in (("tcp", SSH_FASP_PORT), ("udp", SSH_FASP_PORT))]
    for cidr, (protocol, port) in wanted:
        if (protocol, port, cidr) not in ingress:  # AWS refuses a duplicate rule
            ingress.append((protocol, port, cidr))
    egress = [
        ("tcp", args.redis_port, "self"),
        ("tcp", args.sentinel_port, "self"),
        # Package mirrors (http), Secrets Manager, SSM and the HSTS installer (https).
        ("tcp", 80, ANYWHERE),
        ("tcp", 443, ANYWHERE),
    ]
    return ingress, egress


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    subnet_ids: pulumi.Output[list[str]]
    security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hst-ha:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        if args.vpc_id:
            vpc_id: pulumi.Input[str] = args.vpc_id
            subnet_ids: list[pulumi.Input[str]] = list(args.subnet_ids)
            cidrs = [aws.ec2.get_subnet(id=s, opts=pulumi.InvokeOptions(parent=self)).cidr_block for s in args.subnet_ids]
            self.public = False
        else:
            vpc = aws.ec2.Vpc(
                f"{name}-vpc", cidr_block=args.vpc_cidr, enable_dns_hostnames=True, enable_dns_support=True,
                tags={"Name": f"{name}-vpc"}, opts=child,
            )
            gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={"Name": f"{name}-igw"}, opts=child)
            routes = aws.ec2.RouteTable(
                f"{name}-routes", vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block=ANYWHERE, gateway_id=gateway.id)],
                tags={"Name": f"{name}-routes"}, opts=child,
            )
            zones = aws.get_availability_zones(state="available", opts=pulumi.InvokeOptions(parent=self)).names
            if len(zones) < ZONES:
                raise ValueError(f"the region offers {len(zones)} availability zones; hst-ha spreads nodes over {ZONES}")
            cidrs = subnet_cidrs(args.vpc_cidr)
            subnets = []
            for i, (zone, cidr) in enumerate(zip(zones, cidrs)):
                subnet = aws.ec2.Subnet(
                    f"{name}-subnet-{i + 1}", vpc_id=vpc.id, cidr_block=cidr, availability_zone=zone,
                    tags={"Name": f"{name}-subnet-{i + 1}"}, opts=child,
                )
                aws.ec2.RouteTableAssociation(
                    f"{name}-subnet-{i + 1}-routes", subnet_id=subnet.id, route_table_id=routes.id, opts=child,
                )
                subnets.append(subnet)
            vpc_id = vpc.id
            subnet_ids = [s.id for s in subnets]
            self.public = True  # nodes get an Elastic IP for egress and for FASP clients

        placement = spread(args.node_count, len(subnet_ids))
        self.node_subnet_ids: list[pulumi.Input[str]] = [subnet_ids[i] for i in placement]
        self.node_addresses: list[str] = list(args.node_private_ips) or node_addresses(cidrs, args.node_count)

        group = aws.ec2.SecurityGroup(
            f"{name}-nodes", vpc_id=vpc_id, description="hst-ha cluster nodes (Redis, Sentinel, HST Server)",
            tags={"Name": f"{name}-nodes"}, opts=child,
        )
        ingress, egress = security_rules(args)
        for direction, rules, rule_type in (("in", ingress, aws.vpc.SecurityGroupIngressRule),
                                            ("out", egress, aws.vpc.SecurityGroupEgressRule)):
            for protocol, port, source in rules:
                label = "self" if source == "self" else source.replace("/", "_").replace(".", "-")
                peer = {"referenced_security_group_id": group.id} if source == "self" else {"cidr_ipv4": source}
                rule_type(
                    f"{name}-{direction}-{protocol}-{port}-{label}", security_group_id=group.id,
                    ip_protocol=protocol, from_port=port, to_port=port,
                    description=f"{protocol}/{port} {'cluster members' if source == 'self' else source}",
                    **peer, opts=child,
                )

        self.vpc_id = pulumi.Output.from_input(vpc_id)
        self.subnet_ids = pulumi.Output.all(*subnet_ids)
        self.security_group_id = group.id
        self.register_outputs({
            "vpcId": self.vpc_id, "subnetIds": self.subnet_ids, "securityGroupId": self.security_group_id,
        })
