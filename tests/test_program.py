"""The Pulumi program's resource graph under mocks: `__main__.py` run afresh for each case."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pulumi
import pytest
import yaml

from components.aws.cloud_config import USER_DATA_LIMIT, node_files, written_files
from components.bundle.users import ROLE_KEYS, ROLES
from components.settings import NODE_API_PORT, SSH_FASP_PORT
from tests.pulumi_harness import ADOPTED_SUBNETS, MIRROR, MOCK_PASSWORD, MOCK_S3_PREFIX_LIST, ZONES, run_program

pytestmark = pytest.mark.timeout(120)

INSTANCE = "aws:ec2/instance:Instance"
ENI = "aws:ec2/networkInterface:NetworkInterface"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
NODES_SG, ENDPOINTS_SG = "hst-ha-network-nodes-id", "hst-ha-network-endpoints-id"
STACK_TAG = ("hst-ha:stack", "organization/hst-ha/test")  # the mocks' organization


@pytest.fixture(scope="module", params=[3, 5], ids=["3-nodes", "5-nodes"])
def program(request):
    return run_program({"nodeCount": request.param})


def subnet_zone(program, subnet_id: str) -> str:
    (subnet,) = [r for r in program.of_type("aws:ec2/subnet:Subnet") if f"{r.name}-id" == subnet_id]
    return subnet.inputs["availabilityZone"]


def test_one_instance_per_node_spread_over_three_zones(program):
    n = len(program.outputs["nodePrivateIps"])
    instances = program.of_type(INSTANCE)
    assert len(instances) == n
    enis = {f"{r.name}-id": r for r in program.of_type(ENI)}
    zones = Counter(
        subnet_zone(program, enis[i.inputs["primaryNetworkInterface"]["networkInterfaceId"]].inputs["subnetId"])
        for i in instances
    )
    assert set(zones) == set(ZONES)
    assert max(zones.values()) < n // 2 + 1, f"one zone holds a majority of nodes: {zones}"


def test_instances_require_imdsv2_and_encrypt_the_root_volume(program):
    for instance in program.of_type(INSTANCE):
        assert instance.inputs["metadataOptions"]["httpTokens"] == "required"
        assert instance.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
        assert instance.inputs["rootBlockDevice"]["encrypted"] is True
        assert instance.inputs["userDataReplaceOnChange"] is True


def test_network_interfaces_carry_the_stable_private_ips(program):
    ips = sorted(ip for r in program.of_type(ENI) for ip in r.inputs["privateIps"])
    assert ips == sorted(program.outputs["nodePrivateIps"])
    assert len(set(ips)) == len(ips)


def rules(program, typ, group=NODES_SG):
    found = set()
    for r in program.of_type(typ):
        if r.inputs["securityGroupId"] != group:
            continue
        assert r.inputs["fromPort"] == r.inputs["toPort"]
        referenced = {NODES_SG: "self", ENDPOINTS_SG: "endpoints"}.get(r.inputs.get("referencedSecurityGroupId"))
        peers = [p for p in (referenced, r.inputs.get("prefixListId"), r.inputs.get("cidrIpv4")) if p]
        assert len(peers) == 1, f"rule {r.name} names {peers}, not exactly one peer"
        found.add((r.inputs["ipProtocol"], r.inputs["fromPort"], peers[0]))
    return found


def test_security_group_default_rules_follow_the_contract(program):
    assert rules(program, INGRESS) == {("tcp", 31415, "self"), ("tcp", 41415, "self")}
    assert rules(program, EGRESS) == {
        ("tcp", 31415, "self"), ("tcp", 41415, "self"), ("tcp", 443, "endpoints"), ("tcp", 443, MOCK_S3_PREFIX_LIST),
    }


def test_no_rule_reaches_the_internet_on_any_port_by_default(program):
    for r in program.of_type(INGRESS) + program.of_type(EGRESS):
        assert r.inputs.get("cidrIpv4") != "0.0.0.0/0" and not r.inputs.get("cidrIpv6"), r.name
        assert r.inputs["ipProtocol"] != "-1", f"{r.name} admits every protocol"
    (routes,) = program.of_type("aws:ec2/routeTable:RouteTable")
    assert [r["cidrBlock"] for r in routes.inputs["routes"]] == ["0.0.0.0/0"]  # inbound FASP to the Elastic IPs


def test_the_nodes_reach_aws_only_through_vpc_endpoints(program):
    endpoints = {r.inputs["serviceName"].rsplit(".", 1)[-1]: r for r in program.of_type(ENDPOINT)}
    assert set(endpoints) == {"secretsmanager", "ssm", "ssmmessages", "ec2messages", "monitoring", "events", "s3"}
    for service, endpoint in endpoints.items():
        assert endpoint.inputs["serviceName"] == f"com.amazonaws.eu-west-1.{service}"
        if service == "s3":
            assert endpoint.inputs["vpcEndpointType"] == "Gateway"
            assert endpoint.inputs["routeTableIds"] == ["hst-ha-network-routes-id"]
        else:
            assert endpoint.inputs["vpcEndpointType"] == "Interface" and endpoint.inputs["privateDnsEnabled"] is True
            assert endpoint.inputs["securityGroupIds"] == [ENDPOINTS_SG]
            assert len(endpoint.inputs["subnetIds"]) == 3
    # The endpoints' own group admits HTTPS from the cluster group and nothing else.
    (endpoint_rule,) = [r for r in program.of_type(INGRESS) if r.inputs["securityGroupId"] == ENDPOINTS_SG]
    assert endpoint_rule.inputs["referencedSecurityGroupId"] == NODES_SG and endpoint_rule.inputs["fromPort"] == 443
    assert not rules(program, EGRESS, ENDPOINTS_SG)


def test_package_mirrors_are_reachable_only_when_named():
    program = run_program({"packageMirrorPrefixListIds": ["pl-0123456789abcdef0"]})
    mirrors = {r for r in rules(program, EGRESS) if r[2] == "pl-0123456789abcdef0"}
    assert mirrors == {("tcp", 80, "pl-0123456789abcdef0"), ("tcp", 443, "pl-0123456789abcdef0")}


def test_an_existing_vpc_reaches_s3_by_its_prefix_list_and_gets_the_interface_endpoints():
    program = run_program({"vpcId": "vpc-0123", "subnetIds": list(ADOPTED_SUBNETS)})
    assert ("aws:ec2/getPrefixList:getPrefixList", {"name": "com.amazonaws.eu-west-1.s3"}) in [
        (t, {k: v for k, v in a.items() if k == "name"}) for t, a in program.mocks.calls]
    assert ("tcp", 443, MOCK_S3_PREFIX_LIST) in rules(program, EGRESS)
    services = sorted(r.inputs["serviceName"].rsplit(".", 1)[-1] for r in program.of_type(ENDPOINT))
    assert services == ["ec2messages", "events", "monitoring", "secretsmanager", "ssm", "ssmmessages"]
    for endpoint in program.of_type(ENDPOINT):
        assert endpoint.inputs["vpcId"] == "vpc-0123" and endpoint.inputs["subnetIds"] == list(ADOPTED_SUBNETS)


def test_every_node_resource_carries_the_stack_tag(program):
    key, value = STACK_TAG
    for typ in (INSTANCE, ENI, "aws:ec2/eip:Eip", "aws:secretsmanager/secret:Secret", "aws:iam/role:Role",
                "aws:ec2/securityGroup:SecurityGroup", ENDPOINT):
        for r in program.of_type(typ):
            assert r.inputs["tags"][key] == value, f"{r.name} lacks {key}"
    for instance in program.of_type(INSTANCE):
        assert instance.inputs["volumeTags"][key] == value
    for typ in ("SigningKey", "BootstrapTokens"):
        (resource,) = program.of_type(DYNAMIC + typ)
        assert resource.inputs["tags"] == {key: value}


def test_configured_cidrs_open_only_ssh_fasp_and_node_api():
    program = run_program({"adminCidrs": ["198.51.100.0/24"], "transferCidrs": ["203.0.113.0/24", "198.51.100.0/24"]})
    ingress = rules(program, INGRESS)
    assert ingress == {
        ("tcp", 31415, "self"), ("tcp", 41415, "self"),
        ("tcp", SSH_FASP_PORT, "198.51.100.0/24"), ("tcp", NODE_API_PORT, "198.51.100.0/24"),
        ("udp", SSH_FASP_PORT, "198.51.100.0/24"),
        ("tcp", SSH_FASP_PORT, "203.0.113.0/24"), ("udp", SSH_FASP_PORT, "203.0.113.0/24"),
    }
    assert not [r for r in ingress if r[1] == 31414], "HAProxy is loopback only: no rule at all"
    assert not [r for r in ingress if r[1] in (31415, 41415) and r[2] != "self"]


def test_iam_policy_reads_only_the_redis_secret_and_the_nodes_tls_secret(program):
    document = json.loads(program.named("hst-ha-node-secrets").inputs["policy"])
    (statement,) = document["Statement"]
    assert statement["Action"] == "secretsmanager:GetSecretValue"
    (tls,) = program.of_type(CLUSTER_TLS)
    assert statement["Resource"] == [program.outputs["redisAuthSecretArn"], tls.state["secret_arn"]]
    assert tls.state["ca_secret_arn"] not in json.dumps([r.inputs for r in program.of_type(
        "aws:iam/rolePolicy:RolePolicy")])  # no node may read the CA's key


def test_the_node_role_has_only_the_ssm_agents_own_actions_and_no_managed_policy(program):
    assert not program.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert sorted(r.name for r in program.of_type("aws:iam/rolePolicy:RolePolicy")) == [
        "hst-ha-monitoring-node-observe", "hst-ha-node-document", "hst-ha-node-secrets", "hst-ha-node-ssm-agent"]
    (statement,) = json.loads(program.named("hst-ha-node-ssm-agent").inputs["policy"])["Statement"]
    actions = set(statement["Action"])
    assert "ssm:UpdateInstanceInformation" in actions
    assert {a.split(":")[0] for a in actions} == {"ssm", "ssmmessages", "ec2messages"}
    # Not what AmazonSSMManagedInstanceCore also grants on every resource.
    assert not actions & {"ssm:GetParameter", "ssm:GetParameters", "ssm:GetDocument", "ssm:ListAssociations"}
    assert not [a for a in actions if "*" in a]


def user_data(program) -> dict[str, str]:
    # Readable text, always (components/aws/cloud_config.py): no userDataBase64.
    assert all("userDataBase64" not in r.inputs for r in program.of_type(INSTANCE))
    return {r.name: r.inputs["userData"] for r in program.of_type(INSTANCE)}


def cluster_document(program) -> str:
    (parameter,) = program.of_type("aws:ssm/parameter:Parameter")
    return parameter.inputs["insecureValue"]


def files_of(program) -> dict[str, dict[str, str]]:
    """Each node's files as it ends up with them: its user data's, and those it renders from the document."""
    return {name: node_files(text, cluster_document(program)) for name, text in user_data(program).items()}


def test_user_data_differs_between_primary_and_replicas(program):
    ips = program.outputs["nodePrivateIps"]
    for name, files in files_of(program).items():
        redis_conf = files["/opt/hst-ha/etc/templates/redis.conf"]
        assert f"bind {ips[int(name.split('-')[-2]) - 1]}\n" in redis_conf
        if name == "hst-ha-node-1-instance":
            assert "\nreplicaof " not in redis_conf
        else:
            assert f"replicaof {ips[0]} 31415\n" in redis_conf
        sentinel_conf = files["/opt/hst-ha/etc/templates/sentinel.conf"]
        assert f"sentinel monitor myprimary {ips[0]} 31415 {len(ips) // 2 + 1}\n" in sentinel_conf
        assert program.outputs["redisAuthSecretArn"] in files["/opt/hst-ha/etc/node.env"]  # the scripts' data file


PARAMETER = "aws:ssm/parameter:Parameter"


def test_the_cluster_document_is_one_readable_parameter_only_the_nodes_read(program):
    (parameter,) = program.of_type(PARAMETER)
    # Shown in previews: `value` is always marked secret by the provider; the document holds none.
    assert "value" not in parameter.inputs
    assert parameter.inputs["type"] == "String" and parameter.inputs["tier"] == "Standard"
    assert parameter.inputs["name"] == "/organization/hst-ha/test/cluster-document"
    text = parameter.inputs["insecureValue"]
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # pretty, key-sorted
    doc = json.loads(text)
    assert [n["address"] for n in doc["nodes"]] == program.outputs["nodePrivateIps"]
    assert doc["initialPrimary"] == program.outputs["nodePrivateIps"][0]
    assert doc["settings"]["downAfterMs"] == 5000
    (statement,) = json.loads(program.named("hst-ha-node-document").inputs["policy"])["Statement"]
    assert statement == {"Effect": "Allow", "Action": "ssm:GetParameter",
                         "Resource": f"arn:aws:ssm:eu-west-1:123456789012:parameter{parameter.inputs['name']}"}
    # Every node reads it at its first boot, from where its user data says.
    for text in user_data(program).values():
        node = json.loads(written_files(text)["/opt/hst-ha/etc/node.json"])
        assert (node["parameter"], node["region"]) == (parameter.inputs["name"], "eu-west-1")


def _flat(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{path}.{key}" if path else key).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{path}[{i}]").items()}
    return {path: value}


def document_diff(before: Any, after: Any) -> dict[str, tuple[Any, Any]]:
    """What changed between two programs' cluster documents, key by key (parsed JSON, not text)."""
    a, b = _flat(json.loads(cluster_document(before))), _flat(json.loads(cluster_document(after)))
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


