"""The local target's state directory: what it records there, and the rule that it removes only
what it created.

The directory holds the recorded settings (`cluster.json`), the Redis users' passwords (`secrets/`), the
nodes' homes (`node-1`, ...) and, from the CLI, the bootstrap tokens (`token-store/`). A marker
file says the local target owns it, and whether it created the directory itself. `up` refuses a
non-empty directory without that marker (it would mix its files with someone else's, and `down`
would then have to tell them apart); `down` removes the entries above, and the directory itself
only when it created it and nothing else is left in it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from components.bundle.users import ROLE_KEYS, parse_secret
from components.local.errors import LocalClusterError
from components.runtime.users_secret import new_password  # the AWS provider's own: one rule for both targets

__all__ = ["MARKER_FILE", "PASSWORD_FILE", "STATE_FILE", "StateDir", "new_password", "write_file"]

STATE_FILE = "cluster.json"
MARKER_FILE = ".hst-ha-local"
# The same document as the AWS secret: a JSON object, one password per role (components/bundle/users.py).
PASSWORD_FILE = "secrets/redis-users.json"
# tlsEnabled: the nodes' TLS secret (components/bundle/tls.py), the CA with its key (the deployer's
# secret; no node reads it) and the CA certificate alone, for the clients on this machine.
TLS_FILE = "secrets/tls.json"
TLS_CA_FILE = "secrets/tls-ca.json"
TLS_CA_CERT_FILE = "secrets/ca.crt"
TOKEN_STORE = "token-store"
# Everything the local target puts into a state directory, besides the nodes' homes.
OWN_ENTRIES = (STATE_FILE, "secrets", TOKEN_STORE, MARKER_FILE)


def write_file(path: Path, content: str, mode: int) -> None:
    """Write with exactly `mode` from the first byte (no window where a secret file is wider)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(content)




class StateDir:
    """One local cluster's state directory (`--state-dir`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        self.state_file = self.path / STATE_FILE
        self.marker = self.path / MARKER_FILE
        self.password_file = self.path / PASSWORD_FILE
        self.token_store = self.path / TOKEN_STORE
        self.tls_file = self.path / TLS_FILE
        self.tls_ca_file = self.path / TLS_CA_FILE
        self.tls_ca_cert_file = self.path / TLS_CA_CERT_FILE

    def read(self) -> dict[str, Any] | None:
        """The recorded cluster, or None when there is none."""
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LocalClusterError(f"{self.state_file} is unreadable ({exc}); remove {self.path} by hand") from None
        return data

    def _owned(self) -> bool:
        # A directory with a cluster.json and no marker was made by an earlier version of the local target.
        return self.marker.exists() or self.state_file.exists()

    def refuse_foreign(self) -> None:
        """Refuse, before anything is created, a path that is not a directory, or a non-empty one the
        local target does not own."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise LocalClusterError(
                f"--state-dir {self.path}: not a directory. Pass a new directory (it is created) or an empty one."
            )
        if self._owned():
            return
        entries = sorted(p.name for p in self.path.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise LocalClusterError(
                f"--state-dir {self.path}: the directory is not empty ({shown}) and was not created by the "
                "local target; it would mix its files with these, and `down` removes only what it created. "
                f"Pass a new directory (it is created) or an empty one, e.g. --state-dir {self.path / 'hst-ha-local'}"
            )

    def claim(self) -> None:
        """Create the directory (or adopt an empty one) and mark it as the local target's."""
        self.refuse_foreign()
        if self.marker.exists():
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        marker = {"createdBy": "hst-ha local target", "createdDirectory": created}
        write_file(self.marker, json.dumps(marker) + "\n", 0o600)

    def _created_directory(self) -> bool:
        try:
            return bool(json.loads(self.marker.read_text()).get("createdDirectory"))
        except (OSError, ValueError, AttributeError):
            return False

    def write(self, state: dict[str, Any]) -> None:
        """Record the cluster and make its passwords, once."""
        self.claim()
        write_file(self.state_file, json.dumps(state, indent=1) + "\n", 0o600)
        if not self.password_file.exists():
            self.write_secrets({key: new_password() for key in ROLE_KEYS})
        os.chmod(self.password_file.parent, 0o700)

    def secrets(self) -> dict[str, str]:
        """{role: password}, as the nodes' boot scripts read it."""
        try:
            return parse_secret(self.password_file.read_text())
        except ValueError as exc:
            raise LocalClusterError(f"{self.password_file}: {exc}") from None

    def write_secrets(self, secrets: dict[str, str]) -> None:
        """Replace the document at once (a rename): a reader sees the old one or the new one."""
        parse_secret(json.dumps(secrets))
        staged = self.password_file.with_name(self.password_file.name + ".new")
        write_file(staged, json.dumps(secrets, indent=1) + "\n", 0o600)
        os.replace(staged, self.password_file)

    def password(self, role: str) -> str:
        return self.secrets()[role]

    def remove(self, node_homes: Iterable[str]) -> list[str]:
        """Remove what the local target put here (the nodes' homes included); the directory too if
        it created it and nothing else is left. The entries it left, by name."""
        created = self._created_directory()
        for name in (*node_homes, *OWN_ENTRIES):
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        left = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        if created and not left:
            self.path.rmdir()
        return left
