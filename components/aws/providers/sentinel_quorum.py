"""`SentinelQuorum`: `pulumi up` fails unless the Sentinel set is failover-ready.

A thin adapter over `components.runtime.quorum`: create and update verify, and their outputs record
what was verified (`QuorumReport.to_dict()`); delete does nothing (there is nothing to undo).
Verification re-runs when the node set or the Sentinel settings change, never on a no-op `up`.

Two ways to reach the Sentinels, one judge:
- `via="direct"`: connect from where `pulumi up` runs (the local target, or a runner attached to
  the cluster's security group). The password is read here, inside the method, from its store.
- `via="ssm"` (the AWS default): the security group admits the Sentinel port only between cluster
  members, so one node asks on our behalf through SSM Run Command (`ssm_probe`), reading the
  password with its own instance role. The provider never sees the password on this path.

The password is never an input or an output: inputs name where it is (a secret ARN or a file).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import redis
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components.aws.cloud_config import aws_layout
from components.aws.providers._common import PROVIDER_VERSION, as_int, build_store, changed_keys, is_unknown
from components.bundle.users import MONITOR, parse_secret
from components.runtime import quorum, ssm_probe
from components.runtime.secret_store import SecretRef

__all__ = ["SentinelQuorum", "SentinelQuorumArgs", "SentinelQuorumProvider", "VIAS"]

VIAS = ("direct", "ssm")
# One SSM round trip must leave time for another attempt before the overall timeout.
SSM_ATTEMPT_S = 90.0


def _endpoint(text: str) -> tuple[str, int]:
    host, port = str(text).rsplit(":", 1)
    return host, int(port)


def _read_password(source: Mapping[str, Any]) -> str:
    """Inside the method only: the monitoring role's password (the probe only reads), from the Redis
    users' secret in a secret store or a 0600 file, never an input value."""
    kind = source.get("kind")
    if kind == "file":
        try:
            text = Path(str(source["path"])).read_text()
        except OSError as error:
            raise quorum.QuorumError(
                f"cannot read the Redis users' secret file {source['path']}: {error.strerror}", ()
            ) from None
    else:
        store = build_store({"kind": "aws", "region": source.get("region")} if kind == "aws" else source)
        secret_id = str(source["secret_id"])
        ref = SecretRef(arn=secret_id, version_id="", name=secret_id) if kind == "aws" else SecretRef("", "", secret_id)
        text = store.get(ref)
    try:
        return parse_secret(text)[MONITOR.key]
    except ValueError as error:
        raise quorum.QuorumError(str(error), ()) from None


def _password_problems(source: Any) -> list[str]:
    if is_unknown(source):
        return []
    if not isinstance(source, Mapping):
        return ["must be {kind: aws, secret_id, region}, {kind: local, root, secret_id} or {kind: file, path}"]
    kind = source.get("kind")
    needed = {"aws": ("secret_id", "region"), "local": ("root", "secret_id"), "file": ("path",)}.get(str(kind))
    if needed is None:
        return [f"kind {kind!r}: must be aws, local or file"]
    return [f"kind {kind} needs {key}" for key in needed if not source.get(key)]


def _progress(message: str) -> None:
    # The provider host has no engine connection: pulumi.log writes to its stderr.
    pulumi.log.info(f"SentinelQuorum: {message}")


