"""The drills' clients: the bounded writers that stand in for HST Server, and the read-back that
counts which acknowledged writes the final primary does not hold.

The writers are deliberately plain: `SET key value`, no WAIT, redis-py with its own retries off
(redis-py retries by default, which would hide the outage from the figures). Through each node's
HAProxy one writer keeps a long-lived connection and writes flat out, dropping and reopening it on
any connection error as a real client does (HST Server's Hiredis connection); another opens a new
connection for every write, every 20 ms (the clients HAProxy routes afresh, to a stale node if it lets them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import redis
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry

from components.runtime.quorum import one_shot_client

__all__ = ["Ack", "BoundedWriter", "endpoint", "error_kind", "read_back"]

Ack = tuple[int, float, float]  # (sequence number, sent, acknowledged), monotonic seconds


def endpoint(text: str) -> tuple[str, int]:
    """"host:port" as a (host, port) pair."""
    host, port = text.rsplit(":", 1)
    return host, int(port)


class BoundedWriter:
    """Writes `drill:<tag>:<n>` = n, n = 1, 2, ... through one endpoint, bounded by count and time.

    Records every acknowledged write as (n, sent, acknowledged) and every failed one as
    (n, sent, failed, kind), times from `time.monotonic()`. Retries are off in redis-py: each
    write is exactly one attempt. After a connection error or timeout the connection is dropped
    and the next write connects again; after a refusal (e.g. NOREPLICAS, READONLY) the connection is
    kept, as a real client keeps it. Either way it pauses `error_pause_s` so an outage is not a busy loop.

    With `connection_per_write` it opens a new connection for every write instead (connect, AUTH,
    SET, close) every `pace_s`: the clients that come and go (a transfer session, a restarted
    service), which are the ones HAProxy routes afresh, to a stale node if it lets them.
    """

    def __init__(
        self, endpoint: tuple[str, int], password: str, tag: str, *, max_count: int = 500_000,
        max_seconds: float = 120.0, socket_timeout: float | None = 0.5, error_pause_s: float = 0.01,
        connection_per_write: bool = False, pace_s: float = 0.0,
    ) -> None:
        self.endpoint = endpoint
        self.node: int | None = None  # index of the node whose HAProxy this writer goes through
        self.connection_per_write = connection_per_write
        self.pace_s = pace_s
        self.password = password
        self.tag = tag
        self.max_count = max_count
        self.max_seconds = max_seconds
        self.socket_timeout = socket_timeout
        self.error_pause_s = error_pause_s
        self.acked: list[Ack] = []
        self.errors: list[tuple[int, float, float, str]] = []
        self.ended_by = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{tag}", daemon=True)

    def key(self, seq: int) -> str:
        return f"drill:{self.tag}:{seq}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float = 5.0) -> None:
        self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _connect(self) -> redis.Redis:
        host, port = self.endpoint
        return redis.Redis(
            host=host, port=port, password=self.password,
            socket_timeout=self.socket_timeout, socket_connect_timeout=self.socket_timeout,
            retry=Retry(NoBackoff(), 0),  # exactly one attempt per write: the outage shows in the figures
            driver_info=DriverInfo(name=None, lib_version=None),
        )

    def _run(self) -> None:
        client = self._connect()
        deadline = time.monotonic() + self.max_seconds
        seq = 0
        try:
            while True:
                if self._stop.is_set():
                    self.ended_by = "stopped"
                    return
                if seq >= self.max_count:
                    self.ended_by = "count bound"
                    return
                if time.monotonic() >= deadline:
                    self.ended_by = "time bound"
                    return
                seq += 1
                sent = time.monotonic()
                try:
                    client.set(self.key(seq), seq)
                    self.acked.append((seq, sent, time.monotonic()))
                except redis.ResponseError as exc:
                    self.errors.append((seq, sent, time.monotonic(), error_kind(exc)))
                    self._stop.wait(self.error_pause_s)
                except (redis.RedisError, OSError) as exc:
                    self.errors.append((seq, sent, time.monotonic(), error_kind(exc)))
                    client.connection_pool.disconnect()
                    self._stop.wait(self.error_pause_s)
                if self.connection_per_write:
                    client.connection_pool.disconnect()
                    self._stop.wait(max(0.0, self.pace_s - (time.monotonic() - sent)))
        finally:
            client.close()

    def first_ack_sent_after(self, t: float) -> Ack | None:
        for entry in self.acked:  # appended in order
            if entry[1] >= t:
                return entry
        return None

    def acked_between(self, start: float, end: float) -> int:
        return sum(1 for _, _, acked in self.acked if start <= acked < end)


def error_kind(exc: BaseException) -> str:
    """The kind of a failed write, for `refused_by_kind`: Redis's error word, else the exception class."""
    if type(exc) is redis.ResponseError:  # subclasses (ReadOnlyError, ...) are named by their class
        word = str(exc).split(" ", 1)[0]
        return word if word.isupper() else f"ResponseError: {str(exc)[:40]}"
    return type(exc).__name__


def read_back(
    primary: tuple[str, int], password: str, writers: Sequence[BoundedWriter], tls_ca_file: str | None = None
) -> list[list[Ack]]:
    """Per writer, the acknowledged writes (seq, sent, acked) whose key the primary does not hold
    with its value (each value is its own sequence number)."""
    client = one_shot_client(primary, password, 5.0, tls_ca_file=tls_ca_file)
    missing: list[list[Ack]] = []
    try:
        for writer in writers:
            entries, gone = writer.acked, []
            for i in range(0, len(entries), 5000):
                batch = entries[i:i + 5000]
                values = client.mget([writer.key(seq) for seq, _, _ in batch])
                gone += [entry for entry, value in zip(batch, values, strict=True) if value != str(entry[0])]
            missing.append(gone)
    finally:
        client.close()
    return missing
