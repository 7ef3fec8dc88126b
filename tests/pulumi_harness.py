"""Run `__main__.py` under `pulumi.runtime.set_mocks` and hand back the resource graph and outputs.

Each run is a fresh program (runpy), as in pulumi/examples `testing-unit-py`. Outputs are
resolved with `preview=False` unless asked otherwise: with preview, an output the mocks do not
supply stays unknown and an assertion on it silently never runs.
"""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pulumi
from pulumi.dynamic import CreateResult, UpdateResult
from pulumi.runtime.mocks import MockCallArgs, MockResourceArgs
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from components.runtime import bearer_token

ROOT = Path(__file__).resolve().parent.parent
MOCK_PASSWORD = "MockRedisPassword0123456789abcdefghijKLMN"
# What the dynamic providers would output; a real public key, so that consumers can parse it.
MOCK_PUBLIC_KEY = bearer_token.public_key_pem(bearer_token.generate_signing_key(1024))
MOCK_TOKEN = "eJwMockBearerTokenNeverInPlainOutputs=="
DYNAMIC = "pulumi-python:dynamic/hstha:"
MOCK_S3_PREFIX_LIST = "pl-6da54004"
REGION = "eu-west-1"
ZONES = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
ADOPTED_SUBNETS = {
    "subnet-0aaa": ("10.9.1.0/24", "eu-west-1a"),
    "subnet-0bbb": ("10.9.2.0/24", "eu-west-1b"),
    "subnet-0ccc": ("10.9.3.0/24", "eu-west-1c"),
}


def outs_of(result: CreateResult | UpdateResult) -> dict[str, Any]:
    """A dynamic provider result's outputs: optional in Pulumi's types, always set by ours."""
    assert result.outs is not None, "the provider returned no outputs"
    return result.outs


@dataclass
class Resource:
    typ: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    resources: list[Resource] = field(default_factory=list)
    calls: list[tuple[str, dict]] = field(default_factory=list)

    def new_resource(self, args: MockResourceArgs):
        state = dict(args.inputs)
        resource_id = f"{args.name}-id"
        if args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = MOCK_PASSWORD  # so that a test can tell if one ever comes back
        elif args.typ == "aws:secretsmanager/secret:Secret":
            resource_id = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{args.name}-AbCdEf"
            state["arn"] = resource_id
        elif args.typ == "aws:ec2/instance:Instance":
            resource_id = f"i-{abs(hash(args.name)) % 10**12:012d}"
        elif args.typ == "aws:ec2/eip:Eip":
            state["publicIp"] = f"203.0.113.{len(self.resources) % 250}"
        elif args.typ == "aws:iam/role:Role":
            state["arn"] = f"arn:aws:iam::123456789012:role/{args.name}"
            state["name"] = args.name
        elif args.typ == "aws:s3/bucketV2:BucketV2":
            state["bucket"] = f"{args.inputs['bucketPrefix']}0123456789"
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
        elif args.typ == "aws:sns/topic:Topic":
            state["arn"] = f"arn:aws:sns:{REGION}:123456789012:{args.name}"
        elif args.typ == "aws:iam/instanceProfile:InstanceProfile":
            state["name"] = args.name
        elif args.typ == "aws:ssm/parameter:Parameter":
            state["arn"] = f"arn:aws:ssm:{REGION}:123456789012:parameter{args.inputs['name']}"
        elif args.typ.startswith(DYNAMIC):
            resource_id = self._dynamic(args, state) or resource_id
        elif args.typ == "aws:ec2/vpcEndpoint:VpcEndpoint" and args.inputs.get("vpcEndpointType") == "Gateway":
            state["prefixListId"] = MOCK_S3_PREFIX_LIST
        self.resources.append(Resource(args.typ, args.name, dict(args.inputs), state))
        return resource_id, state

    @staticmethod
    def _dynamic(args: MockResourceArgs, state: dict) -> str | None:
        """The outputs of hst-ha's dynamic resources, as their providers would return them, and their id
        (None: the default)."""
        resource_id: str | None = None
        if args.typ == f"{DYNAMIC}SigningKey":
            name = f"{args.inputs['secret_name_prefix']}-0123456789ab"
            resource_id = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{name}-AbCdEf"
            state.update(
                secret_arn=resource_id, secret_name=name, public_key_pem=MOCK_PUBLIC_KEY, fingerprint="0123456789ab" * 5
            )
        elif args.typ == f"{DYNAMIC}RedisUsersSecret":
            name = f"{args.inputs['secret_name_prefix']}-0123456789ab"
            resource_id = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{name}-AbCdEf"
            # As the provider: where the passwords are and for which roles, never a password.
            state.update(secret_arn=resource_id, secret_name=name, version_id="00000000-0000-4000-8000-000000000001",
                         secret_tags=args.inputs["tags"])
        elif args.typ == f"{DYNAMIC}ClusterTls":
            name = f"{args.inputs['secret_name_prefix']}-0123456789ab"
            ca_name = f"{args.inputs['ca_secret_name_prefix']}-0123456789ab"
            resource_id = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{name}-AbCdEf"
            # As the provider: where the CA and the certificates are, never a PEM.
            state.update(secret_arn=resource_id, secret_name=name, version_id="00000000-0000-4000-8000-000000000002",
                         ca_secret_arn=f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{ca_name}-AbCdEf",
                         ca_secret_name=ca_name, secret_tags=args.inputs["tags"])
        elif args.typ == f"{DYNAMIC}SentinelQuorum":
            resource_id = f"quorum-{args.inputs['master_name']}"
            sentinels, servers = args.inputs["sentinels"], args.inputs["servers"]
            instances = args.inputs.get("instance_ids")  # unknown in a fresh preview
            state.update(probe_instance=instances[0] if isinstance(instances, list) else "", report={
                "master_name": args.inputs["master_name"], "primary": servers[0], "primary_run_id": "0" * 40,
                "replicas": servers[1:], "sentinels_seen": sentinels, "sentinels_missing": [],
                "quorum": args.inputs["sentinel_settings"]["quorum"],
                "ckquorum": f"OK {len(sentinels)} usable Sentinels. Quorum and failover authorization can be reached",
                "haproxy_routes": args.inputs["haproxy_endpoints"], "attempts": 1, "elapsed_s": 0.1,
            })
        elif args.typ == f"{DYNAMIC}ClusterMembership":
            # As the provider's create: nothing done to a running cluster yet.
            state.update(last_change={})
        elif args.typ == f"{DYNAMIC}BootstrapTokens":
            name = f"{args.inputs['secret_name_prefix']}-0123456789ab"
            resource_id = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{name}-AbCdEf"
            users = args.inputs["user_ids"]
            # As the provider: where the tokens are, never the tokens themselves.
            state.update(
                secret_arn=resource_id, secret_name=name, token_verification_key=MOCK_PUBLIC_KEY, digest="d" * 64,
                token_expires_at={u: "2031-01-01T01:00:00Z" for u in users},
                token_issued_at={u: "2031-01-01T00:00:00Z" for u in users},
            )
        return resource_id

    def call(self, args: MockCallArgs):
        self.calls.append((args.token, dict(args.args)))
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": ZONES, "zoneIds": ["euw1-az1", "euw1-az2", "euw1-az3"]}
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0ubuntu2404", "imageId": "ami-0ubuntu2404", "name": args.args["filters"][0]["values"][0]}
        if args.token == "aws:index/getRegion:getRegion":
            return {"name": REGION, "region": REGION, "id": REGION}
        if args.token == "aws:ec2/getPrefixList:getPrefixList":
            return {"id": MOCK_S3_PREFIX_LIST, "name": args.args["name"], "cidrBlocks": ["52.218.0.0/17"]}
        if args.token == "aws:ec2/getSubnet:getSubnet":
            cidr, zone = ADOPTED_SUBNETS[args.args["id"]]
            return {"id": args.args["id"], "cidrBlock": cidr, "availabilityZone": zone}
        raise NotImplementedError(f"no mock for invoke {args.token}")


