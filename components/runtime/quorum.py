"""Verify that a Sentinel-managed Redis set is failover-ready: the one check every target shares.

Plain Python (no Pulumi import): the local target, the tests and the `SentinelQuorum` dynamic
provider call `verify_quorum` with the endpoints they know. Clients are built inside the call and
closed after every attempt, so nothing here can end up pickled into Pulumi state.

"Failover-ready" is more than `SENTINEL CKQUORUM`: a Sentinel set that has not yet learned the
replicas answers CKQUORUM OK and then aborts a failover with -failover-abort-no-good-slave. So
every Sentinel must also list N-1 healthy replicas and N-1 other Sentinels, the primary must
have N-1 replicas online, and every HAProxy given must route to that primary.

Judging is separate from asking: `judge` reads an `Observation` (the raw replies, however they
were fetched) and says what is wrong. `verify_quorum` observes with redis-py from here; the
SentinelQuorum provider can instead observe from inside the cluster (redis-cli on a node, over
SSM) and pass its observations to `verify_observed`, so both paths apply the very same rules.

It authenticates as the read-only monitoring role (components/bundle/users.py: MONITOR): on the
Sentinels as their `default` user, on Redis (and through HAProxy) as its Redis user. The password
never appears in a message, a repr or a report: it is only handed to redis-py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from components.bundle.users import MONITOR
from components.runtime.nodeenv import tls_kwargs

__all__ = [
    "Observation", "ObservationError", "QuorumError", "QuorumReport", "SentinelReplies", "judge",
    "verify_observed", "verify_quorum",
]

Endpoint = tuple[str, int]

try:  # redis-py 6+: say nothing about the library (no CLIENT SETINFO round trip on each one-shot connection)
    from redis.driver_info import DriverInfo

    _NO_SETINFO: dict[str, Any] = {"driver_info": DriverInfo(name=None, lib_version=None)}
except ImportError:  # Debian 12's python3-redis 4.3 on the nodes (membership steps): it sends no SETINFO
    _NO_SETINFO = {}
Progress = Callable[[str], None]

# Where to look when the cluster does not come together (AWS layout; the local target passes its own).
DEFAULT_LOGS_HINT = "the boot log /var/log/cloud-init-output.log and /opt/hst-ha/log/*.log on each node"

_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0
_MAX_SOCKET_TIMEOUT_S = 2.0
_PROGRESS_EVERY_S = 5.0


class QuorumError(RuntimeError):
    """The cluster was not failover-ready within the timeout. `problems` holds one line per finding."""

    def __init__(self, message: str, problems: Sequence[str]):
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class QuorumReport:
    """What was verified. `to_dict()` is the JSON form (the SentinelQuorum provider's outputs)."""

    master_name: str
    primary: str  # host:port every answering Sentinel names
    primary_run_id: str
    replicas: tuple[str, ...]  # host:port of the replicas online at the primary
    sentinels_seen: tuple[str, ...]  # Sentinels that answered and passed every check
    sentinels_missing: tuple[str, ...]  # unreachable Sentinels, at most allow_missing_sentinels
    quorum: int  # the Sentinels' configured quorum
    ckquorum: str  # SENTINEL CKQUORUM's answer
    haproxy_routes: tuple[str, ...]  # HAProxy endpoints verified to reach the primary
    attempts: int
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


class ObservationError(RuntimeError):
    """An attempt could not observe the cluster at all (e.g. a remote probe did not run). Its message
    is that attempt's one finding; the wait goes on until the timeout like any other finding."""


@dataclass(frozen=True)
class SentinelReplies:
    """One Sentinel's raw answers in one attempt, from any transport.

    Each reply is what redis-py returns for that command, or the Exception standing for the error
    the Sentinel answered. `failure` is set instead when the connection itself failed (unreachable,
    password refused): then there are no replies.
    """

    endpoint: str  # host:port
    failure: Exception | None = None
    addr: Any = None  # SENTINEL GET-MASTER-ADDR-BY-NAME
    master: Any = None  # SENTINEL MASTER
    replicas: Any = None  # SENTINEL REPLICAS
    others: Any = None  # SENTINEL SENTINELS
    ckquorum: Any = None  # SENTINEL CKQUORUM


@dataclass(frozen=True)
class Observation:
    """What one attempt saw. `info("host:port")` returns that server's INFO server+replication as
    redis-py parses it, or raises what redis-py would; the judge asks it only for the primary the
    Sentinels name and for each HAProxy endpoint."""

    sentinels: Sequence[SentinelReplies]
    info: Callable[[str], dict[str, Any]]
    haproxy_endpoints: Sequence[Endpoint] = ()


@dataclass(frozen=True)
class _SentinelView:
    """One Sentinel's answers in one attempt, and what was wrong with them on their own."""

    endpoint: str
    unreachable: bool = False
    primary: str | None = None
    quorum: int = 0
    ckquorum: str = ""
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class _PrimaryView:
    run_id: str = ""
    replicas: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass
class _Attempt:
    """Everything one attempt found; `problems` empty means verified."""

    sentinels: list[_SentinelView] = field(default_factory=list)
    primary: str | None = None
    primary_view: _PrimaryView = field(default_factory=_PrimaryView)
    haproxy_ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def verify_quorum(
    sentinels: Sequence[Endpoint],
    master_name: str,
    password: str,
    expected_nodes: int,
    timeout_s: float = 120,
    progress: Progress | None = None,
    haproxy_endpoints: Sequence[Endpoint] = (),
    allow_missing_sentinels: int = 0,
    logs_hint: str = DEFAULT_LOGS_HINT,
    tls_ca_file: str | None = None,
) -> QuorumReport:
    """Wait (bounded, with backoff) until the set of `expected_nodes` nodes is failover-ready.

    Ready means, all in one attempt:
    - every Sentinel in `sentinels` answers, except at most `allow_missing_sentinels` that are
      unreachable (refused or timed out). A Sentinel that answers wrongly (bad password, unknown
      master name, another primary) is never "missing": it is a failure;
    - every answering Sentinel names the same primary, which it does not flag down or failing over;
      its SENTINEL CKQUORUM is OK; it lists N-1 replicas, each flagged only `slave`, with its link
      to that primary up; it knows N-1 other Sentinels, at most `allow_missing_sentinels` of them
      flagged down or disconnected;
    - the primary says role:master and has N-1 replicas in state=online;
    - every endpoint in `haproxy_endpoints` leads to that very primary (same run_id).

    `allow_missing_sentinels` is 0 by default (a deployment checks every node). With 1 on three
    nodes, one Sentinel down is still ready: two Sentinels are a majority and can authorise a
    failover. It must leave a majority of `expected_nodes`, or ValueError.

    With `tls_ca_file` (tlsEnabled) the Sentinels and the Redis nodes are reached over TLS, verified
    against that CA; `haproxy_endpoints` stay plaintext (HAProxy's frontend is loopback-only).

    Raises QuorumError after `timeout_s`, listing per Sentinel what was wrong and what to check.
    """
    return verify_observed(
        lambda socket_timeout: _observe(sentinels, master_name, password, haproxy_endpoints, socket_timeout,
                                        tls_ca_file),
        sentinels, master_name, expected_nodes, timeout_s=timeout_s, progress=progress,
        allow_missing_sentinels=allow_missing_sentinels, logs_hint=logs_hint, secret=password,
    )


def verify_observed(
    observe: Callable[[float], Observation],
    sentinels: Sequence[Endpoint],
    master_name: str,
    expected_nodes: int,
    timeout_s: float = 120,
    progress: Progress | None = None,
    allow_missing_sentinels: int = 0,
    logs_hint: str = DEFAULT_LOGS_HINT,
    secret: str = "",
) -> QuorumReport:
    """`verify_quorum`'s wait, judging whatever `observe(socket_timeout)` saw in each attempt.

    `observe` may raise ObservationError when it saw nothing this time; that is the attempt's finding.
    `secret` is scrubbed from every message (the password, when the caller holds it).
    """
    _check_arguments(sentinels, expected_nodes, allow_missing_sentinels, timeout_s)
    started = time.monotonic()
    deadline = started + timeout_s
    delay = _FIRST_DELAY_S
    attempts = 0
    last_summary, last_progress = "", started
    while True:
        attempts += 1
        socket_timeout = max(0.2, min(_MAX_SOCKET_TIMEOUT_S, deadline - time.monotonic()))
        try:
            attempt = judge(observe(socket_timeout), master_name, expected_nodes, allow_missing_sentinels)
        except ObservationError as error:
            attempt = _Attempt(problems=[str(error)])
        now = time.monotonic()
        if not attempt.problems:
            return _report(attempt, master_name, attempts, now - started)
        if now + delay > deadline:
            raise QuorumError(
                _failure_message(master_name, timeout_s, attempts, attempt.problems, sentinels, logs_hint, secret),
                [_scrub(p, secret) for p in attempt.problems],
            )
        summary = "; ".join(attempt.problems)
        if progress and (summary != last_summary or now - last_progress >= _PROGRESS_EVERY_S):
            progress(_scrub(f"waiting for a failover-ready '{master_name}' ({now - started:.1f}s): {summary}", secret))
            last_summary, last_progress = summary, now
        time.sleep(delay)
        delay = min(delay * 1.6, _MAX_DELAY_S)


def _check_arguments(sentinels: Sequence[Endpoint], expected_nodes: int, allow_missing: int, timeout_s: float) -> None:
    if not sentinels:
        raise ValueError("verify_quorum needs at least one Sentinel endpoint")
    if expected_nodes < 1:
        raise ValueError(f"expected_nodes must be at least 1, got {expected_nodes}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    majority = expected_nodes // 2 + 1
    if allow_missing < 0 or len(sentinels) - allow_missing < majority:
        raise ValueError(
            f"allow_missing_sentinels={allow_missing} of {len(sentinels)} Sentinels leaves fewer than a "
            f"majority ({majority}) of {expected_nodes} nodes; a failover could not be authorised"
        )


def _endpoint(host: str, port: int | str) -> str:
    return f"{host}:{port}"


def one_shot_client(
    endpoint: Endpoint, password: str, timeout_s: float = 1.0, username: str | None = None,
    tls_ca_file: str | None = None,
) -> redis.Redis:
    """A one-shot client: no retries (the caller's loop retries), no CLIENT SETINFO round trip.
    Without `username` it sends `AUTH <password>` (the `default` user). With `tls_ca_file` over TLS
    (a node's Redis or Sentinel port under tlsEnabled)."""
    host, port = endpoint
    return redis.Redis(
        host=host, port=port, username=username, password=password, decode_responses=True,
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0), **_NO_SETINFO,
        **tls_kwargs(tls_ca_file),
    )


def server_info(
    endpoint: Endpoint, password: str, timeout_s: float = 1.0, username: str | None = MONITOR.redis_user,
    tls_ca_file: str | None = None,
) -> dict[str, Any] | None:
    """INFO server and replication of one Redis (as the monitoring user unless told), or None when
    it does not answer."""
    try:
        return _info(_endpoint(*endpoint), password, timeout_s, username, tls_ca_file)
    except (redis.RedisError, OSError):
        return None


def _observe(
    sentinels: Sequence[Endpoint],
    master_name: str,
    password: str,
    haproxy_endpoints: Sequence[Endpoint],
    socket_timeout: float,
    tls_ca_file: str | None = None,
) -> Observation:
    # Concurrently: on AWS an unreachable Sentinel costs a whole connect timeout.
    with ThreadPoolExecutor(max_workers=len(sentinels)) as pool:
        replies = list(pool.map(lambda ep: _ask_sentinel(ep, master_name, password, socket_timeout, tls_ca_file),
                                sentinels))
    plaintext = {_endpoint(*ep) for ep in haproxy_endpoints}
    return Observation(
        sentinels=replies,
        info=lambda endpoint: _info(endpoint, password, socket_timeout,
                                    tls_ca_file=None if endpoint in plaintext else tls_ca_file),
        haproxy_endpoints=tuple(haproxy_endpoints),
    )


def judge(observation: Observation, master_name: str, expected_nodes: int, allow_missing: int = 0) -> _Attempt:
    """What one observation says: `problems` empty means failover-ready (see `verify_quorum`)."""
    attempt = _Attempt()
    attempt.sentinels = [
        _judge_sentinel(replies, master_name, expected_nodes, allow_missing) for replies in observation.sentinels
    ]
    missing = [v.endpoint for v in attempt.sentinels if v.unreachable]
    missing_allowed = len(missing) <= allow_missing
    for view in attempt.sentinels:
        if not (view.unreachable and missing_allowed):
            attempt.problems.extend(f"Sentinel {view.endpoint}: {p}" for p in view.problems)
    if not missing_allowed:
        attempt.problems.append(
            f"{len(missing)} of {len(observation.sentinels)} Sentinels unreachable ({', '.join(missing)}); "
            f"at most {allow_missing} may be"
        )
    named = Counter(v.primary for v in attempt.sentinels if v.primary)
    if not named:
        return attempt
    primary, votes = named.most_common(1)[0]
    if len(named) > 1:
        for view in attempt.sentinels:
            if view.primary and view.primary != primary:
                attempt.problems.append(
                    f"Sentinel {view.endpoint}: names {view.primary} as primary, {votes} other(s) name {primary}"
                )
        return attempt
    attempt.primary = primary
    attempt.primary_view = _judge_primary(observation.info, primary, expected_nodes)
    attempt.problems.extend(f"primary {primary}: {p}" for p in attempt.primary_view.problems)
    if attempt.primary_view.run_id:
        for endpoint in observation.haproxy_endpoints:
            problem = _judge_haproxy(observation.info, _endpoint(*endpoint), primary, attempt.primary_view.run_id)
            if problem:
                attempt.problems.append(f"HAProxy {_endpoint(*endpoint)}: {problem}")
            else:
                attempt.haproxy_ok.append(_endpoint(*endpoint))
    return attempt


def _connection_problem(exc: Exception) -> tuple[bool, str]:
    """(unreachable?, what to say) for an error raised while talking to a server."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "invalid password" in text:
        return False, "refuses the monitoring user's password (not the one in the cluster's Redis users secret)"
    if "without any password configured" in text:
        return False, "has no users set (the node was not configured by its boot script)"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return True, f"unreachable ({text})"
    return False, f"error: {text}"


def _as_dict(reply: Any) -> dict[str, str]:
    """SENTINEL MASTER/REPLICAS entries come as a flat [k, v, k, v] list or (with callbacks) a dict."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    items = list(reply or [])
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def _flags(entry: dict[str, str]) -> set[str]:
    return set(filter(None, entry.get("flags", "").split(",")))


def _ask_sentinel(
    endpoint: Endpoint, master_name: str, password: str, timeout_s: float, tls_ca_file: str | None = None
) -> SentinelReplies:
    name = _endpoint(*endpoint)
    client = one_shot_client(endpoint, password, timeout_s, MONITOR.sentinel_user, tls_ca_file)
    try:
        # One round trip; errors come back per command instead of aborting the pipeline.
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name)
        pipe.execute_command("SENTINEL", "MASTER", master_name)
        pipe.execute_command("SENTINEL", "REPLICAS", master_name)
        pipe.execute_command("SENTINEL", "SENTINELS", master_name)
        pipe.execute_command("SENTINEL", "CKQUORUM", master_name)
        addr, master, replicas, others, ckquorum = pipe.execute(raise_on_error=False)
    except Exception as exc:  # noqa: BLE001 - every failure is a finding, reported per Sentinel
        return SentinelReplies(name, failure=exc)
    finally:
        client.close()
    return SentinelReplies(name, addr=addr, master=master, replicas=replicas, others=others, ckquorum=ckquorum)