@pytest.mark.parametrize("change", [{"downAfterMs": 7000}, {"failoverTimeoutMs": 20000}, {"minReplicasToWrite": 2},
                                    {"sentinelQuorum": 4}, {"backupIntervalMinutes": 60}])
def test_a_settings_change_changes_the_document_and_no_user_data(change):
    before, after = run_program({"nodeCount": 5}), run_program({"nodeCount": 5, **change})
    assert user_data(after) == user_data(before)  # byte for byte, every node: nothing is replaced
    ((key, value),) = change.items()
    assert document_diff(before, after) == {f"settings.{key}": (document_diff_default(before, key), value)}


def document_diff_default(program, key: str) -> Any:
    return json.loads(cluster_document(program))["settings"][key]


def test_growing_from_3_to_5_nodes_adds_them_to_the_document_and_touches_no_existing_user_data():
    three, five = run_program({"nodeCount": 3}), run_program({"nodeCount": 5})
    old, new = user_data(three), user_data(five)
    assert set(old) < set(new)
    for name, text in old.items():
        assert new[name] == text, f"{name}'s user data changed: it would be replaced"
    addresses = five.outputs["nodePrivateIps"]
    assert document_diff(three, five) == {
        "nodes[3].address": (None, addresses[3]), "nodes[3].index": (None, 3), "nodes[3].name": (None, "node-4"),
        "nodes[4].address": (None, addresses[4]), "nodes[4].index": (None, 4), "nodes[4].name": (None, "node-5"),
        "settings.sentinelQuorum": (2, 3),  # the default quorum is a majority of nodeCount
    }
    # And what the existing nodes render from the new document follows the new membership.
    files = files_of(five)["hst-ha-node-1-instance"]
    assert f"server node-5 {addresses[4]}:31415" in files["/opt/hst-ha/etc/templates/haproxy.cfg"]


