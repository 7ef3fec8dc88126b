"""Observe the Sentinels from inside the cluster, through AWS Systems Manager Run Command.

The security group opens the Sentinel and Redis ports only between cluster members, so a
`pulumi up` on an operator's laptop cannot ask the Sentinels anything. Instead one node asks:
`AWS-RunShellScript` runs `redis-cli --json` there against every Sentinel, every Redis and the
node's own HAProxy, and sends the answers back. The provider then judges them with the very code
`verify_quorum` uses (`components.runtime.quorum`), so "ready" means the same on every path.

The node reads the Redis password with its own password command (the boot script's, through its
instance role) into `REDISCLI_AUTH`; it is never on a command line, in the command sent to SSM,
or in the output. The output is gzipped and base64-encoded: SSM returns at most 24,000 characters
of a command's output, and the raw answers of a 5-node cluster are already larger.

Pure module apart from boto3, which is imported and used inside `run_probe` and its helpers only.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import shlex
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis._parsers.helpers import parse_info

from components.bundle.users import MONITOR

__all__ = [
    "ProbeError",
    "ProbeOutput",
    "SENTINEL_COMMANDS",
    "parse_probe_output",
    "render_probe_script",
    "run_probe",
]

SSM_OUTPUT_LIMIT = 24_000  # characters of StandardOutputContent GetCommandInvocation returns
PER_CALL_TIMEOUT_S = 5
POLL_S = 1.0  # between GetCommandInvocation calls
MARK = "@@hst-ha"
PROBE_SCRIPT = "ssm-probe.sh"  # in files/, package data

# What verify_quorum asks each Sentinel, by the reply names the judge uses.
SENTINEL_COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("addr", ("SENTINEL", "GET-MASTER-ADDR-BY-NAME")),
    ("master", ("SENTINEL", "MASTER")),
    ("replicas", ("SENTINEL", "REPLICAS")),
    ("others", ("SENTINEL", "SENTINELS")),
    ("ckquorum", ("SENTINEL", "CKQUORUM")),
)


class ProbeError(RuntimeError):
    """The probe could not run or its output could not be read; says what to check. No secret inside."""


def render_probe_script(
    sentinels: Sequence[str],
    servers: Sequence[str],
    master_name: str,
    password_command: str,
    haproxy: str | None = None,
    tls_ca_file: str | None = None,
) -> str:
    """The bash script one node runs: `files/ssm-probe.sh` with this call's values set in a header
    after its first line, each quoted for the shell. Endpoints are host:port; `servers` are the
    Redis nodes, whose INFO the judge reads once it knows which one the Sentinels name; `haproxy`
    is the node's own. `password_command` prints the monitoring password on the node. With
    `tls_ca_file` (the node's CA file under tlsEnabled) the Sentinels and Redis nodes are asked over
    TLS; the node's HAProxy, plaintext on loopback, is not."""
    return render_script(PROBE_SCRIPT, {
        "MARK": MARK,
        "TIMEOUT_S": PER_CALL_TIMEOUT_S,
        "MASTER": master_name,
        "SENTINELS": list(sentinels),
        "SERVERS": [*servers, *([haproxy] if haproxy else [])],
        "REPLIES": [name for name, _ in SENTINEL_COMMANDS],
        "COMMANDS": [" ".join(command) for _, command in SENTINEL_COMMANDS],
        "MONITOR_USER": str(MONITOR.redis_user),
        "PASSWORD_COMMAND": password_command,
        "TLS_CA_FILE": tls_ca_file or "",
        "PLAINTEXT": haproxy or "",
    })


@cache
def _script_source(name: str) -> str:
    return resources.files("components.runtime").joinpath("files", name).read_text(encoding="utf-8")


def render_script(name: str, values: Mapping[str, str | int | Sequence[str]]) -> str:
    """The node script `files/<name>` (package data) as SSM Run Command sends it: `values` set in a
    header right after its first line, in order, each quoted for the shell (a sequence as a bash array)."""
    def shell(value: str | int | Sequence[str]) -> str:
        if isinstance(value, (str, int)):
            return shlex.quote(str(value))
        return "(" + " ".join(shlex.quote(w) for w in value) + ")"

    first, rest = _script_source(name).split("\n", 1)
    return "\n".join([first, *(f"{key}={shell(value)}" for key, value in values.items()), rest])


@dataclass(frozen=True)
class ProbeOutput:
    """The decoded answers: per label (`sentinel <ep> <reply>` or `info <ep>`), the reply or the
    Exception the call ended with, shaped as redis-py would hand them to verify_quorum."""

    replies: dict[str, Any]

    def sentinel(self, endpoint: str, name: str) -> Any:
        return self.replies.get(f"sentinel {endpoint} {name}", ProbeError(f"no answer recorded for {endpoint}"))

    def info(self, endpoint: str) -> dict[str, Any]:
        """INFO server+replication of `endpoint`, raising what the call raised (as redis-py would)."""
        reply = self.replies.get(f"info {endpoint}")
        if reply is None:
            raise redis.ConnectionError(f"{endpoint} is not a cluster node the probe asked")
        if isinstance(reply, Exception):
            raise reply
        return reply


def _reply(label: str, body: str, rc: int) -> Any:
    """One call's printed output as redis-py would return or raise it."""
    text = body.strip()
    if rc == 124:
        return redis.TimeoutError(f"Timeout reading from socket (no answer within {PER_CALL_TIMEOUT_S}s)")
    if rc != 0:
        # redis-cli: "Could not connect to Redis at h:p: Connection refused" (stderr, exit 1).
        return redis.ConnectionError(text.splitlines()[-1] if text else f"redis-cli exited {rc}")
    auth = [line for line in text.splitlines() if line.startswith("AUTH failed:")]
    if auth:
        message = auth[0][len("AUTH failed:"):].strip()
        if "without any password configured" in message:
            return redis.ResponseError(message)
        return redis.AuthenticationError(message)
    if text.startswith("error:"):
        try:
            message = json.loads(text[len("error:"):])
        except ValueError:
            message = text[len("error:"):]
        if str(message).startswith("NOAUTH"):
            return redis.AuthenticationError(str(message))
        return redis.ResponseError(str(message))
    if label.startswith("info "):
        return parse_info(text)  # redis-cli prints INFO raw even with --json; parse it as redis-py does
    try:
        return json.loads(text) if text else None
    except ValueError:
        return redis.ResponseError(f"unreadable answer: {text[:120]}")


def parse_probe_output(encoded: str) -> ProbeOutput:
    """Decode the probe's stdout (base64 of gzip) into replies; ProbeError when unreadable or truncated."""
    text = encoded.strip()
    if text.startswith(f"{MARK}-no-password"):
        raise ProbeError(
            "the node could not read the Redis password with its instance role (check the role's "
            "secretsmanager:GetSecretValue on the Redis secret)"
        )
    try:
        raw = gzip.decompress(base64.b64decode(text, validate=True)).decode("utf-8", "replace")
    except (ValueError, OSError, EOFError, zlib.error):
        hint = (
            f" (output is {len(encoded)} characters: SSM keeps only {SSM_OUTPUT_LIMIT}; the cluster's answers "
            "are too large to bring back this way, run SentinelQuorum with via='direct' from inside the VPC)"
            if len(encoded) >= SSM_OUTPUT_LIMIT - 10 else ""
        )
        raise ProbeError(f"the probe's output is not readable{hint}") from None
    if not raw.rstrip().endswith(f"{MARK}-end"):
        raise ProbeError("the probe's output ends early (the command was cut off on the node)")
    replies: dict[str, Any] = {}
    label: str | None = None
    body: list[str] = []
    for line in raw.splitlines():
        if line.startswith(f"{MARK}-rc ") and label is not None:
            replies[label] = _reply(label, "\n".join(body), int(line.split()[-1]))
            label, body = None, []
        elif line.startswith(f"{MARK} "):
            label, body = line[len(MARK) + 1:], []
        elif label is not None:
            body.append(line)
    return ProbeOutput(replies)


# --------------------------------------------------------------------------- SSM


def _error_code(error: Exception) -> str:
    return str((getattr(error, "response", None) or {}).get("Error", {}).get("Code", type(error).__name__))


def _send_probe(ssm: Any, instance_id: str, script: str) -> str:
    """SendCommand the probe; return the command id."""
    from botocore.exceptions import BotoCoreError, ClientError

    # A quoted here-document: the agent's shell passes the script to bash untouched.
    commands = f"bash <<'HST_HA_PROBE'\n{script}HST_HA_PROBE"
    try:
        sent = ssm.send_command(
            InstanceIds=[instance_id], DocumentName="AWS-RunShellScript",
            Parameters={"commands": [commands], "executionTimeout": ["120"]},
            TimeoutSeconds=30, Comment="hst-ha SentinelQuorum probe (read-only)",
        )
    except ClientError as error:
        code = _error_code(error)
        if code == "InvalidInstanceId":
            raise ProbeError(
                f"{instance_id} is not managed by Systems Manager yet: its SSM agent registers a minute or two "
                "after boot; if it never does, check the instance role has AmazonSSMManagedInstanceCore and "
                "the node can reach the SSM endpoints (egress 443)"
            ) from None
        raise ProbeError(f"SSM SendCommand to {instance_id} failed: {code}") from None
    except BotoCoreError as error:
        raise ProbeError(f"SSM SendCommand to {instance_id} failed: {type(error).__name__}") from None
    return str(sent["Command"]["CommandId"])


def _probe_failed(instance_id: str, status: str, invocation: Mapping[str, Any]) -> ProbeError:
    """The error for an invocation that ended other than Success (Failed, Cancelled, TimedOut, ...)."""
    detail = str(invocation.get("StandardErrorContent", "")).strip().splitlines()[-3:]
    output = str(invocation.get("StandardOutputContent", "")).strip()
    if output.startswith(f"{MARK}-no-password"):
        parse_probe_output(output)  # raises the precise message
    return ProbeError(
        f"the probe on {instance_id} ended {status} (exit {invocation.get('ResponseCode')})"
        + (f": {' | '.join(detail)}" if detail else "")
    )


def run_probe(
    instance_id: str,
    region: str,
    script: str,
    deadline: float,
    client_factory: Callable[[str], Any] | None = None,
    poll_s: float | None = None,
) -> str:
    """Run `script` on `instance_id` with AWS-RunShellScript; return its stdout. Bounded by `deadline`
    (time.monotonic()); raises ProbeError naming what to check. The client is built here, per call."""
    from botocore.exceptions import BotoCoreError, ClientError

    poll_s = POLL_S if poll_s is None else poll_s
    if client_factory is None:
        import boto3

        client_factory = lambda r: boto3.client("ssm", region_name=r)  # noqa: E731
    ssm = client_factory(region)
    command_id = _send_probe(ssm, instance_id, script)
    while True:
        invocation: Mapping[str, Any] = {}
        try:
            invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
            status = invocation["Status"]
        except ClientError as error:
            if _error_code(error) != "InvocationDoesNotExist":  # normal for a moment after sending
                raise ProbeError(f"SSM GetCommandInvocation on {instance_id} failed: {_error_code(error)}") from None
            status = "Pending"
        if status == "Success":
            return str(invocation.get("StandardOutputContent", ""))
        if status not in ("Pending", "InProgress", "Delayed"):
            raise _probe_failed(instance_id, status, invocation)
        if time.monotonic() + poll_s > deadline:
            with contextlib.suppress(ClientError, BotoCoreError):
                ssm.cancel_command(CommandId=command_id, InstanceIds=[instance_id])
            raise ProbeError(f"the probe on {instance_id} did not finish in time (SSM status {status})")
        time.sleep(poll_s)