def _judge_sentinel(
    replies: SentinelReplies, master_name: str, expected_nodes: int, allow_missing: int
) -> _SentinelView:
    name = replies.endpoint
    if replies.failure is not None:
        unreachable, problem = _connection_problem(replies.failure)
        return _SentinelView(name, unreachable=unreachable, problems=(problem,))
    addr, master, replicas, others, ckquorum = (
        replies.addr, replies.master, replies.replicas, replies.others, replies.ckquorum
    )
    for reply in (addr, master):
        if isinstance(reply, Exception):
            text = str(reply)
            if "No such master" in text:
                return _SentinelView(name, problems=(f"does not monitor a primary named '{master_name}'",))
            _, problem = _connection_problem(reply)
            return _SentinelView(name, problems=(problem,))
    if not addr:
        return _SentinelView(name, problems=(f"names no primary for '{master_name}'",))
    primary = _endpoint(addr[0], addr[1])
    problems: list[str] = []
    master = _as_dict(master)
    wanted = expected_nodes - 1

    bad_master_flags = _flags(master) - {"master"}
    if bad_master_flags:
        problems.append(f"flags primary {primary} as {','.join(sorted(bad_master_flags))}")

    if isinstance(ckquorum, Exception):
        problems.append(f"CKQUORUM failed: {ckquorum}")
        ckquorum = ""

    problems.extend(_replica_problems(replicas, primary, wanted))

    known = int(master.get("num-other-sentinels", "0"))
    if known != wanted:
        problems.append(f"knows {known} of {wanted} other Sentinels")
    if not isinstance(others, Exception):
        unhealthy = [
            f"{e.get('ip')}:{e.get('port')} ({','.join(sorted(_flags(e) - {'sentinel'}))})"
            for e in map(_as_dict, others) if _flags(e) - {"sentinel"}
        ]
        if len(unhealthy) > allow_missing:
            problems.append(f"sees other Sentinels down: {', '.join(unhealthy)}")
    return _SentinelView(
        name, primary=primary, quorum=int(master.get("quorum", "0")), ckquorum=str(ckquorum), problems=tuple(problems)
    )