def test_fifteen_nodes_user_data_stays_readable_and_under_16_kib_and_the_document_fits_standard_tier():
    program = run_program({"nodeCount": 15, **HSTS_SETTINGS})
    sizes = {name: len(text.encode()) for name, text in user_data(program).items()}
    assert len(sizes) == 15 and max(sizes.values()) < USER_DATA_LIMIT, sizes
    for text in user_data(program).values():
        assert text.startswith("#cloud-config\n")
        assert all("encoding" not in entry for entry in yaml.safe_load(text)["write_files"])  # nothing gzipped
    assert len(cluster_document(program).encode()) <= 4096


def test_no_password_in_user_data_outputs_or_plain_inputs(program):
    for name, text in user_data(program).items():
        assert MOCK_PASSWORD not in text
        files = files_of(program)[name]
        assert MOCK_PASSWORD not in "".join(files.values())
        for role in ROLES:
            assert role.placeholder in files["/opt/hst-ha/etc/templates/redis.conf" if role.redis_user else
                                             "/opt/hst-ha/etc/templates/sentinel.conf"]
    assert MOCK_PASSWORD not in json.dumps(program.outputs) and MOCK_PASSWORD not in cluster_document(program)


USERS_SECRET = "pulumi-python:dynamic/hstha:RedisUsersSecret"
CLUSTER_TLS = "pulumi-python:dynamic/hstha:ClusterTls"
# Resource types that keep a generated or given secret value in the stack's state.
SECRET_MATERIAL = ("random:index/randomPassword:RandomPassword", "random:index/randomString:RandomString",
                   "aws:secretsmanager/secretVersion:SecretVersion")


