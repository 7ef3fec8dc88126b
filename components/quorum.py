"""Verify that a Sentinel-managed Redis set is failover-ready: the one check every target shares.

Plain Python (no Pulumi import): the local target, the tests and the `SentinelQuorum` dynamic
provider call `verify_quorum` with the endpoints they know. Clients are built inside the call and
closed after every attempt, so nothing here can end up pickled into Pulumi state.

"Failover-ready" is more than `SENTINEL CKQUORUM`: a Sentinel set that has not yet learned the
replicas answers CKQUORUM OK and then aborts a failover with -failover-abort-no-good-slave. So
every Sentinel must also list N-1 healthy replicas and N-1 other Sentinels, the primary must
have N-1 replicas online, and every HAProxy given must route to that primary.

The password never appears in a message, a repr or a report: it is only handed to redis-py.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry

__all__ = ["QuorumError", "QuorumReport", "verify_quorum"]

Endpoint = tuple[str, int]
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

    Raises QuorumError after `timeout_s`, listing per Sentinel what was wrong and what to check.
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
        attempt = _attempt(
            sentinels, master_name, password, expected_nodes, haproxy_endpoints,
            allow_missing_sentinels, socket_timeout,
        )
        now = time.monotonic()
        if not attempt.problems:
            return _report(attempt, master_name, attempts, now - started)
        if now + delay > deadline:
            raise QuorumError(
                _failure_message(master_name, timeout_s, attempts, attempt.problems, sentinels, logs_hint, password),
                [_scrub(p, password) for p in attempt.problems],
            )
        summary = "; ".join(attempt.problems)
        if progress and (summary != last_summary or now - last_progress >= _PROGRESS_EVERY_S):
            progress(_scrub(f"waiting for a failover-ready '{master_name}' ({now - started:.1f}s): {summary}", password))
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


def _client(endpoint: Endpoint, password: str, timeout_s: float) -> redis.Redis:
    """A one-shot client: no retries (the caller's loop retries), no CLIENT SETINFO round trip."""
    host, port = endpoint
    return redis.Redis(
        host=host, port=port, password=password, decode_responses=True,
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0), driver_info=DriverInfo(name=None, lib_version=None),
    )


def _attempt(
    sentinels: Sequence[Endpoint],
    master_name: str,
    password: str,
    expected_nodes: int,
    haproxy_endpoints: Sequence[Endpoint],
    allow_missing: int,
    socket_timeout: float,
) -> _Attempt:
    attempt = _Attempt()
    # Concurrently: on AWS an unreachable Sentinel costs a whole connect timeout.
    with ThreadPoolExecutor(max_workers=len(sentinels)) as pool:
        attempt.sentinels = list(pool.map(
            lambda ep: _ask_sentinel(ep, master_name, password, expected_nodes, allow_missing, socket_timeout),
            sentinels,
        ))
    missing = [v.endpoint for v in attempt.sentinels if v.unreachable]
    missing_allowed = len(missing) <= allow_missing
    for view in attempt.sentinels:
        if not (view.unreachable and missing_allowed):
            attempt.problems.extend(f"Sentinel {view.endpoint}: {p}" for p in view.problems)
    if not missing_allowed:
        attempt.problems.append(
            f"{len(missing)} of {len(sentinels)} Sentinels unreachable ({', '.join(missing)}); "
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
    attempt.primary_view = _ask_primary(primary, password, expected_nodes, socket_timeout)
    attempt.problems.extend(f"primary {primary}: {p}" for p in attempt.primary_view.problems)
    if attempt.primary_view.run_id:
        for endpoint in haproxy_endpoints:
            problem = _ask_haproxy(endpoint, password, primary, attempt.primary_view.run_id, socket_timeout)
            if problem:
                attempt.problems.append(f"HAProxy {_endpoint(*endpoint)}: {problem}")
            else:
                attempt.haproxy_ok.append(_endpoint(*endpoint))
    return attempt


def _connection_problem(exc: Exception) -> tuple[bool, str]:
    """(unreachable?, what to say) for an error raised while talking to a server."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "invalid password" in text:
        return False, "refuses the Redis password (its requirepass is not the cluster's secret)"
    if "without any password configured" in text:
        return False, "has no password set (requirepass missing: the node was not configured by its boot script)"
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
    endpoint: Endpoint, master_name: str, password: str, expected_nodes: int, allow_missing: int, timeout_s: float
) -> _SentinelView:
    name = _endpoint(*endpoint)
    client = _client(endpoint, password, timeout_s)
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
        unreachable, problem = _connection_problem(exc)
        return _SentinelView(name, unreachable=unreachable, problems=(problem,))
    finally:
        client.close()

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


def _ask_primary(primary: str, password: str, expected_nodes: int, timeout_s: float) -> _PrimaryView:
    host, port = primary.rsplit(":", 1)
    client = _client((host, int(port)), password, timeout_s)
    try:
        info = client.info("server", "replication")
    except Exception as exc:  # noqa: BLE001
        return _PrimaryView(problems=(_connection_problem(exc)[1],))
    finally:
        client.close()
    run_id = str(info.get("run_id", ""))
    if info.get("role") != "master":
        return _PrimaryView(problems=(f"says role:{info.get('role')}, not master",))
    online, waiting = [], []
    for key, value in info.items():
        if key.startswith("slave") and isinstance(value, dict):
            replica = _endpoint(value.get("ip"), value.get("port"))
            (online if value.get("state") == "online" else waiting).append(f"{replica} {value.get('state')}")
    wanted = expected_nodes - 1
    if len(online) != wanted:
        detail = f" (not yet: {', '.join(waiting)})" if waiting else ""
        return _PrimaryView(run_id, problems=(f"has {len(online)} of {wanted} replicas online{detail}",))
    return _PrimaryView(run_id, replicas=tuple(sorted(r.split()[0] for r in online)))


def _ask_haproxy(endpoint: Endpoint, password: str, primary: str, primary_run_id: str, timeout_s: float) -> str | None:
    """None when the endpoint leads to the primary. A fresh HAProxy counts every server up until
    its first check fails, so right after a start it may lead elsewhere: the caller retries."""
    client = _client(endpoint, password, timeout_s)
    try:
        info = client.info("server", "replication")
    except Exception as exc:  # noqa: BLE001
        unreachable, problem = _connection_problem(exc)
        if unreachable and "closed" in problem.lower():
            return "accepts but routes nowhere (no server passes its checks yet)"
        return problem
    finally:
        client.close()
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
    sentinels: Sequence[Endpoint], logs_hint: str, password: str,
) -> str:
    sentinel_ports = sorted({str(port) for _, port in sentinels})
    lines = [
        f"the Redis set '{master_name}' was not failover-ready within {timeout_s:g}s ({attempts} attempts); last seen:",
        *(f"  - {p}" for p in problems),
        "Check:",
        f"  - the security group allows the Sentinel port ({', '.join(sentinel_ports)}) and the Redis port "
        "between cluster members, and redis-sentinel and redis-server run on every node;",
        f"  - {logs_hint};",
        "  - every node configured its password from the same Redis password secret (a Sentinel that "
        "refuses the password was given another one).",
    ]
    return _scrub("\n".join(lines), password)


def _scrub(text: str, password: str) -> str:
    """Belt and braces: no server error should echo the password, but none ever gets out if one does."""
    return text.replace(password, "********") if password else text
