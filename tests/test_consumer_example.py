"""examples/consumer under mocks: it reads the hst-ha outputs through a StackReference (mocked as
`pulumi:pulumi:StackReference`, fed with the outputs the real program exports) and wires a client
that reaches the Node API and nothing else, with a role that reads one secret."""

from __future__ import annotations

import ipaddress
import json
import re
import runpy
from dataclasses import dataclass, field
from unittest import mock

import pulumi
import pytest
from pulumi.runtime.mocks import MockCallArgs, MockResourceArgs
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from tests.pulumi_harness import REGION, ROOT, Resource, run_program

pytestmark = pytest.mark.timeout(120)

EXAMPLE = ROOT / "examples" / "consumer"
CLUSTER_STACK = "acme/hst-ha/prod"
TOKEN_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:hst-ha-bootstrap-tokens-AbCdEf"
# Outputs the dynamic-provider work adds; used only until the program exports them itself.
ANNOUNCED = {
    "bearerTokenSecretArn": TOKEN_SECRET_ARN,
    "tokenVerificationKey": "-----BEGIN PUBLIC KEY-----\nMIIB...\n-----END PUBLIC KEY-----\n",
    "quorum": {"primary": "10.42.0.10:31415"},
}
CONTRACT_PORTS = (31415, 41415, 31414)  # Redis, Sentinel, HAProxy


@dataclass
class ConsumerMocks(pulumi.runtime.Mocks):
    cluster_outputs: dict
    resources: list[Resource] = field(default_factory=list)

    def new_resource(self, args: MockResourceArgs):
        state = dict(args.inputs)
        if args.typ == "pulumi:pulumi:StackReference":
            assert args.inputs["name"] == CLUSTER_STACK
            state = {**args.inputs, "outputs": self.cluster_outputs}
        elif args.typ == "aws:iam/role:Role":
            state["arn"] = f"arn:aws:iam::123456789012:role/{args.name}"
        elif args.typ == "aws:ecs/taskDefinition:TaskDefinition":
            state["arn"] = f"arn:aws:ecs:{REGION}:123456789012:task-definition/{args.inputs['family']}:1"
        self.resources.append(Resource(args.typ, args.name, dict(args.inputs), state))
        return f"{args.name}-id", state

    def call(self, args: MockCallArgs):
        raise NotImplementedError(f"the consumer example makes no invoke, got {args.token}")


def cluster_outputs() -> dict:
    """The real program's outputs (3 nodes, new VPC), plus the announced ones it does not export yet."""
    outputs = run_program({}).outputs
    return {**ANNOUNCED, **outputs}


def run_consumer(outputs: dict):
    mocks = ConsumerMocks(outputs)
    pulumi.runtime.set_mocks(mocks, project="hst-ha-consumer", stack="test", preview=False)
    pulumi.runtime.set_all_config({"hst-ha-consumer:clusterStack": CLUSTER_STACK})
    exports: dict = {}

    def program():
        with mock.patch.object(pulumi, "export", lambda key, value: exports.__setitem__(key, value)):
            runpy.run_path(str(EXAMPLE / "__main__.py"), run_name="__main__")
        return pulumi.Output.all(**{k: pulumi.Output.from_input(v) for k, v in exports.items()})

    resolved: dict = {}
    pulumi.runtime.settings.SETTINGS.rpc_manager.clear()
    pulumi.runtime.settings.SETTINGS.outputs.clear()
    _sync_await(run_pulumi_func(lambda: resolved.update(_sync_await(program().future()) or {})))
    return mocks, resolved


@pytest.fixture(scope="module")
def consumer():
    outputs = cluster_outputs()
    mocks, exports = run_consumer(outputs)
    return outputs, mocks, exports


def of_type(mocks, typ):
    return [r for r in mocks.resources if r.typ == typ]


