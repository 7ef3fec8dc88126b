"""One cluster node: a network interface with a stable private IP and the EC2 instance on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass
class NodeArgs:
    address: str
    subnet_id: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    instance_type: str
    ami_id: pulumi.Input[str]
    ami_pinned: bool  # False when the AMI is looked up (most recent Ubuntu) at deploy time
    user_data: pulumi.Input[str]  # what render_cloud_config returns
    public: bool  # an Elastic IP for egress and FASP clients (new VPCs have no NAT gateway)
    root_volume_gib: int = 20
    # The stack tag: the deploy role's ssm:SendCommand is allowed only on instances carrying it.
    tags: Mapping[str, str] = field(default_factory=dict)
    depends_on: Sequence[pulumi.Resource] = ()  # what the instance's first boot reads (the cluster document)


class Node(pulumi.ComponentResource):
    instance_id: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    public_ip: pulumi.Output[str | None]

    def __init__(self, name: str, args: NodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hst-ha:index:Node", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        # The interface outlives instances: its address is what every other node's configuration
        # names, so replacing the instance changes nothing elsewhere, and no instance has to exist
        # before another node's user data can be rendered.
        interface = aws.ec2.NetworkInterface(
            f"{name}-eni", subnet_id=args.subnet_id, private_ips=[args.address],
            security_groups=[args.security_group_id], tags={**tags, "Name": f"{name}-eni"}, opts=child,
        )
        if args.public:
            address = aws.ec2.Eip(f"{name}-eip", domain="vpc", network_interface=interface.id,
                                  tags={**tags, "Name": f"{name}-eip"}, opts=child)
            self.public_ip = address.public_ip
        else:
            self.public_ip = pulumi.Output.from_input(None)

        ignore = [] if args.ami_pinned else ["ami"]  # a newer Ubuntu image must not replace running nodes
        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=args.ami_id,
            instance_type=args.instance_type,
            primary_network_interface=aws.ec2.InstancePrimaryNetworkInterfaceArgs(network_interface_id=interface.id),
            iam_instance_profile=args.instance_profile,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1,
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True, volume_type="gp3", volume_size=args.root_volume_gib, delete_on_termination=True,
            ),
            # Readable text, always under 16 KiB: identity, units, and where the code and the cluster
            # document are (components/aws/cloud_config.py).
            user_data=args.user_data,
            # User data changes only with the node's identity or its code (a new digest): cloud-init
            # acts on it only at first boot, so replace rather than stop/modify/start an instance that
            # would silently keep its old code. Settings and membership live in the cluster document,
            # which changes no user data.
            user_data_replace_on_change=True,
            tags={**tags, "Name": name},
            volume_tags={**tags, "Name": f"{name}-root"},
            # The interface is the instance's primary one: the old instance must release it first.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, ignore_changes=ignore,
                                        depends_on=list(args.depends_on)),
        )
        self.instance_id = instance.id
        self.private_ip = pulumi.Output.from_input(args.address)
        self.register_outputs(
            {"instanceId": self.instance_id, "privateIp": self.private_ip, "publicIp": self.public_ip}
        )
