"""The user data `pulumi up` would hand each instance, from `__main__.py` run under Pulumi mocks,
with what the nodes read besides: the cluster document (an SSM parameter) and the code archive
(an S3 object), as the program made them.

The node target boots exactly these bytes and serves exactly that document and archive. The mocks
stand in for AWS only where the program reads an answer back (the secret's ARN, the region, the AMI
and zone lookups, the names AWS gives); everything else is the program's own code path. Run as a
module it prints JSON, so the caller's process never holds the Pulumi runtime's global state:

    python -m components.node.program '{"vpcCidr": "10.96.0.0/16", "nodePrivateIps": ["10.96.0.10", ...]}'
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account: a secret it stores answers under this ARN
SECRET_SUFFIX = "AbCdEf"  # what Secrets Manager appends to a secret's name in its ARN
BAKED_AMI = "ami-0123456789abcdef0"  # the node image stands for a baked AMI (amiHasPackages)
INSTANCE = "aws:ec2/instance:Instance"
SECRET = "aws:secretsmanager/secret:Secret"
REDIS_USERS = "pulumi-python:dynamic/hstha:RedisUsersSecret"
CLUSTER_TLS = "pulumi-python:dynamic/hstha:ClusterTls"
PARAMETER = "aws:ssm/parameter:Parameter"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"


def secret_arn(name: str) -> str:
    return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-{SECRET_SUFFIX}"


def _identity(typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The names and ARNs AWS gives the resources whose identity the program builds on (its IAM
    policies name them)."""
    if typ == "aws:iam/role:Role":
        return {"arn": f"arn:aws:iam::123456789012:role/{name}", "name": name}
    if typ == "aws:s3/bucketV2:BucketV2":
        bucket = f"{inputs.get('bucketPrefix', name)}0123456789"
        return {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}"}
    if typ == "aws:sns/topic:Topic":
        return {"arn": f"arn:aws:sns:{REGION}:123456789012:{name}"}
    if typ == "aws:iam/instanceProfile:InstanceProfile":
        return {"name": name}
    if typ == PARAMETER:
        return {"arn": f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{inputs['name']}"}
    return {}


def _secret_state(args: Any, state: dict[str, Any]) -> str:
    """A secret's ARN in the mock state: a plain Secret's, or what the RedisUsersSecret (ClusterTls)
    provider's create returns (where the secret is, never a password: the node target's Secrets Manager
    stand-in holds the passwords, under this name)."""
    if args.typ == SECRET:
        state["arn"] = secret_arn(args.name)
        return str(state["arn"])
    name = f"{args.inputs['secret_name_prefix']}-0123456789ab"
    state["secret_arn"] = secret_arn(name)
    state.update(secret_name=name, version_id="1", secret_tags=args.inputs["tags"])
    if args.typ == CLUSTER_TLS:
        # As the ClusterTls provider: the nodes' secret (the node target's stand-in stores the
        # certificates under this name) and the deployer-only CA secret, which no node reads.
        ca_name = f"{args.inputs['ca_secret_name_prefix']}-0123456789ab"
        state.update(ca_secret_arn=secret_arn(ca_name), ca_secret_name=ca_name)
    return str(state["secret_arn"])


def render_user_data(config: dict[str, Any]) -> dict[str, Any]:
    """Run the program; return {"userData": [per node, in node order], "redisAuthSecretArn",
    "tlsSecretArn" (the nodes' TLS secret; "" without tlsEnabled), "region",
    "parameters": {name: value}, "objects": [{"bucket", "key", "contentBase64"}]}."""
    import pulumi
    from pulumi.runtime.mocks import MockCallArgs, MockResourceArgs
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    instances: list[tuple[str, str]] = []
    secrets: dict[str, str] = {}
    parameters: dict[str, str] = {}
    objects: list[dict[str, str]] = []

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
            state = dict(args.inputs)
            resource_id = f"{args.name}-id"
            if args.typ in (SECRET, REDIS_USERS, CLUSTER_TLS):
                resource_id = secrets[args.name] = _secret_state(args, state)
            elif args.typ == INSTANCE:
                instances.append((args.name, str(args.inputs["userData"])))
            else:
                if args.typ == PARAMETER:
                    parameters[args.inputs["name"]] = args.inputs["insecureValue"]
                elif args.typ == OBJECT:
                    objects.append({k: args.inputs[k] for k in ("bucket", "key", "contentBase64")})
                state.update(_identity(args.typ, args.name, args.inputs))
            return resource_id, state

        def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
            # (outputs, failures): the SDK iterates the failures, so none is an empty list, not None.
            if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
                return {"names": [f"{REGION}{z}" for z in "abc"], "zoneIds": ["euw1-az1", "euw1-az2", "euw1-az3"]}, []
            if args.token == "aws:ec2/getAmi:getAmi":
                return {"id": "ami-0nodetarget", "imageId": "ami-0nodetarget"}, []
            if args.token == "aws:index/getRegion:getRegion":
                return {"name": REGION, "region": REGION, "id": REGION}, []
            raise NotImplementedError(f"the node target has no stand-in for {args.token}")

    pulumi.runtime.set_mocks(Mocks(), project="hst-ha", stack="node-target", preview=False)
    pulumi.runtime.set_all_config(
        {f"hst-ha:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    )
    def run() -> None:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

    with mock.patch.object(pulumi, "export", lambda *_: None):
        _sync_await(run_pulumi_func(run))
    redis_secret = [arn for name, arn in secrets.items() if name.endswith("-redis-auth")]
    if len(redis_secret) != 1:
        raise RuntimeError(f"expected one Redis auth secret, the program made {sorted(secrets)}")
    tls_secret = [arn for name, arn in secrets.items() if name.endswith("-tls")]
    # Instances are named <cluster>-node-N-instance; order them by N, not by registration.
    ordered = sorted(instances, key=lambda item: int(item[0].rsplit("-node-", 1)[1].split("-")[0]))
    return {"userData": [text for _, text in ordered], "redisAuthSecretArn": redis_secret[0],
            "tlsSecretArn": tls_secret[0] if tls_secret else "", "region": REGION,
            "parameters": parameters, "objects": objects}


def seed_bytes(rendered: dict[str, Any], index: int) -> bytes:
    """What EC2 hands node `index` as its user data: the text, as is."""
    return str(rendered["userData"][index]).encode()


if __name__ == "__main__":
    json.dump(render_user_data(json.loads(sys.argv[1])), sys.stdout)