def test_reads_only_outputs_the_cluster_exports_or_announces():
    source = (EXAMPLE / "__main__.py").read_text()
    read = set(re.findall(r"""(?:require|get)_output\(\s*["'](\w+)["']""", source))
    assert read, "the example reads no output"
    assert read <= set(run_program({}).outputs) | set(ANNOUNCED)


def test_client_group_reaches_the_node_api_on_the_nodes_and_nothing_else(consumer):
    outputs, mocks, _ = consumer
    (group,) = of_type(mocks, "aws:ec2/securityGroup:SecurityGroup")
    assert group.inputs["vpcId"] == outputs["vpcId"]
    assert not group.inputs.get("ingress")
    egress = group.inputs["egress"]
    node_api = [r for r in egress if r["fromPort"] == 9092]
    assert len(node_api) == 1 and node_api[0]["toPort"] == 9092 and node_api[0]["protocol"] == "tcp"
    assert sorted(node_api[0]["cidrBlocks"]) == sorted(f"{ip}/32" for ip in outputs["nodePrivateIps"])
    others = [r for r in egress if r["fromPort"] != 9092]
    assert [(r["fromPort"], r["toPort"]) for r in others] == [(443, 443)]
    for rule in egress:
        assert rule["protocol"] == "tcp", "no all-traffic rule"
        for port in CONTRACT_PORTS:
            assert not rule["fromPort"] <= port <= rule["toPort"], f"egress admits {port}"


def test_cluster_admits_the_client_group_to_the_node_api_only(consumer):
    outputs, mocks, _ = consumer
    (rule,) = of_type(mocks, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert rule.inputs["securityGroupId"] == outputs["securityGroupId"]
    assert rule.inputs["referencedSecurityGroupId"] == "hst-client-id"
    assert (rule.inputs["ipProtocol"], rule.inputs["fromPort"], rule.inputs["toPort"]) == ("tcp", 9092, 9092)
    assert not rule.inputs.get("cidrIpv4")


def test_task_role_reads_the_token_secret_and_nothing_else(consumer):
    outputs, mocks, _ = consumer
    (role,) = of_type(mocks, "aws:iam/role:Role")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ecs-tasks.amazonaws.com"}]
    (policy,) = of_type(mocks, "aws:iam/rolePolicy:RolePolicy")
    statements = json.loads(policy.inputs["policy"])["Statement"]
    assert statements == [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                           "Resource": outputs["bearerTokenSecretArn"]}]
    assert not of_type(mocks, "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert outputs["redisAuthSecretArn"] not in json.dumps([r.inputs for r in mocks.resources], default=str)


def test_task_environment_carries_the_arn_and_node_api_urls(consumer):
    outputs, mocks, exports = consumer
    (task,) = of_type(mocks, "aws:ecs/taskDefinition:TaskDefinition")
    assert task.inputs["taskRoleArn"] == "arn:aws:iam::123456789012:role/hst-client-task"
    (container,) = json.loads(task.inputs["containerDefinitions"])
    env = {e["name"]: e["value"] for e in container["environment"]}
    urls = [f"https://{ip}:9092" for ip in outputs["nodePrivateIps"]]
    assert env == {"HST_NODE_API_URLS": ",".join(urls), "HST_BEARER_TOKEN_SECRET_ARN": outputs["bearerTokenSecretArn"]}
    assert exports["nodeApiUrls"] == ",".join(urls)
    for url in urls:
        assert ipaddress.ip_address(url.split("//")[1].split(":")[0]).is_private


def test_resource_count_does_not_depend_on_the_node_count():
    outputs = cluster_outputs()
    five = {**outputs, "nodePrivateIps": outputs["nodePrivateIps"] + ["10.42.0.11", "10.42.64.11"]}
    assert len(run_consumer(outputs)[0].resources) == len(run_consumer(five)[0].resources)


def test_consumer_keeps_the_security_contract(consumer):
    from policy import rules

    _, mocks, _ = consumer
    assert {r.name: v for r in mocks.resources if (v := rules.check(r.typ, r.inputs))} == {}
