"""The hst-ha security contract as plain rules: `(resource_type, props) -> violations`.

Pure Python (PyYAML only, no `pulumi_policy`), so the rules are unit-tested on the very inputs the
mocked program registers (tests/test_policy.py) and `__main__.py` only adapts them to the Policy SDK.
`props` are a resource's inputs under their wire (camelCase) names, as the engine hands them to a
policy pack. Any Mapping/Sequence works, including the SDK's proxies, which raise while a value is
still unknown during preview (the SDK then reports "can't run policy during preview" as advisory).

The pack is deployed standalone (`pulumi policy publish` uploads only this folder), so it does not
import the project's `components` package: `written_files` below is a copy of
`components.aws.cloud_config.written_files`, and a test checks the two agree on real user data.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

# The port contract (README "Architecture"): what other stacks and people rely on.
REDIS_PORT = 31415
SENTINEL_PORT = 41415
HAPROXY_PORT = 31414
# One placeholder per Redis role (components/bundle/users.py: placeholder), e.g. @@HST_PASSWORD@@.
PLACEHOLDER = "@@<ROLE>_PASSWORD@@"
_PLACEHOLDER = re.compile(r"^@@[A-Z]+_PASSWORD@@$")

INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
VOLUME = "aws:ebs/volume:Volume"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
# Resources whose state holds a secret value: a generator's result, or the value put into a secret.
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_STRING = "random:index/randomString:RandomString"
SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
# The only actions a node's role may allow on "*": the SSM agent's own calls, which AWS authorizes
# on no narrower resource (the instance's identity scopes them). A copy of
# components.aws.cluster.SSM_AGENT_ACTIONS; a test checks the two agree.
RESOURCELESS_ACTIONS = frozenset({
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
    "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
})

Rule = Callable[..., list[str]]
_S3_OBJECT_PREFIX = re.compile(r"arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]+/[A-Za-z0-9_.-]+/\*")


def _items(value: Any) -> list[Any]:
    if value is None or isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return []
    return list(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# ----------------------------------------------------------------------------------- instances


def imdsv2_required(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """IMDSv1 hands the instance role's credentials (which can read the Redis secret) to any SSRF."""
    if resource_type not in (INSTANCE, LAUNCH_TEMPLATE):
        return []
    options = _mapping(props.get("metadataOptions"))
    if options.get("httpEndpoint") == "disabled":
        return []  # no metadata service at all is stricter still
    if options.get("httpTokens") != "required":
        return [
            f"{resource_type}: metadataOptions.httpTokens is {options.get('httpTokens')!r}; "
            "set it to 'required' (IMDSv2 only)"
        ]
    return []


