"""Typed, validated cluster settings, built from stack config (or the local target's options).

Pure Python: no Pulumi import, so the AWS program, the local target and the tests share it.
`SETTINGS_SCHEMA` is the one list of keys; `Pulumi.yaml` and the README are checked against it.
Every bad value is reported at once, before any resource is registered.
"""

from __future__ import annotations

import ipaddress
import json
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from components.bundle.names import majority
from components.bundle.ports import (
    HAPROXY_METRICS_PORT,
    NODE_API_PORT,
    REDIS_EXPORTER_PORT,
    SENTINEL_EXPORTER_PORT,
    SSH_FASP_PORT,
)
from components.runtime import bearer_token
from components.runtime.bootstrap import MAX_DOCUMENT_BYTES, token_document_bound
from components.runtime.secret_store import SecretStoreError, validate_recovery_window

PROJECT = "hst-ha"

MAX_NODES = 15
# A split Sentinel leader vote leaves no primary for 2 x failover-timeout: bound that to a minute.
MAX_FAILOVER_TIMEOUT_MS = 30_000
ZONES = 3
# A bootstrap token is for the first hours of a cluster; a longer-lived one is a standing credential.
MAX_TOKEN_LIFETIME_HOURS = 7 * 24
METRICS_PORTS = (REDIS_EXPORTER_PORT, SENTINEL_EXPORTER_PORT, HAPROXY_METRICS_PORT)


@dataclass(frozen=True)
class SettingSpec:
    key: str
    type: str  # Pulumi.yaml config type: string | integer | boolean | array
    default: Any
    description: str


