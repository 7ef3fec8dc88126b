"""Port policing for the local target: is a port free, does OUR process listen on it, and who
holds it when it is not ours (for the error message). Socket tables come from psutil."""

from __future__ import annotations

import errno
import socket
from typing import Any

import psutil

from components.local.errors import LocalClusterError

__all__ = ["listens", "port_holder", "port_is_free"]

_WILDCARDS = ("0.0.0.0", "::")


def port_is_free(address: str, port: int) -> bool:
    """Bind as the daemons do (SO_REUSEADDR): fails only while something listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise LocalClusterError(f"cannot bind {address}:{port}: {exc.strerror}") from None
    return True


def _listening_on(connection: Any, address: str, port: int) -> bool:
    # psutil's sconn (system-wide) and pconn (per process) rows: both have laddr and status.
    if connection.status != psutil.CONN_LISTEN or not connection.laddr:
        return False
    ip, bound_port = connection.laddr[0], connection.laddr[1]
    return bound_port == port and (ip == address or ip in _WILDCARDS or ip == f"::ffff:{address}")


def listens(process: psutil.Process, address: str, port: int, children: bool = False) -> bool:
    """Whether this very process listens on address:port (or on a wildcard address at that port); with
    `children`, or one of its children (HAProxy's master-worker mode: the workers hold the listeners)."""
    try:
        family = [process, *process.children()] if children else [process]
        return any(_listening_on(c, address, port) for p in family for c in p.net_connections(kind="tcp"))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def port_holder(address: str, port: int) -> str:
    """Who listens on address:port, as 'pid 123 (program args)', or a plain note when the system does not say."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return "a process this user cannot see"
    for connection in connections:
        if connection.pid is not None and _listening_on(connection, address, port):
            try:
                cmdline = " ".join(psutil.Process(connection.pid).cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # exited meanwhile, or one we may not inspect
            return f"pid {connection.pid} ({cmdline[:120]})"
    return "a process this user cannot see"