def _replica_problems(replicas: Any, primary: str, wanted: int) -> list[str]:
    """A replica Sentinel would not promote is no replica for readiness: only `slave` flags, link up."""
    if isinstance(replicas, Exception):
        return [f"SENTINEL REPLICAS failed: {replicas}"]
    entries = [_as_dict(r) for r in replicas]
    faults = []
    for entry in entries:
        where = f"{entry.get('ip')}:{entry.get('port')}"
        extra = _flags(entry) - {"slave"}
        if extra:
            faults.append(f"{where} flagged {','.join(sorted(extra))}")
        elif entry.get("master-link-status") != "ok":
            faults.append(f"{where} link to primary {entry.get('master-link-status', 'unknown')}")
        elif _endpoint(entry.get("master-host", "?"), entry.get("master-port", "?")) != primary:
            faults.append(f"{where} replicates {entry.get('master-host')}:{entry.get('master-port')}")
    healthy = len(entries) - len(faults)
    if healthy == wanted and len(entries) == wanted:
        return []
    detail = f" ({'; '.join(faults)})" if faults else ""
    return [f"sees {healthy} of {wanted} replicas healthy{detail}"]


def _info(
    endpoint: str, password: str, timeout_s: float, username: str | None = MONITOR.redis_user,
    tls_ca_file: str | None = None,
) -> dict[str, Any]:
    """INFO server+replication of host:port, raising what redis-py raises."""
    host, port = endpoint.rsplit(":", 1)
    client = one_shot_client((host, int(port)), password, timeout_s, username, tls_ca_file)
    try:
        return client.info("server", "replication")
    finally:
        client.close()