SETTINGS_SCHEMA: tuple[SettingSpec, ...] = (
    SettingSpec("nodeCount", "integer", 3,
                "Number of nodes; odd, at least 3 (a Sentinel majority must survive one loss)."),
    SettingSpec("instanceType", "string", "t3.medium", "EC2 instance type of every node."),
    SettingSpec("amiId", "string", "",
                "AMI of the nodes; empty means the current Ubuntu 24.04 LTS image, looked up once at deploy time."),
    SettingSpec("vpcId", "string", "",
                "Existing VPC to deploy into; empty creates a new "
                "VPC with one subnet in each of 3 availability zones."),
    SettingSpec("subnetIds", "array", [],
                "Subnets of vpcId the nodes are spread over (round-robin); "
                "at least 3, in distinct availability zones."),
    SettingSpec("vpcCidr", "string", "10.42.0.0/16", "CIDR of the VPC created when vpcId is empty."),
    SettingSpec("nodePrivateIps", "array", [],
                "Fixed private IPs of the nodes, in node order; empty "
                "derives them from the subnets' CIDRs (host .10 upwards)."),
    SettingSpec("adminCidrs", "array", [],
                "CIDRs allowed to reach SSH (33001/tcp) and the Node "
                "API (9092); none by default (use SSM Session Manager)."),
    SettingSpec("transferCidrs", "array", [],
                "CIDRs allowed to transfer over FASP (33001/tcp and udp); none by default."),
    SettingSpec("packageMirrorPrefixListIds", "array", [],
                "Managed prefix lists (pl-...) of your package mirrors or HTTP(S) proxy, which "
                "the nodes may reach on tcp 80 and 443; none by default: the nodes then reach "
                "only the VPC endpoints (bake the packages into amiId, or name your mirror here)."),
    SettingSpec("amiHasPackages", "boolean", False,
                "True declares that amiId already holds every package the nodes need (PACKAGES in "
                "components/aws/cloud_config.py): they then install nothing at boot. Needs amiId. "
                "This or packageMirrorPrefixListIds is required: egress is closed, so nodes cannot "
                "download packages."),
    SettingSpec("redisPort", "integer", 31415, "Redis port on every node's private IP (HSTS default)."),
    SettingSpec("sentinelPort", "integer", 41415, "Redis Sentinel port on every node's private IP (HSTS 4.4 default)."),
    SettingSpec("haproxyPort", "integer", 31414, "HAProxy port, bound to 127.0.0.1 only; HST Server's db_port."),
    SettingSpec("tlsEnabled", "boolean", True,
                "TLS (a private CA kept in Secrets Manager) on every Redis and Sentinel port: replication, "
                "Sentinel links and HAProxy's checks; HST Server still reaches HAProxy in plaintext on loopback."),
    SettingSpec("masterName", "string", "myprimary", "Name of the primary set the Sentinels monitor."),
    SettingSpec("sentinelQuorum", "integer", 0,
                "Sentinels that must agree the primary is down; 0 means a majority of nodeCount."),
    SettingSpec("downAfterMs", "integer", 5000,
                "Milliseconds without a valid reply before a Sentinel considers the primary down."),
    SettingSpec("failoverTimeoutMs", "integer", 15000,
                "Sentinel failover-timeout in milliseconds; a failed failover (a "
                "split leader vote) is retried after twice this, so at most 30000."),
    SettingSpec("parallelSyncs", "integer", 1, "Replicas resynchronised at once after a failover."),
    SettingSpec("minReplicasToWrite", "integer", 1,
                "The primary refuses writes unless this many replicas are connected and recent "
                "(0 only with acceptWriteLossOnFailover)."),
    SettingSpec("acceptWriteLossOnFailover", "boolean", False,
                "Must be true to run with minReplicasToWrite 0: a primary that lost its replicas (paused, cut off, "
                "or restarted after a failover) then acknowledges writes the failover discards."),
    SettingSpec("minReplicasMaxLag", "integer", 10,
                "Seconds since a replica's last acknowledgement for it to count towards minReplicasToWrite."),
    SettingSpec("hstInstallerUrl", "string", "",
                "URL of your HST Server .deb installer; empty means the nodes run the Redis backend only."),
    SettingSpec("hstInstallerSha256", "string", "",
                "SHA-256 (64 hex digits) of the HST Server installer; "
                "required with hstInstallerUrl: a node installs nothing else."),
    SettingSpec("hstLicenseSecretArn", "string", "",
                "Secrets Manager ARN holding your HST Server licence text; required with hstInstallerUrl."),
    SettingSpec("hstRedisPasswordSetting", "string", "",
                "aspera.conf server_data parameter that carries the Redis password to HST Server "
                "(find it with `asuserdata -a | grep -i db_`); required with hstInstallerUrl."),
    SettingSpec("accessKeyId", "string", "hst-ha-bootstrap",
                "Node API access key the bootstrap bearer tokens are scoped to."),
    SettingSpec("tokenUserIds", "array", ["admin"],
                "One bootstrap bearer token is minted for each of these user ids (1-64 "
                "ASCII letters, digits or ._@+-; as many as fit one 64 KiB secret)."),
    SettingSpec("tokenGroupIds", "array", [], "Group ids carried by every bootstrap bearer token."),
    SettingSpec("tokenScopeRole", "string", "user",
                "Scope role of the bootstrap bearer tokens: user, or admin (an admin "
                "token may rewrite the access key: set it only when you need one)."),
    SettingSpec("tokenLifetimeHours", "integer", 1,
                "Lifetime of each bootstrap bearer token from its minting, in hours, 1 to 168 "
                "(7 days); up re-mints a token only once it has expired or its inputs changed."),
    SettingSpec("tokenExpiresAt", "string", "",
                "Fixed expiry of the bootstrap bearer tokens in UTC (2030-01-01T00:00:00Z), "
                "at most 7 days ahead; empty means tokenLifetimeHours after each minting."),
    SettingSpec("tokenKeyLength", "integer", 4096, "RSA signing key length in bits: a power of 2 from 1024 to 16384."),
    SettingSpec("secretRecoveryWindowDays", "integer", 7,
                "Days Secrets Manager keeps a deleted secret recoverable: 0 (delete at once) or 7 to 30."),
    SettingSpec("metricsCidrs", "array", [],
                "CIDRs of your Prometheus scrapers, allowed to reach the metrics ports (9121 Redis, 9122 "
                "Sentinel, 8405 HAProxy and fence) on the nodes' private IPs; none by default."),
    SettingSpec("alarmTopicArn", "string", "",
                "SNS topic ARN the CloudWatch alarms notify; empty creates a topic (output alarmTopicArn) to "
                "subscribe to."),
    SettingSpec("replicationLagAlarmSeconds", "integer", 10,
                "Alarm when a replica's last acknowledgement is older than this many seconds (1 to 3600)."),
    SettingSpec("backupIntervalMinutes", "integer", 360,
                "Minutes between RDB snapshots taken from a replica and uploaded to the backup bucket (15 to "
                "10080); 0 takes none."),
    SettingSpec("backupRetentionDays", "integer", 30,
                "Days the backup bucket keeps a snapshot (and a replaced version of it) before it expires (1 to "
                "3650)."),
    SettingSpec("backupReaderArns", "array", [],
                "IAM role ARNs of the operators allowed to read (restore) the snapshots; the nodes' role only "
                "writes."),
)