def test_no_resource_holds_a_password_in_its_inputs_or_state(program):
    """The passwords are generated inside the RedisUsersSecret provider and go only into the secret:
    no generator or secret version is registered, and the provider's inputs say where, never what."""
    assert not [r.name for r in program.mocks.resources if r.typ in SECRET_MATERIAL]
    holders = [r.name for r in program.mocks.resources
               if MOCK_PASSWORD in json.dumps(r.inputs, default=str) + json.dumps(r.state, default=str)]
    assert holders == []
    (users,) = program.of_type(USERS_SECRET)
    assert users.name == "hst-ha-redis-auth"
    given = {k for k, v in users.inputs.items() if v is not None}
    # __provider: the pickled provider (its code, no value: tests/test_providers.py round-trips it).
    assert given == {"store", "secret_name_prefix", "roles", "tags", "recovery_window_days", "provider_version",
                     "__provider"}
    assert users.inputs["roles"] == sorted(ROLE_KEYS)  # one password per role, in ONE secret
    assert users.inputs["store"] == {"kind": "aws", "region": "eu-west-1"}
    assert users.inputs["secret_name_prefix"] == "hst-ha/test/redis-users"
    assert users.inputs["tags"] == dict([STACK_TAG])  # the store writes into and deletes only what carries it
    assert users.inputs["recovery_window_days"] == 7


def test_the_node_role_the_nodes_and_the_quorum_read_the_users_secret_by_its_arn(program):
    (users,) = program.of_type(USERS_SECRET)
    arn = users.state["secret_arn"]
    assert program.outputs["redisAuthSecretArn"] == arn
    (statement,) = json.loads(program.named("hst-ha-node-secrets").inputs["policy"])["Statement"]
    (tls,) = program.of_type(CLUSTER_TLS)
    assert statement == {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                         "Resource": [arn, tls.state["secret_arn"]]}
    (quorum,) = program.of_type("pulumi-python:dynamic/hstha:SentinelQuorum")
    assert quorum.inputs["password"] == {"kind": "aws", "secret_id": arn, "region": "eu-west-1"}
    for text in user_data(program).values():
        assert arn in written_files(text)["/opt/hst-ha/etc/node.json"]  # the identity: how it fetches them


def test_stack_outputs(program):
    n = len(program.outputs["nodePrivateIps"])
    out = program.outputs
    assert out["masterName"] == "myprimary"
    assert out["haproxyEndpoint"] == "127.0.0.1:31414"
    assert out["redisEndpoints"] == [f"{ip}:31415" for ip in out["nodePrivateIps"]]
    assert out["sentinelEndpoints"] == [f"{ip}:41415" for ip in out["nodePrivateIps"]]
    assert len(out["instanceIds"]) == n and all(i.startswith("i-") for i in out["instanceIds"])
    assert out["securityGroupId"] == "hst-ha-network-nodes-id"
    assert out["vpcId"] == "hst-ha-network-vpc-id"
    assert len(out["subnetIds"]) == 3
    assert out["hstInstalled"] is False


def test_the_outputs_are_the_contract_declared_once_and_typed_on_the_component(program):
    import ast
    import inspect
    import itertools
    import typing

    from components.aws import cluster
    from components.aws.cluster import HstCluster
    from components.outputs import attribute_name, output_specs

    specs = output_specs()
    assert list(program.outputs) == [s.name for s in specs]
    # The class's own annotations (strings under `from __future__ import annotations`), evaluated there.
    annotations = {k: eval(v, vars(cluster)) for k, v in HstCluster.__annotations__.items()}
    for spec in specs:
        output: Any = pulumi.Output  # subscripted with a runtime type: a value here, not an annotation
        assert annotations[attribute_name(spec.name)] == output[spec.type], spec.name
        assert spec.doc.text, spec.name
        value = program.outputs[spec.name]
        assert isinstance(value, typing.get_origin(spec.type) or spec.type), (spec.name, value)
    # Each declared output carries a docstring (the string right after its annotation).
    body = ast.parse(inspect.getsource(HstCluster)).body[0].body  # type: ignore[attr-defined]
    documented = {
        node.target.id for node, after in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
    }
    assert {attribute_name(s.name) for s in specs} <= documented


def test_existing_vpc_is_adopted_without_creating_one():
    program = run_program({"nodeCount": 5, "vpcId": "vpc-0123", "subnetIds": list(ADOPTED_SUBNETS)})
    assert not program.of_type("aws:ec2/vpc:Vpc")
    assert not program.of_type("aws:ec2/subnet:Subnet")
    assert not program.of_type("aws:ec2/eip:Eip")
    assert program.outputs["vpcId"] == "vpc-0123"
    assert program.outputs["nodePrivateIps"] == ["10.9.1.10", "10.9.2.10", "10.9.3.10", "10.9.1.11", "10.9.2.11"]
    subnets = Counter(r.inputs["subnetId"] for r in program.of_type(ENI))
    assert subnets == {"subnet-0aaa": 2, "subnet-0bbb": 2, "subnet-0ccc": 1}


def test_looked_up_ami_is_ubuntu_noble_and_not_a_reason_to_replace():
    program = run_program({**MIRROR, "instanceType": "m7g.large"})  # the stock image: packages from the mirror
    (lookup,) = [args for token, args in program.mocks.calls if token == "aws:ec2/getAmi:getAmi"]
    assert lookup["owners"] == ["099720109477"]
    assert "ubuntu-noble-24.04-arm64-server" in lookup["filters"][0]["values"][0]
    assert {r.inputs["ami"] for r in program.of_type(INSTANCE)} == {"ami-0ubuntu2404"}


def test_pinned_ami_skips_the_lookup():
    program = run_program({"amiId": "ami-0123456789abcdef0"})
    assert not [t for t, _ in program.mocks.calls if t == "aws:ec2/getAmi:getAmi"]
    assert {r.inputs["ami"] for r in program.of_type(INSTANCE)} == {"ami-0123456789abcdef0"}