def _judge_primary(info_of: Callable[[str], dict[str, Any]], primary: str, expected_nodes: int) -> _PrimaryView:
    try:
        info = info_of(primary)
    except Exception as exc:  # noqa: BLE001
        return _PrimaryView(problems=(_connection_problem(exc)[1],))
    run_id = str(info.get("run_id", ""))
    if info.get("role") != "master":
        return _PrimaryView(problems=(f"says role:{info.get('role')}, not master",))
    online: list[str] = []
    waiting: list[str] = []
    for key, value in info.items():
        if key.startswith("slave") and isinstance(value, dict):
            replica = _endpoint(value.get("ip", ""), value.get("port", ""))
            (online if value.get("state") == "online" else waiting).append(f"{replica} {value.get('state')}")
    wanted = expected_nodes - 1
    if len(online) != wanted:
        detail = f" (not yet: {', '.join(waiting)})" if waiting else ""
        return _PrimaryView(run_id, problems=(f"has {len(online)} of {wanted} replicas online{detail}",))
    return _PrimaryView(run_id, replicas=tuple(sorted(r.split()[0] for r in online)))


def _judge_haproxy(
    info_of: Callable[[str], dict[str, Any]], endpoint: str, primary: str, primary_run_id: str
) -> str | None:
    """None when the endpoint leads to the primary. A fresh HAProxy counts every server up until
    its first check fails, so right after a start it may lead elsewhere: the caller retries."""
    try:
        info = info_of(endpoint)
    except Exception as exc:  # noqa: BLE001
        unreachable, problem = _connection_problem(exc)
        if unreachable and "closed" in problem.lower():
            return "accepts but routes nowhere (no server passes its checks yet)"
        return problem
    if info.get("run_id") == primary_run_id:
        return None
    return (
        f"routes to a Redis with role:{info.get('role')} (tcp_port {info.get('tcp_port')}, "
        f"run_id {str(info.get('run_id'))[:8]}), not to the primary {primary}"
    )