SCHEMA_BY_KEY = {spec.key: spec for spec in SETTINGS_SCHEMA}


class SettingsError(ValueError):
    """All the problems found in the settings, one line each: key, value given, rule."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"{len(problems)} invalid setting(s) for {PROJECT}:\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class TokenSettings:
    access_key_id: str
    user_ids: tuple[str, ...]
    group_ids: tuple[str, ...]
    scope_role: str
    expires_at: str | None  # a fixed expiry; None: `lifetime_hours` after each minting
    key_length: int
    lifetime_hours: int = 1


@dataclass(frozen=True)
class ClusterSettings:
    node_count: int = 3
    instance_type: str = "t3.medium"
    ami_id: str | None = None
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    vpc_cidr: str = "10.42.0.0/16"
    node_private_ips: tuple[str, ...] = ()
    admin_cidrs: tuple[str, ...] = ()
    transfer_cidrs: tuple[str, ...] = ()
    package_mirror_prefix_list_ids: tuple[str, ...] = ()
    ami_has_packages: bool = False  # the nodes' cloud-config then installs no package
    redis_port: int = 31415
    sentinel_port: int = 41415
    haproxy_port: int = 31414
    master_name: str = "myprimary"
    tls_enabled: bool = True
    sentinel_quorum: int = 2
    down_after_ms: int = 5000
    failover_timeout_ms: int = 15000
    parallel_syncs: int = 1
    min_replicas_to_write: int = 1
    min_replicas_max_lag: int = 10
    hst_installer_url: str | None = None
    hst_installer_sha256: str | None = None
    hst_license_secret_arn: str | None = None
    hst_redis_password_setting: str | None = None
    tokens: TokenSettings = field(
        default_factory=lambda: TokenSettings("hst-ha-bootstrap", ("admin",), (), "user", None, 4096)
    )
    secret_recovery_window_days: int = 7
    metrics_cidrs: tuple[str, ...] = ()
    alarm_topic_arn: str | None = None
    replication_lag_alarm_seconds: int = 10
    backup_interval_minutes: int = 360
    backup_retention_days: int = 30
    backup_reader_arns: tuple[str, ...] = ()

    @property
    def hst_enabled(self) -> bool:
        return self.hst_installer_url is not None

    @property
    def sentinel_majority(self) -> int:
        return self.node_count // 2 + 1


_MASTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ASPERA_SETTING = re.compile(r"^[a-z][a-z0-9_]*$")
# Signed into the token's JSON and matched by HSTS against a permission's access_id. '=' (the
# `==SIGNATURE==` framing), quotes, spaces and non-ASCII text make tokens our own verifier rejects.
_TOKEN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
_TOKEN_ID_RULE = (
    "must be 1-64 ASCII letters, digits or ._@+- starting with a letter or digit (it is signed into the token)"
)

# Values AWS would refuse only halfway through a deploy, or that would widen the nodes' IAM
# policy: checked by shape here, before anything is registered. Empty optional values are skipped.
_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "instanceType": (re.compile(r"^[a-z][a-z0-9-]*\d[a-z0-9-]*\.[a-z0-9]+$"),
                     "must be an EC2 instance type like t3.medium or m7i-flex.large"),
    "amiId": (re.compile(r"^ami-(?:[0-9a-f]{8}|[0-9a-f]{17})$"),
              "must be an AMI id like ami-0123456789abcdef0, or empty for the current Ubuntu 24.04 image"),
    "vpcId": (re.compile(r"^vpc-[0-9a-f]{1,17}$"), "must be a VPC id like vpc-0123456789abcdef0"),
    "subnetIds": (re.compile(r"^subnet-[0-9a-f]{1,17}$"), "must be a subnet id like subnet-0123456789abcdef0"),
    "packageMirrorPrefixListIds": (re.compile(r"^pl-[0-9a-f]{8,17}$"),
                                   "must be a managed prefix list id like pl-0123456789abcdef0"),
    "masterName": (_MASTER_NAME, "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
    "hstRedisPasswordSetting": (_ASPERA_SETTING, "must be an aspera.conf parameter name (lower case, digits, '_')"),
    # The nodes' role may read exactly this secret: a wildcard would let them read the token
    # signing key and the bearer tokens too.
    "hstLicenseSecretArn": (
        re.compile(r"^arn:aws(?:-[a-z]+)*:secretsmanager:[a-z]{2}(?:-[a-z]+)+-\d:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$"),
        "must be the full ARN of one Secrets Manager secret, like "
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hsts-licence-AbCdEf, with no wildcard",
    ),
    # An s3:// URL becomes the nodes' s3:GetObject resource: one object, no wildcard.
    "hstInstallerUrl": (
        re.compile(r"^(?:https://[A-Za-z0-9.-]+(?::\d+)?/\S+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^*?\s]*[^*?\s/])$"),
        "must be an https:// URL or an s3://bucket/key of the HST Server .deb, naming one object with no wildcard",
    ),
    "alarmTopicArn": (re.compile(r"^arn:aws(?:-[a-z]+)*:sns:[a-z]{2}(?:-[a-z]+)+-\d:\d{12}:[A-Za-z0-9_-]{1,256}$"),
                      "must be the ARN of one SNS topic, like arn:aws:sns:eu-west-1:123456789012:ops-alarms"),
    # Named in the bucket policy as the only readers: a wildcard would widen who may read the data.
    "backupReaderArns": (re.compile(r"^arn:aws(?:-[a-z]+)*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"),
                         "must be the ARN of one IAM role, like arn:aws:iam::123456789012:role/redis-restore, "
                         "with no wildcard"),
}


class _Reader:
    """Reads raw config values (strings, as Pulumi hands them over) and records every problem."""

    def __init__(self, raw: Mapping[str, Any]):
        unknown = sorted(set(raw) - set(SCHEMA_BY_KEY))
        self.problems: list[str] = [
            f"{PROJECT}:{key}: unknown setting (known: see Pulumi.yaml `config:`)" for key in unknown
        ]
        self.raw = raw

    def fail(self, key: str, value: Any, rule: str) -> None:
        problem = f"{PROJECT}:{key} = {value!r}: {rule}"
        if problem not in self.problems:  # a value read twice is reported once
            self.problems.append(problem)

    def failed(self, *keys: str) -> bool:
        return any(p.startswith(f"{PROJECT}:{key} ") for p in self.problems for key in keys)

    def _value(self, key: str) -> Any:
        value = self.raw.get(key)
        return SCHEMA_BY_KEY[key].default if value is None else value

    def string(self, key: str) -> str:
        return str(self._value(key)).strip()

    def optional(self, key: str) -> str | None:
        return self.string(key) or None

    def integer(self, key: str, low: int | None = None, high: int | None = None) -> int:
        value = self._value(key)
        try:
            number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value).strip())
        except ValueError:
            self.fail(key, value, "must be a whole number")
            return int(SCHEMA_BY_KEY[key].default)
        if (low is not None and number < low) or (high is not None and number > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            self.fail(key, number, f"must be {bounds}")
        return number

    def boolean(self, key: str) -> bool:
        value = self._value(key)
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in ("true", "false"):
            return value if isinstance(value, bool) else text == "true"
        self.fail(key, value, "must be true or false")
        return bool(SCHEMA_BY_KEY[key].default)

    def array(self, key: str) -> tuple[str, ...]:
        value = self._value(key)
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return ()
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                # A bare comma-separated list is what people type on the command line.
                value = [part for part in text.split(",")]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            self.fail(key, value, 'must be a list of strings, e.g. ["a","b"]')
            return ()
        return tuple(v.strip() for v in value)


def subnet_cidrs(vpc_cidr: str, zones: int = ZONES) -> list[str]:
    """One subnet per zone, each a quarter of the VPC block (the fourth quarter stays free)."""
    return [str(net) for net in list(ipaddress.ip_network(vpc_cidr).subnets(prefixlen_diff=2))[:zones]]


def spread(node_count: int, subnets: int) -> list[int]:
    """Subnet index of each node: round-robin, so no subnet (zone) holds a majority of nodes."""
    return [i % subnets for i in range(node_count)]


def node_address_problems(ips: tuple[str, ...] | list[str], cidrs: list[str]) -> list[str]:
    """Why fixed node addresses cannot be used in these subnets (node i goes in subnet spread(i)).

    AWS keeps the first four addresses and the last of every subnet; an interface asking for one
    of them, or for an address outside its subnet, fails only when it is created."""
    problems = []
    for index, (ip, subnet) in enumerate(zip(ips, spread(len(ips), len(cidrs)), strict=True)):
        network = ipaddress.ip_network(cidrs[subnet])
        address = ipaddress.ip_address(ip)
        usable = f"{network.network_address + 4} to {network.broadcast_address - 1}"
        if address not in network:
            problems.append(f"{ip}: node-{index + 1} goes in subnet {cidrs[subnet]}, which does not hold it; "
                            f"give an address from {usable}")
        elif int(address) - int(network.network_address) < 4 or address == network.broadcast_address:
            problems.append(f"{ip}: AWS reserves the first four and the last address of subnet {cidrs[subnet]}; "
                            f"give an address from {usable}")
    return problems


def _node_count(r: _Reader) -> int:
    before = len(r.problems)
    node_count = r.integer("nodeCount", 3, MAX_NODES)
    if node_count % 2 == 0:
        r.fail("nodeCount", node_count, "must be odd so that a majority of Sentinels survives a partition")
    # Rules that depend on the node count are judged against the default rather than reported
    # as consequences of the one mistake already named.
    return node_count if len(r.problems) == before else int(SCHEMA_BY_KEY["nodeCount"].default)


def _check_formats(r: _Reader) -> None:
    for key, (pattern, rule) in _FORMATS.items():
        values = r.array(key) if SCHEMA_BY_KEY[key].type == "array" else tuple(v for v in (r.string(key),) if v)
        for value in values:
            if not pattern.fullmatch(value):
                r.fail(key, value, rule)
        if len(set(values)) != len(values):
            r.fail(key, list(values), "lists a value twice")


def _ports(r: _Reader) -> dict[str, int]:
    ports = {key: r.integer(key, 1024, 65535) for key in ("redisPort", "sentinelPort", "haproxyPort")}
    reserved = {"nodeApiPort (fixed)": NODE_API_PORT, "sshFaspPort (fixed)": SSH_FASP_PORT}
    seen: dict[int, str] = {}
    for key, port in {**ports, **reserved}.items():
        if port in seen:
            r.fail(key, port, f"clashes with {seen[port]}; every service needs its own port")
        seen.setdefault(port, key)
    return ports


def _sentinel(r: _Reader, node_count: int) -> dict[str, int]:
    quorum = r.integer("sentinelQuorum", 0)
    if quorum == 0:
        quorum = majority(node_count)
    elif quorum > node_count:
        r.fail("sentinelQuorum", quorum, f"must be from 1 to nodeCount ({node_count}), or 0 for a majority")
    down_after = r.integer("downAfterMs", 100, 600_000)
    failover_timeout = r.integer("failoverTimeoutMs", 1000, 3_600_000)
    if failover_timeout <= down_after:
        r.fail("failoverTimeoutMs", failover_timeout, f"must be longer than downAfterMs ({down_after})")
    elif failover_timeout > MAX_FAILOVER_TIMEOUT_MS:
        # Sentinels that split their leader vote (each votes for itself: they detect together by
        # design, 200 ms pings) retry after 2 x failover-timeout; until then there is no primary.
        r.fail("failoverTimeoutMs", failover_timeout,
               f"must be at most {MAX_FAILOVER_TIMEOUT_MS}: after a split leader vote Sentinel retries only after "
               "twice this, and the cluster has no primary until then")
    min_replicas = r.integer("minReplicasToWrite", 0)
    if min_replicas > node_count - 1:
        r.fail("minReplicasToWrite", min_replicas,
               f"must be at most nodeCount - 1 ({node_count - 1}) or the primary never accepts a write")
    # Without min-replicas-to-write every routing slip (a stale primary a client still reaches)
    # acknowledges writes the failover then discards: refused unless the loss is accepted by name.
    if min_replicas == 0 and str(r._value("acceptWriteLossOnFailover")).strip().lower() != "true":
        r.fail("minReplicasToWrite", 0, "lets a primary cut off from its replicas acknowledge writes the next failover "
               "discards; use 1 or more, or set acceptWriteLossOnFailover true to accept that loss")
    elif min_replicas == 0:
        warnings.warn("minReplicasToWrite 0 (acceptWriteLossOnFailover true): writes acknowledged by a paused, "
                      "cut-off or restarted old primary are lost at the next failover", stacklevel=2)
    return {
        "sentinel_quorum": quorum, "down_after_ms": down_after, "failover_timeout_ms": failover_timeout,
        "parallel_syncs": r.integer("parallelSyncs", 1, MAX_NODES), "min_replicas_to_write": min_replicas,
        "min_replicas_max_lag": r.integer("minReplicasMaxLag", 1, 3600),
    }


def _subnets(r: _Reader, node_count: int) -> tuple[str | None, tuple[str, ...]]:
    vpc_id, subnet_ids = r.optional("vpcId"), r.array("subnetIds")
    if vpc_id and not subnet_ids:
        r.fail("subnetIds", [],
               "must list the subnets of vpcId the nodes go in (at least 3, in distinct availability zones)")
    elif subnet_ids and not vpc_id:
        r.fail("vpcId", "", "must be set when subnetIds is set (the security group lives in that VPC)")
    elif len(subnet_ids) < ZONES and subnet_ids:
        # Nodes go round-robin; with fewer than 3 subnets one subnet holds a majority of nodes,
        # and losing its availability zone loses the Sentinel quorum.
        r.fail("subnetIds", list(subnet_ids),
               "must list at least 3 subnets in distinct availability zones, so that no zone holds a majority of nodes")
    elif len(subnet_ids) > node_count:
        r.fail("subnetIds", list(subnet_ids), f"lists more subnets than nodes ({node_count}); some would stay empty")
    return vpc_id, subnet_ids


def _vpc_cidr(r: _Reader) -> str:
    vpc_cidr = r.string("vpcCidr")
    try:
        vpc_net = ipaddress.ip_network(vpc_cidr, strict=True)
    except ValueError as exc:
        r.fail("vpcCidr", vpc_cidr, f"is not a CIDR block ({exc})")
        return vpc_cidr
    if vpc_net.version != 4 or not 16 <= vpc_net.prefixlen <= 22:
        r.fail("vpcCidr", vpc_cidr,
               "must be an IPv4 block from /16 to /22 (it is cut into three /24-or-larger subnets)")
    return vpc_cidr


def _node_ips(r: _Reader, node_count: int, new_vpc_cidr: str | None) -> tuple[str, ...]:
    """Fixed addresses; judged against the subnets when they are known now (a new VPC's are).
    An existing VPC's subnets are judged by the Network component once it has looked them up."""
    node_ips = r.array("nodePrivateIps")
    if not node_ips:
        return node_ips
    if len(node_ips) != node_count:
        r.fail("nodePrivateIps", list(node_ips), f"must list exactly nodeCount ({node_count}) addresses, or none")
    if len(set(node_ips)) != len(node_ips):
        r.fail("nodePrivateIps", list(node_ips), "lists an address twice")
    valid = True
    for ip in node_ips:
        try:
            if ipaddress.ip_address(ip).version != 4:
                raise ValueError("not IPv4")
        except ValueError:
            r.fail("nodePrivateIps", ip, "is not an IPv4 address")
            valid = False
    if valid and new_vpc_cidr:
        for problem in node_address_problems(node_ips, subnet_cidrs(new_vpc_cidr)):
            ip, rule = problem.split(": ", 1)
            r.fail("nodePrivateIps", ip, rule)
    return node_ips


def _cidrs(r: _Reader, key: str) -> tuple[str, ...]:
    cidrs = r.array(key)
    networks: list[ipaddress.IPv4Network] = []
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            r.fail(key, cidr, f"is not a CIDR block ({exc}); write it like 203.0.113.0/24")
            continue
        if not isinstance(network, ipaddress.IPv4Network):
            r.fail(key, cidr, "is IPv6; the cluster's VPC and rules are IPv4 only, "
                              "so name the IPv4 networks (like 203.0.113.0/24)")
            continue
        networks.append(network)
    # Judged as a union: 0.0.0.0/1 and 128.0.0.0/1 are the whole internet as surely as 0.0.0.0/0.
    union = list(ipaddress.collapse_addresses(networks))
    given: Any = str(networks[0]) if len(networks) == 1 else [str(n) for n in networks]
    if any(n.prefixlen == 0 for n in union):
        r.fail(key, given, "opens the port to the whole internet; name the networks that need it")
    elif _public_addresses(union) > 2**24:
        r.fail(key, given, "opens the port to more public addresses than a /8 together; name the networks that need it")
    return cidrs


_PRIVATE = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))