def test_preview_registers_the_whole_plan():
    program = run_program({}, preview=True)
    assert len(program.of_type(INSTANCE)) == 3


HSTS_SETTINGS = {
    "hstInstallerUrl": "s3://aspera-media/ibm-aspera-hsts-4.4.5.deb",
    "hstLicenseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hsts-licence-XyZ",
    "hstRedisPasswordSetting": "db_password",
    "hstInstallerSha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
}

BAD_CONFIG: list[tuple[dict[str, Any], str]] = [
    ({"nodeCount": 4}, "hst-ha:nodeCount = 4: must be odd"),
    ({"nodeCount": 1}, "hst-ha:nodeCount = 1: must be from 3 to 15"),
    ({"sentinelQuorum": 4}, "hst-ha:sentinelQuorum = 4: must be from 1 to nodeCount (3)"),
    ({"haproxyPort": 31415}, "hst-ha:haproxyPort = 31415: clashes with redisPort"),
    ({"failoverTimeoutMs": 60000},
     "hst-ha:failoverTimeoutMs = 60000: must be at most 30000: after a split leader vote"),
    ({"adminCidrs": ["10.0.0.300/24"]}, "hst-ha:adminCidrs = '10.0.0.300/24': is not a CIDR block"),
    ({"transferCidrs": ["0.0.0.0/0"]}, "hst-ha:transferCidrs = '0.0.0.0/0': opens the port to the whole internet"),
    ({"tokenKeyLength": 3000}, "hst-ha:tokenKeyLength = 3000: must be a power of 2 from 1024 to 16384 bits"),
    ({"tokenScopeRole": "root"}, "hst-ha:tokenScopeRole = 'root': must be one of admin, user"),
    ({"tokenExpiresAt": "2001-01-01T00:00:00Z"},
     "hst-ha:tokenExpiresAt = '2001-01-01T00:00:00Z': is not in the future"),
    ({"tokenExpiresAt": "tomorrow"},
     "hst-ha:tokenExpiresAt = 'tomorrow': not a UTC date-time like 2030-01-01T00:00:00Z"),
    ({"vpcId": "vpc-1", "subnetIds": ["subnet-0aaa", "subnet-0bbb"]},
     "must list at least 3 subnets in distinct availability zones"),
    ({"subnetIds": ["subnet-0aaa", "subnet-0bbb", "subnet-0ccc"]},
     "hst-ha:vpcId = '': must be set when subnetIds is set"),
    # Settings that would widen the nodes' IAM policy.
    ({**HSTS_SETTINGS, "hstLicenseSecretArn": "arn:*"},
     "hst-ha:hstLicenseSecretArn = 'arn:*': must be the full ARN of one Secrets Manager secret"),
    ({**HSTS_SETTINGS, "hstLicenseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:*"},
     "with no wildcard"),
    ({**HSTS_SETTINGS, "hstInstallerUrl": "s3://*"},
     "hst-ha:hstInstallerUrl = 's3://*': must be an https:// URL or an s3://bucket/key"),
    ({**HSTS_SETTINGS, "hstInstallerUrl": "s3://aspera-media/*"}, "naming one object with no wildcard"),
    # ... or fail only halfway through a deploy.
    ({"adminCidrs": ["2001:db8::/32"]},
     "hst-ha:adminCidrs = '2001:db8::/32': is IPv6; the cluster's VPC and rules are IPv4 only"),
    ({"adminCidrs": ["0.0.0.0/1", "128.0.0.0/1"]},
     "hst-ha:adminCidrs = ['0.0.0.0/1', '128.0.0.0/1']: opens the port to the whole internet"),
    ({"transferCidrs": ["64.0.0.0/2"]},
     "hst-ha:transferCidrs = '64.0.0.0/2': opens the port to more public addresses than a /8"),
    ({"nodePrivateIps": ["10.42.0.10", "10.42.64.10", "10.99.0.1"]},
     "hst-ha:nodePrivateIps = '10.99.0.1': node-3 goes in subnet 10.42.128.0/18, "
     "which does not hold it; give an address from 10.42.128.4 to 10.42.191.254"),
    ({"nodePrivateIps": ["10.42.0.3", "10.42.64.10", "10.42.128.10"]},
     "hst-ha:nodePrivateIps = '10.42.0.3': AWS reserves the first four and the last address of subnet 10.42.0.0/18"),
    ({"nodePrivateIps": ["10.42.63.255", "10.42.64.10", "10.42.128.10"]},
     "hst-ha:nodePrivateIps = '10.42.63.255': AWS reserves"),
    ({"instanceType": "t3 medium"}, "hst-ha:instanceType = 't3 medium': must be an EC2 instance type like t3.medium"),
    ({"amiId": "ubuntu-noble"}, "hst-ha:amiId = 'ubuntu-noble': must be an AMI id like ami-0123456789abcdef0"),
    ({"packageMirrorPrefixListIds": ["0.0.0.0/0"]},
     "hst-ha:packageMirrorPrefixListIds = '0.0.0.0/0': must be a managed prefix list id"),
    # Egress is closed: nodes that would install packages need a mirror, or a baked AMI declared.
    ({"amiHasPackages": False},
     "hst-ha:packageMirrorPrefixListIds = []: the nodes install their packages at first boot, but their egress "
     "is closed"),
    ({"amiId": "ami-0123456789abcdef0", "amiHasPackages": False}, "or bake the packages into an AMI, set amiId to "
     "it and amiHasPackages true"),
    ({"amiHasPackages": True}, "hst-ha:amiHasPackages = True: needs amiId"),
    ({"amiId": "ami-0123456789abcdef0", "amiHasPackages": "yes"},
     "hst-ha:amiHasPackages = 'yes': must be true or false"),
    # Tokens (Medium 10 and Low).
    ({"tokenUserIds": ["a==SIGNATURE==b"]},
     "hst-ha:tokenUserIds = 'a==SIGNATURE==b': must be 1-64 ASCII letters, digits or ._@+-"),
    ({"tokenUserIds": ["x" * 65]}, "must be 1-64 ASCII letters"),
    ({"tokenUserIds": ["\udcff"]}, "hst-ha:tokenUserIds = '\\udcff': must be 1-64 ASCII letters"),
    ({"tokenUserIds": [f"user{i}" for i in range(100)]},
     "hst-ha:tokenUserIds = '100 user ids': their tokens need up to"),
    ({"tokenExpiresAt": "9999-12-31T00:00:00Z"},
     "hst-ha:tokenExpiresAt = '9999-12-31T00:00:00Z': is more than 7 days ahead"),
    ({"tokenLifetimeHours": 169}, "hst-ha:tokenLifetimeHours = 169: must be from 1 to 168"),
]