def volumes_encrypted(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Redis's AOF/RDB files hold the HST Server's state: every volume is encrypted at rest."""
    if resource_type == VOLUME:
        return [] if props.get("encrypted") is True else ["aws:ebs/volume:Volume: encrypted must be true"]
    if resource_type != INSTANCE:
        return []
    violations = []
    root = props.get("rootBlockDevice")
    if _mapping(root).get("encrypted") is not True:
        violations.append(
            "aws:ec2/instance:Instance: rootBlockDevice.encrypted must be true "
            "(an instance without rootBlockDevice gets the AMI's unencrypted default)"
        )
    for i, device in enumerate(_items(props.get("ebsBlockDevices"))):
        if _mapping(device).get("encrypted") is not True:
            violations.append(f"aws:ec2/instance:Instance: ebsBlockDevices[{i}].encrypted must be true")
    return violations


# ------------------------------------------------------------------------------ security groups


def _number(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _covered_ports(protocol: Any, from_port: Any, to_port: Any, ports: tuple[int, ...]) -> list[int]:
    """The contract ports a rule admits. Protocol -1/all admits every port; ICMP admits none."""
    protocol = str(protocol).lower()
    if protocol in ("icmp", "icmpv6", "1", "58"):
        return []
    if protocol in ("-1", "all"):
        return list(ports)
    low, high = _number(from_port), _number(to_port)
    if low is None:
        return list(ports)  # a rule whose range cannot be read is judged as the widest
    high = low if high is None else high
    return [p for p in ports if low <= p <= high]


def _port_findings(where: str, covered: list[int], sources: list[str], only_self: bool,
                   redis_port: int, sentinel_port: int, haproxy_port: int) -> list[str]:
    violations = []
    if haproxy_port in covered:
        violations.append(
            f"{where} admits the HAProxy port {haproxy_port}: HAProxy listens on 127.0.0.1 only and "
            "no security-group rule may name its port"
        )
    for port, service in ((redis_port, "Redis"), (sentinel_port, "Sentinel")):
        if port not in covered:
            continue
        for source in sources:
            violations.append(
                f"{where} opens the {service} port {port} to {source}; it must be open only between "
                "members of the cluster security group"
            )
        if not sources and not only_self:
            violations.append(
                f"{where} opens the {service} port {port} to a peer other than the cluster security "
                "group itself; it must be open only between members of that group"
            )
    return violations


def cluster_ports_closed(resource_type: str, props: Mapping[str, Any], redis_port: int = REDIS_PORT,
                         sentinel_port: int = SENTINEL_PORT, haproxy_port: int = HAPROXY_PORT) -> list[str]:
    """Redis and Sentinel only between members of the cluster group; no rule at all for HAProxy."""
    ports = (redis_port, sentinel_port, haproxy_port)
    check = dict(redis_port=redis_port, sentinel_port=sentinel_port, haproxy_port=haproxy_port)

    if resource_type == INGRESS_RULE:
        covered = _covered_ports(props.get("ipProtocol"), props.get("fromPort"), props.get("toPort"), ports)
        if not covered:
            return []
        sources = [f"CIDR {props[k]}" for k in ("cidrIpv4", "cidrIpv6") if props.get(k)]
        if props.get("prefixListId"):
            sources.append(f"prefix list {props['prefixListId']}")
        referenced = props.get("referencedSecurityGroupId") if not sources else None
        only_self = bool(referenced) and referenced == props.get("securityGroupId")
        return _port_findings(INGRESS_RULE, covered, sources, only_self, **check)

    if resource_type == SECURITY_GROUP_RULE:
        if props.get("type") != "ingress":
            return []
        covered = _covered_ports(props.get("protocol"), props.get("fromPort"), props.get("toPort"), ports)
        if not covered:
            return []
        sources = _rule_sources(props)
        only_self = props.get("self") is True or (
            bool(props.get("sourceSecurityGroupId"))
            and props.get("sourceSecurityGroupId") == props.get("securityGroupId")
        )
        return _port_findings(SECURITY_GROUP_RULE, covered, sources, only_self, **check)

    if resource_type == SECURITY_GROUP:
        violations = []
        for i, rule in enumerate(_items(props.get("ingress"))):
            rule = _mapping(rule)
            covered = _covered_ports(rule.get("protocol"), rule.get("fromPort"), rule.get("toPort"), ports)
            if not covered:
                continue
            sources = _rule_sources(rule)
            only_self = rule.get("self") is True and not _items(rule.get("securityGroups"))
            violations += _port_findings(f"{SECURITY_GROUP} ingress[{i}]", covered, sources, only_self, **check)
        return violations
    return []


def _rule_sources(rule: Mapping[str, Any]) -> list[str]:
    sources = [f"CIDR {c}" for key in ("cidrBlocks", "ipv6CidrBlocks") for c in _items(rule.get(key))]
    sources += [f"prefix list {p}" for p in _items(rule.get("prefixListIds"))]
    return sources


# ------------------------------------------------------------------------------------ user data


def written_files(user_data: str) -> dict[str, str]:
    """The files a cloud-config document writes, decoded (copy of components.aws.cloud_config.written_files);
    a whole document gzipped and base64-encoded (userDataBase64) is unpacked first."""
    if user_data.startswith("H4sI"):
        user_data = gzip.decompress(base64.b64decode(user_data)).decode()
    document = yaml.safe_load(user_data)
    files = {}
    for entry in document.get("write_files", []):
        content = entry["content"]
        if entry.get("encoding") == "gz+b64":
            content = gzip.decompress(base64.b64decode(content)).decode()
        files[posixpath.normpath(entry["path"])] = content
    return files


# A password can reach user data through a Redis/Sentinel directive, a HAProxy health check,
# CONFIG SET, redis-cli -a or REDISCLI_AUTH. Each must carry the placeholder the boot script fills
# in (or a shell variable holding what it fetched), never a literal.
_SECRET_SETTINGS = (
    ("requirepass", re.compile(r"^\s*requirepass\s+(?P<value>\S+)", re.I)),
    ("masterauth", re.compile(r"^\s*masterauth\s+(?P<value>\S+)", re.I)),
    ("sentinel auth-pass", re.compile(r"\bauth-pass\s+\S+\s+(?P<value>\S+)", re.I)),
    ("sentinel sentinel-pass", re.compile(r"\bsentinel-pass\s+(?P<value>\S+)", re.I)),
    ("ACL user password", re.compile(r"^\s*user\s+\S+\s.*?>(?P<value>\S+)", re.I)),
    ("CONFIG SET", re.compile(r"\bconfig\s+set\s+(?:requirepass|masterauth|auth-pass)\s+(?P<value>\S+)", re.I)),
    # AUTH <password> or AUTH <user> <password>
    ("tcp-check AUTH", re.compile(
        r"\bsend\s+AUTH(?:\\\s|\s)+(?:[a-z][a-z0-9-]*(?:\\\s|\s)+)?(?P<value>.+?)(?:\\r\\n|\s*$)", re.I)),
    ("redis-cli -a", re.compile(r"\bredis-cli\b.*?\s-a\s+(?P<value>\S+)")),
    ("REDISCLI_AUTH", re.compile(r"\bREDISCLI_AUTH=(?P<value>\S+)")),
)
_SHELL_VARIABLE = re.compile(r"""^["']?\$\{?[A-Za-z_][A-Za-z0-9_]*\}?["']?;?$""")


def _literal(value: str) -> bool:
    value = value.strip()
    unquoted = value.strip("\"'")
    return not _PLACEHOLDER.match(unquoted) and not _SHELL_VARIABLE.match(value)


def _scan(text: str, where: str) -> list[str]:
    violations = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for name, pattern in _SECRET_SETTINGS:
            match = pattern.search(line)
            if match and _literal(match.group("value")):
                # Never echo the value: policy output lands in CI logs and pull-request comments.
                violations.append(
                    f"user data {where} line {number}: {name} is followed by a literal value instead of "
                    f"{PLACEHOLDER}; the password belongs in Secrets Manager, fetched at boot"
                )
    return violations


def _decoded_user_data(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    texts = []
    if isinstance(props.get("userData"), str):
        texts.append(("userData", props["userData"]))
    encoded = props.get("userDataBase64")
    if isinstance(encoded, str) and encoded:
        try:
            raw = base64.b64decode(encoded, validate=True)
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            texts.append(("userDataBase64", raw.decode("utf-8", "replace")))
        except (binascii.Error, OSError, EOFError) as error:
            texts.append(("userDataBase64", f"# undecodable: {error}"))
    return texts


def _cloud_config_texts(text: str, field: str) -> list[tuple[str, str]]:
    """A #cloud-config document as the texts to scan: each written file decoded, its commands as
    shell lines, and whatever else it holds as YAML."""
    files = written_files(text)
    document = dict(yaml.safe_load(text))
    document.pop("write_files", None)
    texts = [(f"({field}) file {path}", content) for path, content in files.items()]
    for key in ("bootcmd", "runcmd"):
        commands = document.pop(key, None) or []
        lines = [" ".join(str(a) for a in c) if isinstance(c, list) else str(c) for c in commands]
        texts.append((f"({field}) {key}", "\n".join(lines)))
    texts.append((f"({field})", yaml.safe_dump(document, width=1000)))
    return texts


def no_password_in_user_data(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """pulumi-aws v7 keeps user data in cleartext in state and previews: no password may be in it."""
    if resource_type != INSTANCE:
        return []
    violations = []
    for field, text in _decoded_user_data(props):
        texts = [(f"({field})", text)]
        if text.startswith("#cloud-config"):
            try:
                texts = _cloud_config_texts(text, field)
            except (yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError, OSError, EOFError) as error:
                violations.append(f"user data ({field}) is #cloud-config but cannot be decoded: {error}")
        for where, content in texts:
            violations += _scan(content, where)
    return violations


# ------------------------------------------------------------------------------------ node role


def _document(policy: Any) -> Mapping[str, Any] | None:
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except ValueError:
            return None
    return policy if isinstance(policy, Mapping) else None


def _strings(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in _items(value)]


def _statement_findings(where: str, statement: Mapping[str, Any]) -> list[str]:
    if statement.get("Effect") != "Allow":
        return []
    if "NotAction" in statement or "NotResource" in statement:
        return [f"{where} uses NotAction/NotResource, which allows everything not listed; list what it allows"]
    actions, resources = _strings(statement.get("Action")), _strings(statement.get("Resource"))
    violations = [f"{where} allows the wildcard action {a!r}; name each action the nodes call"
                  for a in actions if "*" in a or "?" in a]
    # A snapshot's key is made on the node: an object prefix inside one named bucket is as narrow as it gets.
    wild = [r for r in resources if ("*" in r or "?" in r) and not _S3_OBJECT_PREFIX.fullmatch(r)]
    # CloudWatch authorizes PutMetricData only on "*"; a namespace condition is what scopes it.
    namespaced = statement.get("Condition", {}).get("StringEquals", {}).get("cloudwatch:namespace")
    broad = sorted(set(actions) - RESOURCELESS_ACTIONS - ({"cloudwatch:PutMetricData"} if namespaced else set()))
    if wild and broad:
        violations.append(
            f"{where} allows {', '.join(broad)} on the wildcard resource {', '.join(wild)}; name the exact ARNs "
            "(only the SSM agent's own actions, which AWS scopes to nothing narrower, may use \"*\")"
        )
    return violations


def _policy_findings(where: str, policy: Any) -> list[str]:
    document = _document(policy)
    if document is None:
        return [f"{where}: the policy is not a JSON policy document"]
    statements = document.get("Statement")
    statements = [statements] if isinstance(statements, Mapping) else _items(statements)
    return [v for i, s in enumerate(statements) for v in _statement_findings(f"{where} Statement[{i}]", _mapping(s))]


def _managed_findings(where: str, arns: list[str]) -> list[str]:
    return [f"{where} attaches the AWS managed policy {arn}, which allows more than a node needs "
            "(AmazonSSMManagedInstanceCore: ssm:GetParameter(s) on every parameter); "
            "use inline least-privilege statements"
            for arn in arns if arn.startswith("arn:aws:iam::aws:policy/")]


def node_role_least_privilege(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """The only roles this program makes are the nodes': no wildcard resource (but for the SSM
    agent's resource-less actions), no wildcard action, no AWS managed policy."""
    if resource_type == ROLE_POLICY:
        return _policy_findings(ROLE_POLICY, props.get("policy"))
    if resource_type == ROLE_POLICY_ATTACHMENT:
        return _managed_findings(ROLE_POLICY_ATTACHMENT, _strings(props.get("policyArn")))
    if resource_type == ROLE:
        violations = _managed_findings(f"{ROLE} managedPolicyArns", _strings(props.get("managedPolicyArns")))
        for i, inline in enumerate(_items(props.get("inlinePolicies"))):
            violations += _policy_findings(f"{ROLE} inlinePolicies[{i}]", _mapping(inline).get("policy"))
        return violations
    return []


# ------------------------------------------------------------------------------------ state


def no_password_in_state(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Whoever can read the stack's state (a preview's credential, `pulumi stack export --show-secrets`)
    can decrypt every value in it: a password must be generated where it is stored, not in the state.
    Judged by type alone, so the rule never needs (or echoes) the value."""
    del props
    where = {
        RANDOM_PASSWORD: "its result", RANDOM_STRING: "its result", SECRET_VERSION: "its secretString/secretBinary",
    }.get(resource_type)
    if where is None:
        return []
    return [f"{resource_type} keeps {where} in the stack's state, which anyone who can read the state can "
            "decrypt; generate the password inside a dynamic provider that writes it straight into Secrets "
            "Manager and keeps only the secret's ARN (hst-ha's RedisUsersSecret)"]


RULES: dict[str, tuple[Rule, str]] = {
    "hst-ha-imdsv2-required": (imdsv2_required, "EC2 instances require IMDSv2 (metadata tokens)."),
    "hst-ha-volumes-encrypted": (volumes_encrypted, "EC2 root and EBS volumes are encrypted."),
    "hst-ha-cluster-ports-closed": (
        cluster_ports_closed,
        "Redis (31415) and Sentinel (41415) are open only within the cluster security group; "
        "no rule names the HAProxy port (31414).",
    ),
    "hst-ha-no-password-in-user-data": (
        no_password_in_user_data,
        "User data carries no Redis password, only the roles' @@<ROLE>_PASSWORD@@ placeholders.",
    ),
    "hst-ha-no-password-in-state": (
        no_password_in_state,
        "No password generator (random.RandomPassword/RandomString) or secret value "
        "(aws.secretsmanager.SecretVersion) in the stack's state.",
    ),
    "hst-ha-node-role-least-privilege": (
        node_role_least_privilege,
        "The nodes' role names exact resources (no wildcard but for the SSM agent's own actions), "
        "no wildcard action and no AWS managed policy.",
    ),
}


def check(resource_type: str, props: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every rule's violations for one resource (rules with none are left out)."""
    found = {name: rule(resource_type, props) for name, (rule, _) in RULES.items()}
    return {name: violations for name, violations in found.items() if violations}