def _public_addresses(union: list[ipaddress.IPv4Network]) -> int:
    """Addresses outside the private ranges: a wide corporate network is fine, a wide slice of the
    internet is not. `union` is collapsed, so no address is counted twice."""
    def private_part(network: ipaddress.IPv4Network) -> int:
        return sum(min(network.num_addresses, p.num_addresses) for p in _PRIVATE if network.overlaps(p))
    return sum(n.num_addresses - private_part(n) for n in union)


def _hsts(r: _Reader) -> tuple[str | None, str | None, str | None, str | None]:
    installer = r.optional("hstInstallerUrl")
    licence = r.optional("hstLicenseSecretArn")
    password_setting = r.optional("hstRedisPasswordSetting")
    if installer and not licence:
        r.fail("hstLicenseSecretArn", "",
               "must be set when hstInstallerUrl is set (HST Server does not start unlicensed)")
    if installer and not password_setting:
        r.fail("hstRedisPasswordSetting", "",
               "must name the aspera.conf parameter for the Redis password when hstInstallerUrl is set; "
               "see README 'HST Server and the Redis password'")
    installer_sha256 = r.optional("hstInstallerSha256")
    if installer and not re.fullmatch(r"[0-9a-f]{64}", installer_sha256 or ""):
        r.fail("hstInstallerSha256", installer_sha256 or "",
               "must be the installer's SHA-256 as 64 lower-case hex digits when hstInstallerUrl is set "
               "(sha256sum FILE)")
    if (licence or password_setting) and not installer:
        r.fail("hstInstallerUrl", "", "must be set when hstLicenseSecretArn or hstRedisPasswordSetting is set")
    return installer, licence, password_setting, installer_sha256 if installer else None