@pytest.mark.parametrize("config,message", BAD_CONFIG,
                         ids=[f"{next(iter(c))}-{i}" for i, (c, _) in enumerate(BAD_CONFIG)])
def test_bad_config_stops_before_any_resource(config, message):
    with pytest.raises(pulumi.RunError) as error:
        run_program(config)
    assert message in str(error.value)


def test_only_nodes_without_a_baked_ami_install_packages_through_their_mirror():
    def package_keys(program) -> set[str]:
        return {k for text in user_data(program).values()
                for k in yaml.safe_load(text) if k.startswith("package")}

    mirrored = run_program(MIRROR)
    assert package_keys(mirrored) == {"package_update", "packages"}
    assert ("tcp", 443, "pl-0123456789abcdef0") in rules(mirrored, EGRESS)
    baked = run_program({"amiId": "ami-0123456789abcdef0", "amiHasPackages": True})
    assert package_keys(baked) == set()  # cloud-init runs no apt: nothing to reach
    assert not [r for r in rules(baked, EGRESS) if r[2].startswith("pl-") and r[2] != MOCK_S3_PREFIX_LIST]
    assert {i.inputs["ami"] for i in baked.of_type(INSTANCE)} == {"ami-0123456789abcdef0"}


def test_bad_config_names_its_fix_for_the_token_count():
    with pytest.raises(pulumi.RunError) as error:
        run_program({"tokenUserIds": [f"user{i}" for i in range(100)]})
    assert "over Secrets Manager's 65536-byte limit for one secret; list fewer user ids" in str(error.value)


def test_node_ips_outside_an_existing_vpcs_subnets_stop_before_any_resource():
    config = {"vpcId": "vpc-0123", "subnetIds": list(ADOPTED_SUBNETS),
              "nodePrivateIps": ["10.9.1.10", "10.9.2.2", "10.9.9.10"]}
    with pytest.raises(pulumi.RunError) as error:
        run_program(config)
    text = str(error.value)
    assert ("hst-ha:nodePrivateIps = 10.9.2.2: AWS reserves the first four and the last address "
            "of subnet 10.9.2.0/24") in text
    assert "hst-ha:nodePrivateIps = 10.9.9.10: node-3 goes in subnet 10.9.3.0/24, which does not hold it" in text
    fitting = ["10.9.1.10", "10.9.2.4", "10.9.3.254"]
    assert run_program({**config, "nodePrivateIps": fitting}).outputs["nodePrivateIps"] == fitting


def test_every_problem_is_reported_at_once():
    with pytest.raises(pulumi.RunError) as error:
        run_program({"nodeCount": 4, "tokenScopeRole": "root", "redisPort": "abc"})
    text = str(error.value)
    assert "3 invalid setting(s)" in text
    for key in ("nodeCount", "tokenScopeRole", "redisPort"):
        assert f"hst-ha:{key}" in text


def test_pulumi_yaml_declares_every_setting_with_its_default():
    from components.settings import SETTINGS_SCHEMA
    from tests.pulumi_harness import ROOT

    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert list(declared) == [s.key for s in SETTINGS_SCHEMA]
    for spec in SETTINGS_SCHEMA:
        assert declared[spec.key]["type"] == spec.type
        assert declared[spec.key]["default"] == spec.default
        assert declared[spec.key]["description"] == spec.description


HSTS = HSTS_SETTINGS


def test_hst_server_is_installed_and_pointed_at_haproxy_when_configured(tmp_path):
    import subprocess

    program = run_program(HSTS)
    assert program.outputs["hstInstalled"] is True
    statements = json.loads(program.named("hst-ha-node-secrets").inputs["policy"])["Statement"]
    (tls,) = program.of_type(CLUSTER_TLS)
    assert statements[0]["Resource"] == [program.outputs["redisAuthSecretArn"], tls.state["secret_arn"],
                                         HSTS["hstLicenseSecretArn"]]
    assert statements[1] == {"Effect": "Allow", "Action": "s3:GetObject",
                             "Resource": "arn:aws:s3:::aspera-media/ibm-aspera-hsts-4.4.5.deb"}
    for name, text in user_data(program).items():
        files = files_of(program)[name]
        script = files["/opt/hst-ha/bin/hst-ha-hsts"]
        # The script is the same on every node; the values come from the node's data file.
        env = files["/opt/hst-ha/etc/node.env"]
        for setting in ("db_type,ha_redis", "db_host,$HAPROXY_ADDRESS", "db_port,$HAPROXY_PORT",
                        "$HST_REDIS_PASSWORD_SETTING,$PASSWORD"):
            assert f'set_server_data;{setting}"' in script
        for line in ("HAPROXY_ADDRESS=127.0.0.1", "HAPROXY_PORT=31414", "HST_REDIS_PASSWORD_SETTING=db_password"):
            assert f"\n{line}\n" in env
        assert HSTS['hstLicenseSecretArn'] in env.split("\nLICENCE_COMMAND=", 1)[1] and MOCK_PASSWORD not in text
        # The initial primary then registers the bearer-token verification key with HSTS.
        last = [["/opt/hst-ha/bin/hst-ha-hsts"]]
        if name == "hst-ha-node-1-instance":
            last.append(["/opt/hst-ha/bin/hst-ha-access-key"])
        assert yaml.safe_load(text)["runcmd"][-len(last):] == last
        (tmp_path / "hsts.sh").write_text(script)
        assert subprocess.run(["bash", "-n", str(tmp_path / "hsts.sh")]).returncode == 0


