"""RDB snapshots taken from a replica, uploaded to the backup bucket; and their restore.

Plain module shared by the node and the local target. Every node runs
`python3 -m components.runtime.backup <node.env>`: every BACKUP_INTERVAL_MINUTES it asks its own
Sentinel for the replicas, and only the ELECTED one (the first healthy replica in address order, so
one node per round and never the primary) takes the snapshot (`backup_once`):

1. it reads the primary's replication offset, then waits until its own Redis has processed that far,
   so every write the primary acknowledged before the snapshot began is in it;
2. `BGSAVE`, then waits for `LASTSAVE` to change and the save to have succeeded;
3. copies dump.rdb (a save renames a finished file into place, so the copy is one whole snapshot)
   and uploads it: S3 (`s3://bucket/prefix`, SSE-KMS) on AWS, a directory (`file:<dir>`) locally.

`local_cluster.py backup` calls `backup_once` for each local node: the same election and steps.
`restore_into` turns a snapshot into a data directory the node's Redis (appendonly yes) loads: Redis
7 ignores dump.rdb when AOF is on and no AOF exists, so a throwaway Redis loads the RDB and writes
the AOF from it. README "Backup and restore" has the runbook for both targets.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.runtime.nodeenv import Sink, node_env, secret, tls_kwargs

__all__ = ["BackupError", "BackupSink", "backup_once", "elect", "restore_into", "snapshot"]

DUMP = "dump.rdb"


class BackupError(RuntimeError):
    pass


def _client(host: str, port: int, password: str, user: str | None = None, tls_ca_file: str | None = None) -> Any:
    import redis

    return redis.Redis(
        host,
        port,
        username=user or None,
        password=password,
        socket_timeout=5,
        socket_connect_timeout=2,
        decode_responses=True,
        **tls_kwargs(tls_ca_file),
    )


def elect(replicas: list[dict[str, Any]]) -> str | None:
    """The replica that takes this round's snapshot: healthy (no down/disconnected flag, link ok),
    first in address order. `replicas` is SENTINEL REPLICAS as redis-py returns it."""
    healthy = [
        r["ip"]
        for r in replicas
        if set(str(r.get("flags", "")).split(",")) == {"slave"} and r.get("master-link-status", "ok") == "ok"
    ]
    return min(healthy, key=ipaddress.ip_address) if healthy else None


def _wait(what: str, check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BackupError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.05)


def snapshot(replica: Any, primary: Any, data_dir: str, out: Path, timeout_s: float = 300) -> dict[str, Any]:
    """Steps 1-3 above on `replica` (a client to this node's Redis); the RDB copied to `out`."""
    target = int(primary.info("replication")["master_repl_offset"])
    _wait(
        f"the replica to reach the primary's offset {target}",
        lambda: int(replica.info("replication").get("master_repl_offset", -1)) >= target,
        timeout_s,
    )
    before = int(replica.lastsave().timestamp())
    # LASTSAVE has one-second resolution: start in a later second than the last save, so a
    # change is always visible.
    _wait("the next second", lambda: time.time() >= before + 1, 2)
    try:
        replica.bgsave()
    except Exception as exc:  # noqa: BLE001 - a save already running: schedule ours after it
        if "in progress" not in str(exc):
            raise
        replica.execute_command("BGSAVE", "SCHEDULE")
    _wait("LASTSAVE to change", lambda: int(replica.lastsave().timestamp()) > before, timeout_s)
    persistence = _wait(
        "the save to finish",
        lambda: (lambda p: p if not int(p["rdb_bgsave_in_progress"]) else None)(replica.info("persistence")),
        timeout_s,
    )
    if persistence["rdb_last_bgsave_status"] != "ok":
        raise BackupError(f"BGSAVE failed on the replica ({persistence['rdb_last_bgsave_status']}); see its redis.log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / DUMP, "rb") as source, open(out, "wb") as copy:
        shutil.copyfileobj(source, copy)
    return {"offset": target, "lastsave": int(replica.lastsave().timestamp()), "bytes": out.stat().st_size}


class BackupSink(Sink):
    """`s3://bucket/prefix` or `file:<directory>`."""

    def upload(self, path: Path, name: str) -> str:
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.path / name)
            return str(self.path / name)
        import boto3  # only on AWS

        bucket, _, prefix = self.spec[len("s3://") :].partition("/")
        key = f"{prefix.strip('/')}/{name}".lstrip("/")
        with open(path, "rb") as body:
            boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body, ServerSideEncryption="aws:kms")
        return f"s3://{bucket}/{key}"