def _check_expiry(text: str, now: datetime) -> None:
    expires_at = bearer_token.parse_expires_at(text, now)  # refuses the past and bad forms
    if expires_at - now > timedelta(hours=MAX_TOKEN_LIFETIME_HOURS):
        raise bearer_token.TokenError(
            f"--expires-at {text!r}: is more than 7 days ahead; a bootstrap token lives at most "
            f"{MAX_TOKEN_LIFETIME_HOURS} hours: give an expiry within 7 days, "
            "or leave it empty and set tokenLifetimeHours"
        )


def _check_token_ids(r: _Reader, users: tuple[str, ...], groups: tuple[str, ...]) -> None:
    if not users:
        r.fail("tokenUserIds", [], "must list at least one user id")
    for key, ids in (("tokenUserIds", users), ("tokenGroupIds", groups)):
        for bad in [i for i in ids if not _TOKEN_ID.fullmatch(i)]:
            r.fail(key, bad, _TOKEN_ID_RULE)
        if len(set(ids)) != len(ids):
            r.fail(key, list(ids), "lists an id twice")


def _parse_tokens(r: _Reader, now: datetime) -> TokenSettings:
    """The token rules are asnodeadmin's, enforced by the bearer-token module itself (only the key
    naming differs), plus ours: bounded ids, a capped lifetime, a document that fits its secret."""
    access_key, role, expires = r.string("accessKeyId"), r.string("tokenScopeRole"), r.optional("tokenExpiresAt")
    users, groups = r.array("tokenUserIds"), r.array("tokenGroupIds")
    bits = r.integer("tokenKeyLength")
    lifetime = r.integer("tokenLifetimeHours", 1, MAX_TOKEN_LIFETIME_HOURS)
    checks: list[tuple[str, object, Callable[[], object]]] = [
        ("accessKeyId", access_key, lambda: bearer_token.validate_access_key(access_key)),
        ("tokenScopeRole", role, lambda: bearer_token.validate_scope_role(role)),
        ("tokenKeyLength", bits, lambda: bearer_token.validate_key_length(bits)),
    ]
    if expires:
        checks.append(("tokenExpiresAt", expires, lambda: _check_expiry(expires, now)))
    for key, value, check in checks:
        try:
            check()
        except bearer_token.TokenError as error:
            for problem in error.problems:
                r.fail(key, value, problem.split(": ", 1)[-1])
    _check_token_ids(r, users, groups)
    tokens = TokenSettings(access_key, users, groups, role, expires, bits, lifetime)
    if not r.failed("accessKeyId", "tokenUserIds", "tokenGroupIds", "tokenKeyLength"):
        size = token_document_bound(tokens)
        if size > MAX_DOCUMENT_BYTES:
            r.fail("tokenUserIds", f"{len(users)} user ids", f"their tokens need up to {size} bytes with RSA-{bits} "
                   f"signatures, over Secrets Manager's {MAX_DOCUMENT_BYTES}-byte limit for one secret; "
                   "list fewer user ids (or shorten tokenKeyLength or tokenGroupIds)")
    return tokens