@dataclass
class Program:
    mocks: RecordingMocks
    outputs: dict[str, Any]

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.mocks.resources if r.typ == typ]

    def named(self, name: str) -> Resource:
        (resource,) = [r for r in self.mocks.resources if r.name == name]
        return resource


# What every program test runs with unless it says how the nodes get their packages: a baked AMI
# (egress is closed, so the program refuses a config with neither this nor a package mirror).
BAKED_AMI = {"amiId": "ami-0123456789abcdef0", "amiHasPackages": True}
# A package mirror's prefix list: the way to the stock Ubuntu image (the AMI lookup).
MIRROR = {"packageMirrorPrefixListIds": ["pl-0123456789abcdef0"]}


def with_packages(config: dict[str, Any]) -> dict[str, Any]:
    """`config`, on BAKED_AMI unless it says itself how the nodes get their packages."""
    if "amiHasPackages" in config or "packageMirrorPrefixListIds" in config:
        return config
    return {**BAKED_AMI, **config}


def config_values(config: dict[str, Any]) -> dict[str, str]:
    """Stack config as Pulumi hands it over: strings, arrays as JSON."""
    return {f"hst-ha:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def run_program(config: dict[str, Any] | None = None, preview: bool = False) -> Program:
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="hst-ha", stack="test", preview=preview)
    pulumi.runtime.set_all_config(config_values(with_packages(config or {})))
    exports: dict[str, Any] = {}

    def program():
        with mock.patch.object(pulumi, "export", lambda key, value: exports.__setitem__(key, value)):
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        return pulumi.Output.all(**{k: pulumi.Output.from_input(v) for k, v in exports.items()})

    resolved: dict[str, Any] = {}
    pulumi.runtime.settings.SETTINGS.rpc_manager.clear()
    pulumi.runtime.settings.SETTINGS.outputs.clear()
    _sync_await(run_pulumi_func(lambda: resolved.update(_sync_await(program().future()) or {})))
    return Program(mocks, resolved)
