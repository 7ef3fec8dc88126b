"""Typed, validated cluster settings, built from stack config (or the local target's options).

Pure Python: no Pulumi import, so the AWS program, the local target and the tests share it.
`SETTINGS_SCHEMA` is the one list of keys; `Pulumi.yaml` and the README are checked against it.
Every bad value is reported at once, before any resource is registered.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from components.runtime import bearer_token
from components.runtime.secret_store import SecretStoreError, validate_recovery_window

PROJECT = "hst-ha"

# Ports of the design contract that are not configurable (the Node API and SSH/FASP are HSTS's own).
NODE_API_PORT = 9092
SSH_FASP_PORT = 33001
MAX_NODES = 15


@dataclass(frozen=True)
class SettingSpec:
    key: str
    type: str  # Pulumi.yaml config type: string | integer | boolean | array
    default: Any
    description: str


SETTINGS_SCHEMA: tuple[SettingSpec, ...] = (
    SettingSpec("nodeCount", "integer", 3, "Number of nodes; odd, at least 3 (a Sentinel majority must survive one loss)."),
    SettingSpec("instanceType", "string", "t3.medium", "EC2 instance type of every node."),
    SettingSpec("amiId", "string", "", "AMI of the nodes; empty means the current Ubuntu 24.04 LTS image, looked up once at deploy time."),
    SettingSpec("vpcId", "string", "", "Existing VPC to deploy into; empty creates a new VPC with one subnet in each of 3 availability zones."),
    SettingSpec("subnetIds", "array", [], "Subnets of vpcId the nodes are spread over (round-robin); at least 3, in distinct availability zones."),
    SettingSpec("vpcCidr", "string", "10.42.0.0/16", "CIDR of the VPC created when vpcId is empty."),
    SettingSpec("nodePrivateIps", "array", [], "Fixed private IPs of the nodes, in node order; empty derives them from the subnets' CIDRs (host .10 upwards)."),
    SettingSpec("adminCidrs", "array", [], "CIDRs allowed to reach SSH (33001/tcp) and the Node API (9092); none by default (use SSM Session Manager)."),
    SettingSpec("transferCidrs", "array", [], "CIDRs allowed to transfer over FASP (33001/tcp and udp); none by default."),
    SettingSpec("redisPort", "integer", 31415, "Redis port on every node's private IP (HSTS default)."),
    SettingSpec("sentinelPort", "integer", 41415, "Redis Sentinel port on every node's private IP (HSTS 4.4 default)."),
    SettingSpec("haproxyPort", "integer", 31414, "HAProxy port, bound to 127.0.0.1 only; HST Server's db_port."),
    SettingSpec("masterName", "string", "myprimary", "Name of the primary set the Sentinels monitor."),
    SettingSpec("sentinelQuorum", "integer", 0, "Sentinels that must agree the primary is down; 0 means a majority of nodeCount."),
    SettingSpec("downAfterMs", "integer", 5000, "Milliseconds without a valid reply before a Sentinel considers the primary down."),
    SettingSpec("failoverTimeoutMs", "integer", 60000, "Sentinel failover-timeout in milliseconds (a failed failover is retried after twice this)."),
    SettingSpec("parallelSyncs", "integer", 1, "Replicas resynchronised at once after a failover."),
    SettingSpec("minReplicasToWrite", "integer", 1, "The primary refuses writes unless this many replicas are connected and recent (0 disables)."),
    SettingSpec("minReplicasMaxLag", "integer", 10, "Seconds since a replica's last acknowledgement for it to count towards minReplicasToWrite."),
    SettingSpec("hstInstallerUrl", "string", "", "URL of your HST Server .deb installer; empty means the nodes run the Redis backend only."),
    SettingSpec("hstInstallerSha256", "string", "", "SHA-256 (64 hex digits) of the HST Server installer; required with hstInstallerUrl: a node installs nothing else."),
    SettingSpec("hstLicenseSecretArn", "string", "", "Secrets Manager ARN holding your HST Server licence text; required with hstInstallerUrl."),
    SettingSpec("hstRedisPasswordSetting", "string", "", "aspera.conf server_data parameter that carries the Redis password to HST Server (find it with `asuserdata -a | grep -i db_`); required with hstInstallerUrl."),
    SettingSpec("accessKeyId", "string", "hst-ha-bootstrap", "Node API access key the bootstrap bearer tokens are scoped to."),
    SettingSpec("tokenUserIds", "array", ["admin"], "One bootstrap bearer token is minted for each of these user ids."),
    SettingSpec("tokenGroupIds", "array", [], "Group ids carried by every bootstrap bearer token."),
    SettingSpec("tokenScopeRole", "string", "admin", "Scope role of the bootstrap bearer tokens: admin or user."),
    SettingSpec("tokenExpiresAt", "string", "", "Expiry of the bootstrap bearer tokens in UTC (2030-01-01T00:00:00Z); empty means 1 hour after minting."),
    SettingSpec("tokenKeyLength", "integer", 4096, "RSA signing key length in bits: a power of 2 from 1024 to 16384."),
    SettingSpec("secretRecoveryWindowDays", "integer", 7, "Days Secrets Manager keeps a deleted secret recoverable: 0 (delete at once) or 7 to 30."),
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
    expires_at: str | None
    key_length: int


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
    redis_port: int = 31415
    sentinel_port: int = 41415
    haproxy_port: int = 31414
    master_name: str = "myprimary"
    sentinel_quorum: int = 2
    down_after_ms: int = 5000
    failover_timeout_ms: int = 60000
    parallel_syncs: int = 1
    min_replicas_to_write: int = 1
    min_replicas_max_lag: int = 10
    hst_installer_url: str | None = None
    hst_installer_sha256: str | None = None
    hst_license_secret_arn: str | None = None
    hst_redis_password_setting: str | None = None
    tokens: TokenSettings = field(
        default_factory=lambda: TokenSettings("hst-ha-bootstrap", ("admin",), (), "admin", None, 4096)
    )
    secret_recovery_window_days: int = 7

    @property
    def hst_enabled(self) -> bool:
        return self.hst_installer_url is not None

    @property
    def sentinel_majority(self) -> int:
        return self.node_count // 2 + 1


def majority(node_count: int) -> int:
    return node_count // 2 + 1


_MASTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ASPERA_SETTING = re.compile(r"^[a-z][a-z0-9_]*$")


class _Reader:
    """Reads raw config values (strings, as Pulumi hands them over) and records every problem."""

    def __init__(self, raw: Mapping[str, Any]):
        unknown = sorted(set(raw) - set(SCHEMA_BY_KEY))
        self.problems: list[str] = [
            f"{PROJECT}:{key}: unknown setting (known: see Pulumi.yaml `config:`)" for key in unknown
        ]
        self.raw = raw

    def fail(self, key: str, value: Any, rule: str) -> None:
        self.problems.append(f"{PROJECT}:{key} = {value!r}: {rule}")

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


def _check_cidrs(reader: _Reader, key: str, cidrs: tuple[str, ...]) -> None:
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            reader.fail(key, cidr, f"is not a CIDR block ({exc}); write it like 203.0.113.0/24")
            continue
        if network.prefixlen == 0:
            reader.fail(key, cidr, "opens the port to the whole internet; name the networks that need it")


def parse_settings(raw: Mapping[str, Any], now: datetime | None = None) -> ClusterSettings:
    """Build `ClusterSettings` from raw config values keyed by camelCase name; raise `SettingsError` listing every problem."""
    now = now or datetime.now(timezone.utc)
    r = _Reader(raw)

    problems_before = len(r.problems)
    node_count = r.integer("nodeCount", 3, MAX_NODES)
    if node_count % 2 == 0:
        r.fail("nodeCount", node_count, "must be odd so that a majority of Sentinels survives a partition")
    if len(r.problems) > problems_before:
        # Rules that depend on the node count are judged against the default rather than
        # reported as consequences of the one mistake already named.
        node_count = int(SCHEMA_BY_KEY["nodeCount"].default)

    ports = {key: r.integer(key, 1024, 65535) for key in ("redisPort", "sentinelPort", "haproxyPort")}
    reserved = {"nodeApiPort (fixed)": NODE_API_PORT, "sshFaspPort (fixed)": SSH_FASP_PORT}
    seen: dict[int, str] = {}
    for key, port in {**ports, **reserved}.items():
        if port in seen:
            r.fail(key, port, f"clashes with {seen[port]}; every service needs its own port")
        seen.setdefault(port, key)

    master_name = r.string("masterName")
    if not _MASTER_NAME.match(master_name):
        r.fail("masterName", master_name, "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")

    quorum = r.integer("sentinelQuorum", 0)
    if quorum == 0:
        quorum = majority(node_count)
    elif quorum > node_count:
        r.fail("sentinelQuorum", quorum, f"must be from 1 to nodeCount ({node_count}), or 0 for a majority")

    down_after = r.integer("downAfterMs", 100, 600_000)
    failover_timeout = r.integer("failoverTimeoutMs", 1000, 3_600_000)
    if failover_timeout <= down_after:
        r.fail("failoverTimeoutMs", failover_timeout, f"must be longer than downAfterMs ({down_after})")
    parallel_syncs = r.integer("parallelSyncs", 1, MAX_NODES)
    min_replicas = r.integer("minReplicasToWrite", 0)
    if min_replicas > node_count - 1:
        r.fail("minReplicasToWrite", min_replicas, f"must be at most nodeCount - 1 ({node_count - 1}) or the primary never accepts a write")
    max_lag = r.integer("minReplicasMaxLag", 1, 3600)

    vpc_id = r.optional("vpcId")
    subnet_ids = r.array("subnetIds")
    if vpc_id and not vpc_id.startswith("vpc-"):
        r.fail("vpcId", vpc_id, "must be a VPC id like vpc-0123456789abcdef0")
    for subnet in subnet_ids:
        if not subnet.startswith("subnet-"):
            r.fail("subnetIds", subnet, "must be a subnet id like subnet-0123456789abcdef0")
    if vpc_id and not subnet_ids:
        r.fail("subnetIds", [], "must list the subnets of vpcId the nodes go in (at least 3, in distinct availability zones)")
    elif subnet_ids and not vpc_id:
        r.fail("vpcId", "", "must be set when subnetIds is set (the security group lives in that VPC)")
    elif subnet_ids:
        if len(set(subnet_ids)) != len(subnet_ids):
            r.fail("subnetIds", list(subnet_ids), "lists a subnet twice")
        # Nodes go round-robin; with fewer than 3 subnets one subnet holds a majority of nodes,
        # and losing its availability zone loses the Sentinel quorum.
        if len(subnet_ids) < 3:
            r.fail("subnetIds", list(subnet_ids), "must list at least 3 subnets in distinct availability zones, so that no zone holds a majority of nodes")
        elif len(subnet_ids) > node_count:
            r.fail("subnetIds", list(subnet_ids), f"lists more subnets than nodes ({node_count}); some would stay empty")

    vpc_cidr = r.string("vpcCidr")
    try:
        vpc_net = ipaddress.ip_network(vpc_cidr, strict=True)
        if vpc_net.version != 4 or not 16 <= vpc_net.prefixlen <= 22:
            r.fail("vpcCidr", vpc_cidr, "must be an IPv4 block from /16 to /22 (it is cut into three /24-or-larger subnets)")
    except ValueError as exc:
        r.fail("vpcCidr", vpc_cidr, f"is not a CIDR block ({exc})")

    node_ips = r.array("nodePrivateIps")
    if node_ips:
        if len(node_ips) != node_count:
            r.fail("nodePrivateIps", list(node_ips), f"must list exactly nodeCount ({node_count}) addresses, or none")
        for ip in node_ips:
            try:
                if ipaddress.ip_address(ip).version != 4:
                    raise ValueError("not IPv4")
            except ValueError:
                r.fail("nodePrivateIps", ip, "is not an IPv4 address")
        if len(set(node_ips)) != len(node_ips):
            r.fail("nodePrivateIps", list(node_ips), "lists an address twice")

    admin_cidrs = r.array("adminCidrs")
    transfer_cidrs = r.array("transferCidrs")
    _check_cidrs(r, "adminCidrs", admin_cidrs)
    _check_cidrs(r, "transferCidrs", transfer_cidrs)

    installer = r.optional("hstInstallerUrl")
    licence = r.optional("hstLicenseSecretArn")
    password_setting = r.optional("hstRedisPasswordSetting")
    if installer and not installer.startswith(("https://", "s3://")):
        r.fail("hstInstallerUrl", installer, "must be an https:// or s3:// URL of the HST Server .deb")
    if installer and not licence:
        r.fail("hstLicenseSecretArn", "", "must be set when hstInstallerUrl is set (HST Server does not start unlicensed)")
    if licence and not licence.startswith("arn:"):
        r.fail("hstLicenseSecretArn", licence, "must be a Secrets Manager ARN (arn:aws:secretsmanager:...)")
    if installer and not password_setting:
        r.fail("hstRedisPasswordSetting", "", "must name the aspera.conf parameter for the Redis password when hstInstallerUrl is set; see README 'HST Server and the Redis password'")
    if password_setting and not _ASPERA_SETTING.match(password_setting):
        r.fail("hstRedisPasswordSetting", password_setting, "must be an aspera.conf parameter name (lower case, digits, '_')")
    installer_sha256 = r.optional("hstInstallerSha256")
    if installer and not re.fullmatch(r"[0-9a-f]{64}", installer_sha256 or ""):
        r.fail("hstInstallerSha256", installer_sha256 or "",
               "must be the installer's SHA-256 as 64 lower-case hex digits when hstInstallerUrl is set (sha256sum FILE)")
    if (licence or password_setting) and not installer:
        r.fail("hstInstallerUrl", "", "must be set when hstLicenseSecretArn or hstRedisPasswordSetting is set")

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
        redis_port=ports["redisPort"],
        sentinel_port=ports["sentinelPort"],
        haproxy_port=ports["haproxyPort"],
        master_name=master_name,
        sentinel_quorum=quorum,
        down_after_ms=down_after,
        failover_timeout_ms=failover_timeout,
        parallel_syncs=parallel_syncs,
        min_replicas_to_write=min_replicas,
        min_replicas_max_lag=max_lag,
        hst_installer_url=installer,
        hst_installer_sha256=installer_sha256 if installer else None,
        hst_license_secret_arn=licence,
        hst_redis_password_setting=password_setting,
        tokens=tokens,
        secret_recovery_window_days=recovery,
    )


def _parse_tokens(r: _Reader, now: datetime) -> TokenSettings:
    """The token rules are asnodeadmin's, enforced by the bearer-token module itself; only the
    key naming differs (stack config key instead of command-line option)."""
    values = {
        "accessKeyId": r.string("accessKeyId"),
        "tokenUserIds": r.array("tokenUserIds"),
        "tokenGroupIds": r.array("tokenGroupIds"),
        "tokenScopeRole": r.string("tokenScopeRole"),
        "tokenExpiresAt": r.optional("tokenExpiresAt"),
        "tokenKeyLength": r.integer("tokenKeyLength"),
    }
    checks: dict[str, Callable[[], object]] = {
        "accessKeyId": lambda: bearer_token.validate_access_key(values["accessKeyId"]),
        "tokenUserIds": lambda: [bearer_token.validate_user_id(u) for u in values["tokenUserIds"] or ("",)],
        "tokenGroupIds": lambda: bearer_token.validate_group_ids(values["tokenGroupIds"]),
        "tokenScopeRole": lambda: bearer_token.validate_scope_role(values["tokenScopeRole"]),
        "tokenExpiresAt": lambda: values["tokenExpiresAt"] and bearer_token.parse_expires_at(values["tokenExpiresAt"], now),
        "tokenKeyLength": lambda: bearer_token.validate_key_length(values["tokenKeyLength"]),
    }
    for key, check in checks.items():
        try:
            check()
        except bearer_token.TokenError as error:
            for problem in error.problems:
                r.fail(key, values[key], problem.split(": ", 1)[-1])
    return TokenSettings(
        values["accessKeyId"], values["tokenUserIds"], values["tokenGroupIds"], values["tokenScopeRole"],
        values["tokenExpiresAt"], values["tokenKeyLength"],
    )


ConfigGetter = Callable[[str], Any]


def read_settings(get: ConfigGetter, now: datetime | None = None) -> ClusterSettings:
    """Read every schema key through `get` (e.g. `pulumi.Config().get`) and validate."""
    return parse_settings({spec.key: get(spec.key) for spec in SETTINGS_SCHEMA}, now=now)