def _packages(r: _Reader, aws: bool) -> bool:
    """Whether the AMI holds the packages; on AWS, refuses a cluster whose nodes could not get them."""
    baked = r.boolean("amiHasPackages")
    if baked and not r.optional("amiId") and not r.failed("amiId"):
        r.fail("amiHasPackages", True, "needs amiId: without it the nodes boot the stock Ubuntu 24.04 image, which "
               "has none of the packages; set amiId to your baked image, or set amiHasPackages false and name your "
               "package mirror in packageMirrorPrefixListIds")
    mirrors = r.array("packageMirrorPrefixListIds")
    if aws and not baked and not mirrors and not r.failed("packageMirrorPrefixListIds"):
        r.fail("packageMirrorPrefixListIds", list(mirrors),
               "the nodes install their packages at first boot, but their egress is closed (they reach only the "
               "VPC endpoints), so they could never start; name the managed prefix list (pl-...) of your package "
               "mirror or proxy here, or bake the packages into an AMI, set amiId to it and amiHasPackages true")
    return baked


def parse_settings(raw: Mapping[str, Any], now: datetime | None = None, aws: bool = False) -> ClusterSettings:
    """Build `ClusterSettings` from raw config values keyed by camelCase name.

    `aws`: also refuse what only an AWS deploy cannot work with (the local target and the drills
    share the other rules). Raises `SettingsError` listing every problem."""
    now = now or datetime.now(UTC)
    r = _Reader(raw)
    node_count = _node_count(r)
    _check_formats(r)
    ports = _ports(r)
    sentinel = _sentinel(r, node_count)
    vpc_id, subnet_ids = _subnets(r, node_count)
    vpc_cidr = _vpc_cidr(r)
    node_ips = _node_ips(r, node_count, None if vpc_id or r.failed("vpcCidr") else vpc_cidr)
    admin_cidrs, transfer_cidrs = _cidrs(r, "adminCidrs"), _cidrs(r, "transferCidrs")
    metrics_cidrs = _cidrs(r, "metricsCidrs")
    backup_interval = r.integer("backupIntervalMinutes", 0, 10080)
    if 0 < backup_interval < 15:
        r.fail("backupIntervalMinutes", backup_interval, "must be 0 (no snapshots) or from 15 to 10080 (a week)")
    lag_alarm = r.integer("replicationLagAlarmSeconds", 1, 3600)
    retention = r.integer("backupRetentionDays", 1, 3650)
    installer, licence, password_setting, installer_sha256 = _hsts(r)
    ami_has_packages = _packages(r, aws)
    tls_enabled = r.boolean("tlsEnabled")
    tokens = _parse_tokens(r, now)
    recovery = r.integer("secretRecoveryWindowDays")
    try:
        validate_recovery_window(recovery)
    except SecretStoreError as error:
        r.fail("secretRecoveryWindowDays", recovery, str(error).split(": ", 1)[-1])

    if r.problems:
        raise SettingsError(r.problems)
    return ClusterSettings(
        node_count=node_count,
        instance_type=r.string("instanceType"),
        ami_id=r.optional("amiId"),
        vpc_id=vpc_id,
        subnet_ids=subnet_ids,
        vpc_cidr=vpc_cidr,
        node_private_ips=node_ips,
        admin_cidrs=admin_cidrs,
        transfer_cidrs=transfer_cidrs,
        package_mirror_prefix_list_ids=r.array("packageMirrorPrefixListIds"),
        ami_has_packages=ami_has_packages,
        redis_port=ports["redisPort"],
        sentinel_port=ports["sentinelPort"],
        haproxy_port=ports["haproxyPort"],
        master_name=r.string("masterName"),
        tls_enabled=tls_enabled,
        **sentinel,
        hst_installer_url=installer,
        hst_installer_sha256=installer_sha256,
        hst_license_secret_arn=licence,
        hst_redis_password_setting=password_setting,
        tokens=tokens,
        secret_recovery_window_days=recovery,
        metrics_cidrs=metrics_cidrs,
        alarm_topic_arn=r.optional("alarmTopicArn"),
        replication_lag_alarm_seconds=lag_alarm,
        backup_interval_minutes=backup_interval,
        backup_retention_days=retention,
        backup_reader_arns=r.array("backupReaderArns"),
    )


ConfigGetter = Callable[[str], Any]


def read_settings(get: ConfigGetter, now: datetime | None = None) -> ClusterSettings:
    """Read every schema key through `get` (e.g. `pulumi.Config().get`) and validate, for an AWS deploy."""
    return parse_settings({spec.key: get(spec.key) for spec in SETTINGS_SCHEMA}, now=now, aws=True)