def backup_once(env: dict[str, str]) -> dict[str, Any] | None:
    """One round on one node: None unless this node is the elected replica; else what it uploaded."""
    import redis

    me = env["SELF"]
    password = secret(env, "operator")
    user = env.get("OPERATOR_USER") or None
    sentinel = redis.Redis(
        me, int(env["SENTINEL_PORT"]), password=secret(env, "monitor"), socket_timeout=5, decode_responses=True,
        **tls_kwargs(env.get("TLS_CA_FILE")),
    )
    master = env["MASTER_NAME"]
    if elect(sentinel.sentinel_slaves(master)) != me:
        return None
    answer: Any = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)
    host, port = str(answer[0]), int(answer[1])
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    with tempfile.TemporaryDirectory(prefix="hst-ha-backup-") as work:
        local = Path(work) / DUMP
        taken = snapshot(
            _client(me, int(env["REDIS_PORT"]), password, user, env.get("TLS_CA_FILE")),
            _client(host, port, password, user, env.get("TLS_CA_FILE")),
            env["DATA"],
            local,
        )
        name = f"{stamp}-{env['NODE_NAME']}.rdb"
        return {
            **taken,
            "node": env["NODE_NAME"],
            "primary": f"{host}:{port}",
            "location": BackupSink(env["BACKUP_SINK"]).upload(local, name),
        }


def restore_into(rdb: Path, data_dir: Path, timeout_s: float = 120) -> int:
    """Make `data_dir` hold `rdb` as the node's Redis loads it (an AOF written from the RDB), before
    that Redis first starts. Returns the number of keys loaded. Only a throwaway Redis on a Unix
    socket inside `data_dir` runs: nothing listens on the network."""
    import redis

    data_dir.mkdir(parents=True, exist_ok=True)
    if (data_dir / "appendonlydir").exists():
        raise BackupError(f"{data_dir} already holds an AOF: restore only into a node that has never started")
    shutil.copyfile(rdb, data_dir / DUMP)
    sock = data_dir / "restore.sock"
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data_dir),
            "--dbfilename",
            DUMP,
            "--appendonly",
            "no",
            "--save",
            "",
            "--logfile",
            str(data_dir / "restore.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = redis.Redis(unix_socket_path=str(sock), decode_responses=True, socket_timeout=10)
        _wait("the throwaway Redis to load the snapshot", lambda: sock.exists() and _loaded(client), timeout_s)
        keys = int(client.dbsize())
        client.config_set("appendonly", "yes")  # writes the AOF from what was loaded
        _wait(
            "the AOF to be written",
            lambda: (
                lambda p: (
                    int(p["aof_rewrite_in_progress"]) == 0
                    and int(p["aof_rewrite_scheduled"]) == 0
                    and int(p["aof_enabled"]) == 1
                )
            )(client.info("persistence")),
            timeout_s,
        )
        if client.info("persistence")["aof_last_bgrewrite_status"] != "ok":
            raise BackupError(f"writing the AOF failed; see {data_dir / 'restore.log'}")
        client.shutdown(nosave=True)
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=30)
        sock.unlink(missing_ok=True)
    return keys


def _loaded(client: Any) -> bool:
    try:
        return int(client.info("persistence")["loading"]) == 0
    except Exception:  # noqa: BLE001 - not listening yet, or still loading (-LOADING)
        return False


def run(env_path: str) -> None:
    env = node_env(env_path)
    every = int(env.get("BACKUP_INTERVAL_MINUTES", "0")) * 60
    if every <= 0:
        print("hst-ha-backup: backupIntervalMinutes is 0; no snapshots", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    while True:
        # Aligned to the interval: every node wakes in the same round and only the elected one acts.
        time.sleep(every - time.time() % every)
        try:
            taken = backup_once(env)
            if taken:
                print(
                    f"hst-ha-backup: uploaded {taken['bytes']} bytes to {taken['location']}",
                    file=sys.stderr,
                    flush=True,
                )
        except Exception as exc:  # noqa: BLE001 - the next round tries again; the alarm is the missing object
            print(f"hst-ha-backup: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    os.umask(0o077)
    run(sys.argv[1])