class SentinelQuorumProvider(ResourceProvider):
    """Verifies in create and update; diff asks for an update only when what is verified changed
    (not, say, the timeout), so a no-op `up` contacts nothing."""

    REVERIFY_ON = (
        "sentinels", "servers", "master_name", "expected_nodes", "allow_missing_sentinels", "instance_ids",
        "sentinel_settings", "haproxy_endpoints", "via", "password", "region", "provider_version",
    )

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [CheckFailure("password", p) for p in _password_problems(news.get("password"))]
        via = news.get("via", "ssm")
        if not is_unknown(via) and via not in VIAS:
            failures.append(CheckFailure("via", f"{via!r}: must be one of {', '.join(VIAS)}"))
        sentinels = news.get("sentinels")
        if not is_unknown(sentinels):
            if not sentinels:
                failures.append(CheckFailure("sentinels", "must list at least one host:port"))
            for text in sentinels or ():
                try:
                    _endpoint(text)
                except (TypeError, ValueError):
                    failures.append(CheckFailure("sentinels", f"{text!r}: must be host:port"))
        password = news.get("password")
        if via == "ssm" and not is_unknown(password) and (password or {}).get("kind") != "aws":
            failures.append(CheckFailure("password", "via ssm reads the password on the node: it must be kind aws"))
        if as_int(news.get("timeout_s"), 1) <= 0:
            failures.append(CheckFailure("timeout_s", "must be positive"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # An unknown instance id means an instance is being created or replaced: verify again.
        return DiffResult(changes=bool(changed_keys(olds, news, self.REVERIFY_ON)))

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"quorum-{props['master_name']}", outs={**props, **self._verify(props)})

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, **self._verify(news)})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Verification leaves nothing behind."""

    def _verify(self, props: Mapping[str, Any]) -> dict[str, Any]:
        sentinels = [_endpoint(s) for s in props["sentinels"]]
        expected = as_int(props["expected_nodes"])
        allow_missing = as_int(props.get("allow_missing_sentinels"))
        timeout_s = float(props.get("timeout_s") or 600)
        if props.get("via", "ssm") == "direct":
            report = quorum.verify_quorum(
                sentinels, str(props["master_name"]), _read_password(props["password"]), expected,
                timeout_s=timeout_s, progress=_progress,
                haproxy_endpoints=[_endpoint(h) for h in props.get("haproxy_endpoints") or ()],
                allow_missing_sentinels=allow_missing,
                # tlsEnabled, when this machine reaches the nodes itself: the CA file it verifies them with.
                tls_ca_file=str(props.get("tls_ca_file") or "") or None,
            )
            return {"report": report.to_dict(), "probe_instance": ""}
        return self._verify_via_ssm(props, sentinels, expected, allow_missing, timeout_s)

    def _verify_via_ssm(
        self,
        props: Mapping[str, Any],
        sentinels: list[tuple[str, int]],
        expected: int,
        allow_missing: int,
        timeout_s: float,
    ) -> dict[str, Any]:
        password = props["password"]
        region = str(props.get("region") or password["region"])
        instances = [str(i) for i in props.get("instance_ids") or ()]
        if not instances:
            raise quorum.QuorumError("via ssm needs the nodes' instance ids", ())
        # The node's own way to the monitoring password (its scripts'), run by the node with its role.
        layout = aws_layout(str(password["secret_id"]), str(password["region"]))
        password_command = f"{layout.secret_script} {MONITOR.key}"
        haproxy = list(props.get("haproxy_endpoints") or ())[:1]  # the probing node's own HAProxy
        script = ssm_probe.render_probe_script(
            list(props["sentinels"]), list(props.get("servers") or ()), str(props["master_name"]),
            password_command, haproxy[0] if haproxy else None,
            # tlsEnabled: the node's CA file (written by its boot script) for the Sentinels and Redis.
            layout.tls_ca_file if props.get("tls_enabled") else None,
        )
        deadline = time.monotonic() + timeout_s
        turns = itertools.cycle(instances)
        answered: list[str] = []

        def observe(_socket_timeout: float) -> quorum.Observation:
            # Ask from the next node each time: one whose agent is not up yet does not stall us.
            instance = next(turns)
            try:
                encoded = ssm_probe.run_probe(instance, region, script, min(deadline, time.monotonic() + SSM_ATTEMPT_S))
                output = ssm_probe.parse_probe_output(encoded)
            except ssm_probe.ProbeError as error:
                raise quorum.ObservationError(str(error)) from None
            answered.append(instance)
            return ssm_observation(output, props)

        report = quorum.verify_observed(
            observe, sentinels, str(props["master_name"]), expected, timeout_s=timeout_s, progress=_progress,
            allow_missing_sentinels=allow_missing,
        )
        return {"report": report.to_dict(), "probe_instance": answered[-1]}


def ssm_observation(output: ssm_probe.ProbeOutput, props: Mapping[str, Any]) -> quorum.Observation:
    """The probe's answers in the shape `quorum.judge` reads, exactly as redis-py would give them."""
    replies = []
    for endpoint in props["sentinels"]:
        answers = {name: output.sentinel(endpoint, name) for name, _ in ssm_probe.SENTINEL_COMMANDS}
        # A connection or AUTH failure hits every call alike: one failure, as redis-py raises at connect.
        failure = next(
            (a for a in answers.values()
             if isinstance(a, (redis.ConnectionError, redis.TimeoutError, ssm_probe.ProbeError))),
            None,
        ) or next(
            (a for a in answers.values()
             if isinstance(a, redis.ResponseError) and "without any password configured" in str(a)),
            None,
        )
        replies.append(quorum.SentinelReplies(endpoint=endpoint, failure=failure, **({} if failure else answers)))
    return quorum.Observation(
        sentinels=replies, info=output.info,
        haproxy_endpoints=tuple(_endpoint(h) for h in list(props.get("haproxy_endpoints") or ())[:1]),
    )


@dataclass
class SentinelQuorumArgs:
    sentinels: Sequence[str]  # host:port of every Sentinel
    servers: Sequence[str]  # host:port of every Redis (the SSM probe asks each for INFO)
    master_name: str
    expected_nodes: int
    # Where the Redis password is: {kind: aws, secret_id, region} | {kind: file, path}.
    password: pulumi.Input[Mapping[str, Any]]
    instance_ids: pulumi.Input[Sequence[str]] = field(default_factory=list)  # re-verify when any node is replaced
    via: str = "ssm"
    region: pulumi.Input[str] | None = None
    haproxy_endpoints: Sequence[str] = ()  # as seen from where the probe runs (the node, for ssm)
    sentinel_settings: Mapping[str, Any] = field(default_factory=dict)  # quorum, down-after, ...: re-verify on change
    allow_missing_sentinels: int = 0
    timeout_s: float = 600
    # tlsEnabled: the nodes' Redis and Sentinel ports speak TLS only. Via ssm the probe verifies them with
    # the node's own CA file; direct, with `tls_ca_file` on this machine.
    tls_enabled: bool = False
    tls_ca_file: str | None = None


class SentinelQuorum(Resource, module="hstha", name="SentinelQuorum"):
    """Proof that the Sentinel set is failover-ready; `report` says what was verified."""

    report: pulumi.Output[dict[str, Any]]
    probe_instance: pulumi.Output[str]

    def __init__(self, name: str, args: SentinelQuorumArgs, opts: pulumi.ResourceOptions | None = None):
        props = {
            "sentinels": list(args.sentinels),
            "servers": list(args.servers),
            "master_name": args.master_name,
            "expected_nodes": args.expected_nodes,
            "password": args.password,
            "instance_ids": args.instance_ids,
            "via": args.via,
            "region": args.region,
            "haproxy_endpoints": list(args.haproxy_endpoints),
            "sentinel_settings": dict(args.sentinel_settings),
            "allow_missing_sentinels": args.allow_missing_sentinels,
            "timeout_s": args.timeout_s,
            "tls_enabled": args.tls_enabled,
            "tls_ca_file": args.tls_ca_file,
            "provider_version": PROVIDER_VERSION,
            "report": None,
            "probe_instance": None,
        }
        super().__init__(SentinelQuorumProvider(), name, props, opts)
