"""The policy pack (policy/): its plain rules on the resources the mocked program registers, on
hand-made bad properties, and the pack itself driven through the real Policy SDK servicer."""

from __future__ import annotations

import base64
import gzip
import json
import runpy
import sys
from typing import Any
from unittest import mock

import pulumi
import pytest
import yaml

from components.aws import cloud_config
from policy import rules
from tests.fresh_preview import run_fresh_preview
from tests.pulumi_harness import ADOPTED_SUBNETS, MOCK_PASSWORD, ROOT, run_program

pytestmark = pytest.mark.timeout(120)

LITERAL = "Hunter2Hunter2Hunter2"  # a would-be password: must be caught, and never echoed

CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "open-cidrs": {"adminCidrs": ["198.51.100.0/24"], "transferCidrs": ["203.0.113.0/24", "198.51.100.0/24"]},
    "existing-vpc-5-nodes": {"nodeCount": 5, "vpcId": "vpc-0123", "subnetIds": list(ADOPTED_SUBNETS)},
    "15-nodes": {"nodeCount": 15},
    "hst-installed": {
        "hstInstallerUrl": "https://downloads.example.com/ibm-aspera-hsts.deb",
        "hstLicenseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hsts-licence-AbCdEf",
        "hstRedisPasswordSetting": "redis_password",
        "hstInstallerSha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
    },
}


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def program(request):
    return run_program(CONFIGS[request.param])


def test_the_real_program_has_zero_violations(program):
    found = {r.name: rules.check(r.typ, r.inputs) for r in program.mocks.resources}
    assert {name: v for name, v in found.items() if v} == {}
    # Not vacuous: the rules looked at what they guard.
    types = {r.typ for r in program.mocks.resources}
    assert {rules.INSTANCE, rules.INGRESS_RULE} <= types
    for instance in program.of_type(rules.INSTANCE):
        # The units and the node's identity: the config templates are rendered on the node now.
        assert "/opt/hst-ha/etc/node.json" in rules.written_files(instance.inputs["userData"])


def test_the_rules_copy_of_written_files_agrees_with_the_program(program):
    for instance in program.of_type(rules.INSTANCE):
        user_data = instance.inputs.get("userData") or instance.inputs["userDataBase64"]
        assert rules.written_files(user_data) == cloud_config.written_files(user_data)


# --------------------------------------------------------------------------- hand-made bad props

GOOD_INSTANCE = {
    "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1},
    "rootBlockDevice": {"encrypted": True, "volumeType": "gp3"},
    "userData": (
        "#cloud-config\nwrite_files:\n- path: /etc/redis.conf\n  content: |\n    requirepass @@REDIS_PASSWORD@@\n"
    ),
}


def instance(**changes):
    return {**GOOD_INSTANCE, **changes}


def ingress(port, to_port=None, protocol="tcp", **peer):
    return {"securityGroupId": "sg-cluster", "ipProtocol": protocol, "fromPort": port,
            "toPort": port if to_port is None else to_port, **peer}


def role_policy(*statements: dict) -> dict:
    policy = {"Version": "2012-10-17", "Statement": list(statements)}
    return {"role": "hst-ha-node-role-id", "policy": json.dumps(policy)}


def cloud_config_with(path: str, content: str, compress: bool = False, runcmd=None) -> str:
    entry = {"path": path, "content": content}
    if compress:
        entry = {"path": path, "encoding": "gz+b64",
                 "content": base64.b64encode(gzip.compress(content.encode())).decode()}
    document = {"write_files": [entry], "runcmd": runcmd or []}
    return "#cloud-config\n" + yaml.safe_dump(document)