def _report(attempt: _Attempt, master_name: str, attempts: int, elapsed_s: float) -> QuorumReport:
    answered = [v for v in attempt.sentinels if not v.unreachable]
    return QuorumReport(
        master_name=master_name,
        primary=attempt.primary or "",
        primary_run_id=attempt.primary_view.run_id,
        replicas=attempt.primary_view.replicas,
        sentinels_seen=tuple(v.endpoint for v in answered),
        sentinels_missing=tuple(v.endpoint for v in attempt.sentinels if v.unreachable),
        quorum=answered[0].quorum if answered else 0,
        ckquorum=answered[0].ckquorum if answered else "",
        haproxy_routes=tuple(attempt.haproxy_ok),
        attempts=attempts,
        elapsed_s=elapsed_s,
    )


def _failure_message(
    master_name: str, timeout_s: float, attempts: int, problems: Sequence[str],
    sentinels: Sequence[Endpoint], logs_hint: str, secret: str,
) -> str:
    sentinel_ports = sorted({str(port) for _, port in sentinels})
    lines = [
        f"the Redis set '{master_name}' was not failover-ready within {timeout_s:g}s ({attempts} attempts); last seen:",
        *(f"  - {p}" for p in problems),
        "Check:",
        f"  - the security group allows the Sentinel port ({', '.join(sentinel_ports)}) and the Redis port "
        "between cluster members, and redis-sentinel and redis-server run on every node;",
        f"  - {logs_hint};",
        "  - every node configured its users from the same Redis users secret (a Sentinel that "
        "refuses the monitoring password was given another one).",
    ]
    return _scrub("\n".join(lines), secret)


def _scrub(text: str, secret: str) -> str:
    """Belt and braces: no server error should echo the password, but none ever gets out if one does."""
    return text.replace(secret, "********") if secret else text