def test_hst_settings_come_together():
    with pytest.raises(pulumi.RunError) as error:
        run_program({"hstInstallerUrl": HSTS["hstInstallerUrl"]})
    assert "hst-ha:hstLicenseSecretArn = '': must be set when hstInstallerUrl is set" in str(error.value)
    assert "hst-ha:hstRedisPasswordSetting = '': must name the aspera.conf parameter" in str(error.value)
    # The installer runs as root: without its digest nothing is installed.
    assert "hst-ha:hstInstallerSha256 = '': must be the installer's SHA-256" in str(error.value)


def test_secret_recovery_window_follows_secrets_manager_limits():
    with pytest.raises(pulumi.RunError) as error:
        run_program({"secretRecoveryWindowDays": 3})
    assert "hst-ha:secretRecoveryWindowDays = 3: must be 0 (delete at once) or from 7 to 30 days" in str(error.value)
    (secret,) = run_program({"secretRecoveryWindowDays": 0}).of_type(USERS_SECRET)
    assert secret.inputs["recovery_window_days"] == 0


# --------------------------------------------------------------------------- after the nodes: dynamic providers

DYNAMIC = "pulumi-python:dynamic/hstha:"


@pytest.fixture
def registered_options(monkeypatch):
    """The options each dynamic resource is registered with (mocks do not record dependencies)."""
    from pulumi.dynamic import Resource

    seen: dict[str, pulumi.ResourceOptions] = {}
    original = Resource.__init__

    def record(self, provider, name, props, opts=None):
        seen[type(self).__name__] = opts
        original(self, provider, name, props, opts)

    monkeypatch.setattr(Resource, "__init__", record)
    return seen


def test_dynamic_resources_have_their_own_type_tokens(program):
    for typ in ("SigningKey", "SentinelQuorum", "BootstrapTokens", "ClusterMembership"):
        (resource,) = program.of_type(DYNAMIC + typ)
        assert "__provider" in resource.inputs


def test_quorum_runs_after_every_node_and_tokens_after_the_quorum(registered_options):
    program = run_program({})
    (quorum,) = program.of_type(DYNAMIC + "SentinelQuorum")
    after = [d._name for d in registered_options["SentinelQuorum"].depends_on]
    # A shrink's nodes leave (ClusterMembership) before the quorum is verified with the smaller count.
    assert sorted(after) == ["hst-ha-membership", "hst-ha-node-1", "hst-ha-node-2", "hst-ha-node-3"]
    membership_after = [d._name for d in registered_options["ClusterMembership"].depends_on]
    assert sorted(membership_after) == ["hst-ha-cluster-document", "hst-ha-node-1", "hst-ha-node-2", "hst-ha-node-3"]
    (membership,) = program.of_type(DYNAMIC + "ClusterMembership")
    assert membership.inputs["addresses"] == program.outputs["nodePrivateIps"]
    assert membership.inputs["instance_ids"] == program.outputs["instanceIds"]
    assert MOCK_PASSWORD not in json.dumps(membership.inputs, default=str)
    # LiveSettings, last, reads what the membership's update did: a shrink's apply is not run twice.
    (live,) = program.of_type(DYNAMIC + "LiveSettings")
    assert "shrink" in live.inputs and live.inputs["shrink"] == membership.state["last_change"]
    (tokens_after,) = registered_options["BootstrapTokens"].depends_on
    assert tokens_after._name == "hst-ha-sentinel-quorum"
    # No token is an output at all (they live only in their secret), so none needs marking secret.
    (tokens,) = program.of_type(DYNAMIC + "BootstrapTokens")
    assert "tokens" not in tokens.inputs and "tokens" not in tokens.state


def test_quorum_is_verified_from_a_node_over_ssm_with_no_password_in_its_inputs(program):
    (quorum,) = program.of_type(DYNAMIC + "SentinelQuorum")
    inputs = quorum.inputs
    ips = program.outputs["nodePrivateIps"]
    assert inputs["sentinels"] == [f"{ip}:41415" for ip in ips]
    assert inputs["servers"] == [f"{ip}:31415" for ip in ips]
    assert inputs["expected_nodes"] == len(ips) and inputs["master_name"] == "myprimary"
    assert inputs["instance_ids"] == program.outputs["instanceIds"]  # a replaced node re-verifies
    assert inputs["via"] == "ssm" and inputs["haproxy_endpoints"] == ["127.0.0.1:31414"]
    secret_arn = program.outputs["redisAuthSecretArn"]
    assert inputs["password"] == {"kind": "aws", "secret_id": secret_arn, "region": "eu-west-1"}
    assert inputs["sentinel_settings"]["quorum"] == len(ips) // 2 + 1
    assert MOCK_PASSWORD not in json.dumps(inputs, default=str)


def test_signing_key_and_tokens_live_in_their_own_secrets(program):
    (key,) = program.of_type(DYNAMIC + "SigningKey")
    assert key.inputs["key_length"] == 4096
    assert key.inputs["secret_name_prefix"] == "hst-ha/test/token-signing-key"
    assert key.inputs["store"] == {"kind": "aws", "region": "eu-west-1"}
    (tokens,) = program.of_type(DYNAMIC + "BootstrapTokens")
    assert tokens.inputs["signing_key_secret_id"] == key.state["secret_arn"]
    assert tokens.inputs["secret_name_prefix"] == "hst-ha/test/bearer-tokens"
    # Safe defaults: a user-scoped token that lives an hour.
    assert tokens.inputs["user_ids"] == ["admin"] and tokens.inputs["scope_role"] == "user"
    assert tokens.inputs["lifetime_hours"] == 1 and tokens.inputs["expires_at"] == ""
    assert "PRIVATE KEY" not in json.dumps([key.inputs, tokens.inputs], default=str)