BAD = [
    # (id, resource type, props, policy, words the violation must contain)
    ("no-metadata-options", rules.INSTANCE, instance(metadataOptions=None), "hst-ha-imdsv2-required", "httpTokens"),
    ("imdsv1-allowed", rules.INSTANCE, instance(metadataOptions={"httpTokens": "optional"}),
     "hst-ha-imdsv2-required", "'optional'"),
    ("root-not-encrypted", rules.INSTANCE, instance(rootBlockDevice={"encrypted": False}),
     "hst-ha-volumes-encrypted", "rootBlockDevice.encrypted"),
    ("no-root-block-device", rules.INSTANCE, instance(rootBlockDevice=None),
     "hst-ha-volumes-encrypted", "rootBlockDevice.encrypted"),
    ("ebs-not-encrypted", rules.INSTANCE, instance(ebsBlockDevices=[{"deviceName": "/dev/sdf"}]),
     "hst-ha-volumes-encrypted", "ebsBlockDevices[0]"),
    ("ebs-volume", rules.VOLUME, {"size": 10, "availabilityZone": "eu-west-1a"},
     "hst-ha-volumes-encrypted", "encrypted"),
    ("redis-to-internet", rules.INGRESS_RULE, ingress(31415, cidrIpv4="0.0.0.0/0"),
     "hst-ha-cluster-ports-closed", "Redis port 31415 to CIDR 0.0.0.0/0"),
    ("sentinel-to-any-cidr", rules.INGRESS_RULE, ingress(41415, cidrIpv4="10.0.0.0/8"),
     "hst-ha-cluster-ports-closed", "Sentinel port 41415 to CIDR 10.0.0.0/8"),
    ("redis-to-ipv6", rules.INGRESS_RULE, ingress(31415, cidrIpv6="::/0"),
     "hst-ha-cluster-ports-closed", "CIDR ::/0"),
    ("redis-to-prefix-list", rules.INGRESS_RULE, ingress(31415, prefixListId="pl-0123"),
     "hst-ha-cluster-ports-closed", "prefix list pl-0123"),
    ("redis-to-other-group", rules.INGRESS_RULE, ingress(31415, referencedSecurityGroupId="sg-app"),
     "hst-ha-cluster-ports-closed", "other than the cluster security group"),
    ("range-over-redis", rules.INGRESS_RULE, ingress(31000, 32000, cidrIpv4="192.0.2.0/24"),
     "hst-ha-cluster-ports-closed", "Redis port 31415"),
    ("haproxy-from-self", rules.INGRESS_RULE, ingress(31414, referencedSecurityGroupId="sg-cluster"),
     "hst-ha-cluster-ports-closed", "HAProxy port 31414"),
    ("all-traffic-from-self", rules.INGRESS_RULE, ingress(-1, protocol="-1", referencedSecurityGroupId="sg-cluster"),
     "hst-ha-cluster-ports-closed", "HAProxy port 31414"),
    ("inline-sentinel-to-internet", rules.SECURITY_GROUP,
     {"ingress": [{"protocol": "tcp", "fromPort": 41415, "toPort": 41415, "cidrBlocks": ["0.0.0.0/0"]}]},
     "hst-ha-cluster-ports-closed", "ingress[0] opens the Sentinel port 41415 to CIDR 0.0.0.0/0"),
    ("inline-haproxy-self", rules.SECURITY_GROUP,
     {"ingress": [{"protocol": "tcp", "fromPort": 31414, "toPort": 31414, "self": True}]},
     "hst-ha-cluster-ports-closed", "HAProxy port 31414"),
    ("legacy-rule-redis-cidr", rules.SECURITY_GROUP_RULE,
     {"type": "ingress", "securityGroupId": "sg-cluster", "protocol": "tcp", "fromPort": 31415, "toPort": 31415,
      "cidrBlocks": ["198.51.100.0/24"]},
     "hst-ha-cluster-ports-closed", "Redis port 31415 to CIDR 198.51.100.0/24"),
    ("requirepass-literal", rules.INSTANCE,
     instance(userData=cloud_config_with("/etc/redis/redis.conf", f"port 31415\nrequirepass {LITERAL}\n")),
     "hst-ha-no-password-in-user-data", "requirepass"),
    ("masterauth-literal-gzipped", rules.INSTANCE,
     instance(userData=cloud_config_with("/etc/redis/redis.conf", f"masterauth {LITERAL}\n", compress=True)),
     "hst-ha-no-password-in-user-data", "file /etc/redis/redis.conf line 1: masterauth"),
    ("sentinel-auth-pass-literal", rules.INSTANCE,
     instance(userData=cloud_config_with("/etc/redis/sentinel.conf", f"sentinel auth-pass myprimary '{LITERAL}'\n")),
     "hst-ha-no-password-in-user-data", "sentinel auth-pass"),
    ("haproxy-auth-literal", rules.INSTANCE,
     instance(userData=cloud_config_with("/etc/haproxy/haproxy.cfg", f"    tcp-check send AUTH\\ {LITERAL}\\r\\n\n")),
     "hst-ha-no-password-in-user-data", "tcp-check AUTH"),
    ("runcmd-config-set", rules.INSTANCE,
     instance(userData=cloud_config_with(
         "/etc/x", "x\n", runcmd=[["redis-cli", "CONFIG", "SET", "masterauth", LITERAL]])),
     "hst-ha-no-password-in-user-data", "runcmd line 1: CONFIG SET"),
    ("shell-script-redis-cli-a", rules.INSTANCE,
     instance(userData=f"#!/bin/bash\nredis-cli -h 10.0.0.1 -a {LITERAL} PING\n"),
     "hst-ha-no-password-in-user-data", "redis-cli -a"),
    ("shell-script-rediscli-auth", rules.INSTANCE,
     instance(userData=f"#!/bin/bash\nexport REDISCLI_AUTH={LITERAL}\n"),
     "hst-ha-no-password-in-user-data", "REDISCLI_AUTH"),
    ("node-role-secret-wildcard", rules.ROLE_POLICY,
     role_policy({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                  "Resource": ["arn:aws:secretsmanager:eu-west-1:1:secret:r-AbC", "arn:*"]}),
     "hst-ha-node-role-least-privilege", "allows secretsmanager:GetSecretValue on the wildcard resource arn:*"),
    ("node-role-s3-any-bucket", rules.ROLE_POLICY,
     role_policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*"}),
     "hst-ha-node-role-least-privilege", "s3:GetObject on the wildcard resource arn:aws:s3:::*"),
    ("node-role-ssm-parameters-on-star", rules.ROLE_POLICY,
     role_policy({"Effect": "Allow", "Action": ["ssm:UpdateInstanceInformation", "ssm:GetParameters"],
                  "Resource": "*"}),
     "hst-ha-node-role-least-privilege", "allows ssm:GetParameters on the wildcard resource *"),
    ("node-role-wildcard-action", rules.ROLE_POLICY,
     role_policy({"Effect": "Allow", "Action": "ssmmessages:*", "Resource": "*"}),
     "hst-ha-node-role-least-privilege", "wildcard action 'ssmmessages:*'"),
    ("node-role-not-resource", rules.ROLE_POLICY,
     role_policy({"Effect": "Allow", "Action": "s3:GetObject", "NotResource": "arn:aws:s3:::private/*"}),
     "hst-ha-node-role-least-privilege", "NotAction/NotResource"),
    ("node-role-ssm-core", rules.ROLE_POLICY_ATTACHMENT,
     {"role": "r", "policyArn": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"},
     "hst-ha-node-role-least-privilege", "AWS managed policy arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"),
    ("node-role-inline-star", rules.ROLE,
     {"inlinePolicies": [{"name": "x", "policy": json.dumps(
         {"Statement": {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}})}]},
     "hst-ha-node-role-least-privilege",
     "inlinePolicies[0] Statement[0] allows kms:Decrypt on the wildcard resource *"),
    ("random-password", rules.RANDOM_PASSWORD, {"length": 40, "special": False},
     "hst-ha-no-password-in-state", "keeps its result in the stack's state"),
    ("random-string", rules.RANDOM_STRING, {"length": 40}, "hst-ha-no-password-in-state", "RandomString keeps"),
    ("secret-version", rules.SECRET_VERSION, {"secretId": "arn:x", "secretString": LITERAL},
     "hst-ha-no-password-in-state", "keeps its secretString/secretBinary in the stack's state"),
    ("base64-gzip-user-data", rules.INSTANCE,
     instance(userData=None, userDataBase64=base64.b64encode(gzip.compress(
         f"#!/bin/sh\necho 'requirepass {LITERAL}' >> /etc/redis.conf\nrequirepass {LITERAL}\n".encode())).decode()),
     "hst-ha-no-password-in-user-data", "(userDataBase64) line 3: requirepass"),
]


@pytest.mark.parametrize("typ,props,policy,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_bad_property_is_named_by_its_policy(typ, props, policy, words):
    found = rules.check(typ, props)
    assert list(found) == [policy], found
    assert any(words in v for v in found[policy]), found[policy]
    assert LITERAL not in repr(found), "a violation must not echo the password it found"


GOOD = [
    ("node-api-from-cidr", rules.INGRESS_RULE, ingress(9092, cidrIpv4="198.51.100.0/24")),
    ("fasp-from-internet-range", rules.INGRESS_RULE, ingress(33001, protocol="udp", cidrIpv4="203.0.113.0/24")),
    ("redis-from-self", rules.INGRESS_RULE, ingress(31415, referencedSecurityGroupId="sg-cluster")),
    ("icmp-from-anywhere", rules.INGRESS_RULE, ingress(8, 0, protocol="icmp", cidrIpv4="0.0.0.0/0")),
    ("egress-https", "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule", ingress(443, cidrIpv4="0.0.0.0/0")),
    ("legacy-egress", rules.SECURITY_GROUP_RULE,
     {"type": "egress", "protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["0.0.0.0/0"]}),
    ("inline-redis-self", rules.SECURITY_GROUP,
     {"ingress": [{"protocol": "tcp", "fromPort": 31415, "toPort": 31415, "self": True}]}),
    ("no-metadata-service", rules.INSTANCE, instance(metadataOptions={"httpEndpoint": "disabled"})),
    ("ssm-agent-on-star", rules.ROLE_POLICY,
     role_policy({"Effect": "Allow", "Action": sorted(rules.RESOURCELESS_ACTIONS), "Resource": "*"})),
    ("deny-on-star", rules.ROLE_POLICY, role_policy({"Effect": "Deny", "Action": "*", "Resource": "*"})),
    ("exact-secret", rules.ROLE_POLICY, role_policy(
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": "arn:aws:secretsmanager:eu-west-1:1:secret:r-AbC"})),
    ("shell-variables-and-comments", rules.INSTANCE, instance(userData=(
        "#!/bin/bash\n# requirepass is filled in at boot\nexport REDISCLI_AUTH=\"$PASSWORD\"\n"
        "redis-cli CONFIG SET masterauth \"${PASSWORD}\"\necho \"requirepass $PASSWORD\" >> redis.conf\n"))),
]


@pytest.mark.parametrize("typ,props", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_lookalikes_that_keep_the_contract_pass(typ, props):
    assert rules.check(typ, props) == {}


def test_a_literal_hidden_in_real_user_data_is_found():
    program = run_program({"nodeCount": 15})
    document = yaml.safe_load(program.of_type(rules.INSTANCE)[0].inputs["userData"])
    for entry in document["write_files"]:
        if entry["path"].endswith("hst-ha-prepare.service"):
            entry["content"] += f"ExecStartPost=/usr/bin/redis-cli -a {MOCK_PASSWORD} ping\n"
    found = rules.check(rules.INSTANCE, instance(userData="#cloud-config\n" + yaml.safe_dump(document)))
    assert set(found) == {"hst-ha-no-password-in-user-data"}
    tail = ("is followed by a literal value instead of @@<ROLE>_PASSWORD@@; "
            "the password belongs in Secrets Manager, fetched at boot")
    assert [v.split(": ")[1] for v in found["hst-ha-no-password-in-user-data"]] == [f"redis-cli -a {tail}"]


def test_the_rules_copy_of_the_ssm_agent_actions_agrees_with_the_program():
    from components.aws.cluster import SSM_AGENT_ACTIONS

    assert frozenset(SSM_AGENT_ACTIONS) == rules.RESOURCELESS_ACTIONS


def test_the_node_role_before_issue_13_is_refused():
    """What the program registered before: AmazonSSMManagedInstanceCore attached to the node role."""
    found = rules.check(rules.ROLE_POLICY_ATTACHMENT, {
        "role": "hst-ha-node-role-id", "policyArn": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"})
    assert list(found) == ["hst-ha-node-role-least-privilege"]


def test_the_redis_secret_before_this_change_is_refused():
    """What the program registered before: a RandomPassword per role and the SecretVersion holding them."""
    found = {typ: rules.check(typ, {"secretId": "hst-ha-redis-auth-id", "secretString": {"value": LITERAL}})
             for typ in (rules.RANDOM_PASSWORD, rules.SECRET_VERSION)}
    assert {typ: list(f) for typ, f in found.items()} == {
        rules.RANDOM_PASSWORD: ["hst-ha-no-password-in-state"], rules.SECRET_VERSION: ["hst-ha-no-password-in-state"]}


def test_moved_ports_are_guarded_when_the_pack_is_told():
    moved = ingress(6379, cidrIpv4="0.0.0.0/0")
    assert rules.cluster_ports_closed(rules.INGRESS_RULE, moved) == []
    assert rules.cluster_ports_closed(rules.INGRESS_RULE, moved, redis_port=6379)


# ------------------------------------------------------------------- the pack through the Policy SDK

pulumi_policy = pytest.importorskip("pulumi_policy", reason="pulumi-policy is in requirements-dev.txt")


@pytest.fixture(scope="module")
def analyzer():
    """Run policy/__main__.py as the CLI does (runpy on the folder) and keep the analyzer servicer
    it would serve over gRPC; the server itself is replaced so nothing listens or blocks."""
    from pulumi_policy import policy as sdk

    fake_time = mock.MagicMock()
    fake_time.sleep.side_effect = KeyboardInterrupt  # PolicyPack serves until interrupted
    fake_grpc = mock.MagicMock()
    fake_grpc.server.return_value.add_insecure_port.return_value = 0
    with mock.patch.object(sdk, "grpc", fake_grpc), mock.patch.object(sdk, "time", fake_time), \
            mock.patch.object(sdk, "analyzer_pb2_grpc") as registry, mock.patch.object(sys, "stdout"):
        namespace = runpy.run_path(str(ROOT / "policy"), run_name="__main__")
    sys.modules.pop("rules", None)
    (servicer, _server), _ = registry.add_AnalyzerServicer_to_server.call_args
    return namespace, servicer


def test_the_pack_registers_every_rule_as_mandatory(analyzer):
    namespace, servicer = analyzer
    from pulumi_policy import EnforcementLevel, ResourceValidationPolicy

    policies = namespace["POLICIES"]
    assert [p.name for p in policies] == list(rules.RULES)
    assert all(isinstance(p, ResourceValidationPolicy) for p in policies)
    assert {p.enforcement_level for p in policies} == {EnforcementLevel.MANDATORY}
    info = servicer.GetAnalyzerInfo(None, None)
    assert info.name == "hst-ha-security"
    assert [p.name for p in info.policies] == list(rules.RULES)


def analyze(servicer, typ: str, props: dict, name: str = "r"):
    from google.protobuf import json_format, struct_pb2
    from pulumi.runtime import proto

    struct = json_format.ParseDict(_wire(props), struct_pb2.Struct())
    urn = f"urn:pulumi:test::hst-ha::{typ}::{name}"
    request = proto.AnalyzeRequest(type=typ, properties=struct, urn=urn, name=name)
    return servicer.Analyze(request, None).diagnostics


UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # how the engine sends a value unknown during preview


def _wire(value):
    if isinstance(value, pulumi.output.Unknown):
        return UNKNOWN
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_wire(v) for v in value]
    return value


def test_the_pack_fails_a_bad_resource_and_passes_a_good_one(analyzer):
    from pulumi.runtime import proto

    _, servicer = analyzer
    (diagnostic,) = analyze(servicer, rules.INGRESS_RULE, ingress(31415, cidrIpv4="0.0.0.0/0"))
    assert diagnostic.policyName == "hst-ha-cluster-ports-closed"
    assert diagnostic.enforcementLevel == proto.MANDATORY
    assert "Redis port 31415 to CIDR 0.0.0.0/0" in diagnostic.message
    assert list(analyze(servicer, rules.INSTANCE, GOOD_INSTANCE)) == []


def test_the_pack_passes_every_resource_of_the_real_program(analyzer):
    _, servicer = analyzer
    program = run_program({"adminCidrs": ["198.51.100.0/24"], "nodeCount": 5})
    for resource in program.mocks.resources:
        assert list(analyze(servicer, resource.typ, resource.inputs, resource.name)) == [], resource.name


def test_a_fresh_stack_preview_is_never_failed_by_unknown_values(analyzer):
    """On a fresh stack the ids, the secret's ARN and so the user data are unknown at preview: the
    pack may only say it will judge them at `up` (advisory), never fail the preview on them."""
    from pulumi.runtime import proto

    _, servicer = analyzer
    program = run_fresh_preview()
    unknown_user_data = [
        r for r in program.of_type(rules.INSTANCE) if isinstance(r.inputs["userData"], pulumi.output.Unknown)
    ]
    assert unknown_user_data, "expected the user data to be unknown before the secret exists"
    diagnostics = [d for r in program.mocks.resources for d in analyze(servicer, r.typ, r.inputs, r.name)]
    assert [d.message for d in diagnostics if d.enforcementLevel != proto.ADVISORY] == []
    assert any("can't run policy 'hst-ha-no-password-in-user-data'" in d.message for d in diagnostics)
