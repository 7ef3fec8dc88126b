"""HAProxy's admin (stats) socket: the one client the local target and the drills use.

Each call opens the Unix socket, sends one command and reads to the end (HAProxy closes the
connection after answering a command when not in interactive mode).
"""

from __future__ import annotations

import csv
import io
import socket

__all__ = ["SERVER_OP_STATES", "command", "servers_state", "stat"]

# `show servers state` srv_op_state values (HAProxy's enum srv_state).
SERVER_OP_STATES = {"0": "DOWN", "1": "STARTING", "2": "UP", "3": "STOPPING"}


def command(socket_path: str, text: str, timeout_s: float = 2.0) -> str:
    """Send one admin command; return HAProxy's whole answer. Raises OSError when the socket does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(socket_path)
        conn.sendall(text.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def servers_state(socket_path: str, timeout_s: float = 2.0) -> dict[str, dict[str, str]]:
    """`show servers state`: {"backend/server": {"state": UP|DOWN|STARTING|STOPPING, ...the raw columns}}.

    Preferred over `show stat` where only states matter: its columns are plain words, while
    `show stat`'s check description carries the checked server's raw reply (CR LF included)."""
    lines = command(socket_path, "show servers state", timeout_s).splitlines()
    header = next((line for line in lines if line.startswith("# be_id")), None)
    if header is None:
        raise OSError(f"HAProxy at {socket_path} gave no `show servers state` header")
    columns = header.lstrip("# ").split()
    servers = {}
    for line in lines:
        fields = line.split()
        if not line or line.startswith("#") or len(fields) < len(columns):
            continue  # the format version line, comments
        # Rows shorter than the header were skipped; a longer one keeps the columns the header names.
        row = dict(zip(columns, fields, strict=False))
        row["state"] = SERVER_OP_STATES.get(row["srv_op_state"], row["srv_op_state"])
        servers[f"{row['be_name']}/{row['srv_name']}"] = row
    return servers


def stat(socket_path: str, timeout_s: float = 1.0) -> dict[tuple[str, str], dict[str, str]]:
    """`show stat` as {(proxy, server): row}, parsed with the csv module: the check description
    field is quoted and may carry commas and the checked server's raw CR LF reply."""
    text = command(socket_path, "show stat", timeout_s)
    text = text.removeprefix("# ")
    rows = csv.DictReader(io.StringIO(text, newline=""))
    return {(row["pxname"], row["svname"]): row for row in rows if row.get("pxname")}