def test_stack_outputs_record_the_quorum_and_where_the_tokens_are(program):
    from tests.pulumi_harness import MOCK_PUBLIC_KEY, MOCK_TOKEN

    out = program.outputs
    assert out["quorum"]["primary"] == f"{out['nodePrivateIps'][0]}:31415"
    assert out["quorum"]["sentinels_seen"] == out["sentinelEndpoints"]
    assert out["bearerTokenSecretArn"].startswith("arn:aws:secretsmanager:eu-west-1:")
    assert out["bearerTokenSecretArn"] != out["redisAuthSecretArn"]
    assert out["tokenVerificationKey"] == MOCK_PUBLIC_KEY
    assert MOCK_TOKEN not in json.dumps(out)


def test_only_the_initial_primary_with_hsts_carries_the_verification_key():
    from tests.pulumi_harness import MOCK_PUBLIC_KEY

    for text in user_data(run_program({})).values():
        assert "BEGIN PUBLIC KEY" not in text  # no HSTS: the key changes no user data
    hsts = run_program(HSTS)
    for name, text in user_data(hsts).items():
        files = files_of(hsts)[name]
        if name == "hst-ha-node-1-instance":
            create = json.loads(files["/opt/hst-ha/etc/access-key/create.json"])
            assert create["token_verification_key"] == MOCK_PUBLIC_KEY and create["id"] == "hst-ha-bootstrap"
        else:
            assert "/opt/hst-ha/etc/access-key/create.json" not in files
        assert "PRIVATE KEY" not in text


def test_a_cluster_document_over_the_standard_tier_is_refused_at_preview():
    url = "https://example.com/" + "a" * 2400 + ".deb"
    with pytest.raises(Exception, match=r"cluster document is \d+ bytes, over SSM's Standard tier \(4096\)"):
        run_program({"nodeCount": 15, **HSTS_SETTINGS, "hstInstallerUrl": url}, preview=True)


def test_tls_is_on_by_default_with_a_ca_and_certificates_made_inside_the_provider(program):
    (tls,) = program.of_type(CLUSTER_TLS)
    assert tls.name == "hst-ha-tls"
    given = {k for k, v in tls.inputs.items() if v is not None}
    # Where and for which addresses, never a PEM: the CA and the keys are made inside the provider.
    assert given == {"store", "secret_name_prefix", "ca_secret_name_prefix", "addresses", "tags",
                     "recovery_window_days", "provider_version", "__provider"}
    assert tls.inputs["addresses"] == sorted(program.outputs["nodePrivateIps"])
    assert tls.inputs["secret_name_prefix"] == "hst-ha/test/tls"
    assert tls.inputs["ca_secret_name_prefix"] == "hst-ha/test/tls-ca"
    assert tls.inputs["tags"] == dict([STACK_TAG]) and tls.inputs["recovery_window_days"] == 7
    assert "-----BEGIN" not in json.dumps([r.inputs for r in program.mocks.resources], default=str)
    document = json.loads(cluster_document(program))
    assert document["settings"]["tlsEnabled"] is True
    for name, text in user_data(program).items():
        node = json.loads(written_files(text)["/opt/hst-ha/etc/node.json"])
        node_text = json.dumps(node)
        assert tls.state["secret_arn"] in node_text and tls.state["ca_secret_arn"] not in node_text
        files = files_of(program)[name]
        assert "tls-port 31415" in files["/opt/hst-ha/etc/templates/redis.conf"]
        assert "TLS_CA_FILE=/opt/hst-ha/etc/tls-ca.crt" in files["/opt/hst-ha/etc/node.env"]
    # The quorum's SSM probe asks the nodes' TLS ports with the node's CA file, and so does LiveSettings.
    (quorum,) = program.of_type(DYNAMIC + "SentinelQuorum")
    assert quorum.inputs["tls_enabled"] is True
    (live,) = program.of_type(DYNAMIC + "LiveSettings")
    assert live.inputs["quorum"]["tls_enabled"] is True and live.inputs["settings"]["tls_enabled"] is True


def test_growing_with_tls_signs_for_the_new_addresses_in_the_same_secret():
    three, five = run_program({"nodeCount": 3}), run_program({"nodeCount": 5})
    (before,), (after,) = three.of_type(CLUSTER_TLS), five.of_type(CLUSTER_TLS)
    # Only the addresses change: the provider updates in place (tests/test_providers.py), so the
    # secret's ARN in the existing nodes' identity stays, and their user data with it.
    assert {k: v for k, v in before.inputs.items() if k != "addresses"} == {
        k: v for k, v in after.inputs.items() if k != "addresses"}
    assert set(before.inputs["addresses"]) < set(after.inputs["addresses"])


def test_without_tls_there_is_no_tls_secret_and_the_nodes_speak_plaintext():
    program = run_program({"tlsEnabled": False})
    assert not program.of_type(CLUSTER_TLS)
    (statement,) = json.loads(program.named("hst-ha-node-secrets").inputs["policy"])["Statement"]
    assert statement["Resource"] == [program.outputs["redisAuthSecretArn"]]
    (quorum,) = program.of_type(DYNAMIC + "SentinelQuorum")
    assert quorum.inputs["tls_enabled"] is False
    for name in user_data(program):
        files = files_of(program)[name]
        assert "\nport 31415\n" in "\n" + files["/opt/hst-ha/etc/templates/redis.conf"]
