"""Where bearer tokens, signing keys and verification keys are kept: AWS Secrets Manager or local files.

Both stores have the same three methods (``put``, ``get``, ``delete``) so the Pulumi
dynamic provider and the operator tools do not care which one they talk to.

Pure module: no Pulumi import and nothing created at import time. Dynamic providers are
pickled into the Pulumi state, so a store (and its boto3 client) must be built inside
the provider method that uses it, never kept at module level.

No message raised here contains a secret value; they may contain secret *names*.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

__all__ = [
    "LocalSecretStore", "SecretRef", "SecretStoreError", "SecretsManagerStore", "dump_string_map", "load_string_map",
    "unique_name",
]

# Secrets Manager's own rule; the local store applies it too so a name that works
# locally also works on AWS.
_NAME_RE = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")


class SecretStoreError(RuntimeError):
    """A secret could not be stored, read or deleted. Never carries the secret value."""


@dataclass(frozen=True)
class SecretRef:
    """Where a secret version lives: an ARN (AWS) or absolute file path (local), version and name."""

    arn: str
    version_id: str
    name: str


def _validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SecretStoreError(
            f"secret name {name!r}: must be 1-512 characters of letters, digits and /_+=.@-"
        )
    return name


def unique_name(prefix: str) -> str:
    """`<prefix>-<12 random hex>`: a secret name no one can have taken beforehand (another project's
    or organization's stack of the same name in this account, or anyone guessing the pattern), and
    one that a name still scheduled for deletion by an earlier destroy never collides with."""
    return _validate_name(f"{prefix}-{secrets.token_hex(6)}")


def _foreign(name: str, found: Mapping[str, str], owner: Mapping[str, str], action: str) -> SecretStoreError:
    wanted = ", ".join(f"{k}={v}" for k, v in owner.items()) or "(none given)"
    return SecretStoreError(
        f"secret {name!r} exists but was not created by this stack (it lacks the tags {wanted}; "
        f"it has {sorted(found)}); refusing to {action} it: pick another name, or remove that secret "
        "yourself if it is a leftover of this stack"
    )


def _owned(found: Mapping[str, str], owner: Mapping[str, str] | None) -> bool:
    """A secret is ours only if it carries every tag we create ours with (and we name some)."""
    return bool(owner) and all(found.get(k) == v for k, v in (owner or {}).items())


def validate_recovery_window(days: int) -> int:
    """Secrets Manager accepts 7 to 30 days; 0 is our spelling of "delete now, no recovery"."""
    if isinstance(days, bool) or not isinstance(days, int) or not (days == 0 or 7 <= days <= 30):
        raise SecretStoreError(
            f"recovery window {days!r} days: must be 0 (delete at once) or from 7 to 30 days"
        )
    return days


# --------------------------------------------------------------------------- AWS


def _error_code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class SecretsManagerStore:
    """Secrets in AWS Secrets Manager, one secret per name, each ``put`` a new version."""

    def __init__(self, region: str | None = None, client: Any = None) -> None:
        if client is None:
            import boto3  # imported here: the local store must work without boto3

            client = boto3.client("secretsmanager", region_name=region)
        self._client = client

    @staticmethod
    def _id(ref_or_name: SecretRef | str) -> str:
        # The ARN pins the exact secret: after a delete and re-create the name is reused
        # but the ARN suffix differs, so an old ref cannot read the new secret by accident.
        return ref_or_name.arn if isinstance(ref_or_name, SecretRef) else _validate_name(ref_or_name)

    def put(
        self,
        name: str,
        value: str,
        description: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> SecretRef:
        """Create the secret, or add a new current version if it exists (restoring it if scheduled for deletion).

        ``description`` and ``tags`` apply on creation only; later puts change the value. An existing
        secret is written only if it carries every one of ``tags`` (so it was created by whoever
        creates with them) and has no resource policy: a secret someone else made under the same
        name, or opened to other principals, is never adopted.
        """
        from botocore.exceptions import ClientError

        _validate_name(name)
        create_args: dict[str, Any] = {"Name": name, "SecretString": value}
        if description:
            create_args["Description"] = description
        if tags:
            create_args["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
        try:
            created = self._client.create_secret(**create_args)
            return SecretRef(arn=created["ARN"], version_id=created["VersionId"], name=name)
        except ClientError as err:
            # AWS answers InvalidRequestException when the name is scheduled for deletion
            # (hashicorp/terraform-provider-aws#4467: a stack destroyed and re-created
            # within the recovery window); moto answers ResourceExistsException.
            create_error = _error_code(err)
            if create_error not in ("ResourceExistsException", "InvalidRequestException"):
                raise SecretStoreError(f"cannot create secret {name!r}: {create_error}") from None
        existing = self._describe(name)
        if existing is None:  # the create failed for another reason (e.g. a bad value)
            raise SecretStoreError(f"cannot create secret {name!r}: {create_error}")
        found = {t["Key"]: t["Value"] for t in existing.get("Tags") or []}
        if not _owned(found, tags):
            raise _foreign(name, found, tags or {}, "write into")
        if self._resource_policy(name):
            # hst-ha never sets one: whoever did may read every version we would write.
            raise SecretStoreError(
                f"secret {name!r} has a resource policy this stack never set; refusing to write into it: "
                "check who added it, then `aws secretsmanager delete-resource-policy --secret-id` it"
            )
        try:
            if existing.get("DeletedDate"):
                self._client.restore_secret(SecretId=name)
            updated = self._client.put_secret_value(SecretId=name, SecretString=value)
        except ClientError as err:
            raise SecretStoreError(
                f"cannot store a new version of secret {name!r}: {_error_code(err)}"
            ) from None
        return SecretRef(arn=updated["ARN"], version_id=updated["VersionId"], name=name)

    def _describe(self, secret_id: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return dict(self._client.describe_secret(SecretId=secret_id))
        except ClientError as err:
            if _error_code(err) == "ResourceNotFoundException":
                return None
            raise SecretStoreError(f"cannot describe secret {secret_id!r}: {_error_code(err)}") from None

    def _resource_policy(self, secret_id: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self._client.get_resource_policy(SecretId=secret_id).get("ResourcePolicy")
        except ClientError as err:
            raise SecretStoreError(
                f"cannot read the resource policy of secret {secret_id!r}: {_error_code(err)}") from None

    def _scheduled_for_deletion(self, secret_id: str) -> bool:
        return bool((self._describe(secret_id) or {}).get("DeletedDate"))

    def get(self, ref_or_name: SecretRef | str) -> str:
        """Return the current value (AWSCURRENT), even when given a ref to an older version."""
        from botocore.exceptions import ClientError

        secret_id = self._id(ref_or_name)
        try:
            response = self._client.get_secret_value(SecretId=secret_id)
        except ClientError as err:
            code = _error_code(err)
            if code == "ResourceNotFoundException":
                raise SecretStoreError(f"secret {secret_id!r} not found") from None
            raise SecretStoreError(f"cannot read secret {secret_id!r}: {code}") from None
        if "SecretString" not in response:
            raise SecretStoreError(f"secret {secret_id!r} holds binary data, not text")
        return str(response["SecretString"])

    def delete(
        self, ref_or_name: SecretRef | str, recovery_window_days: int, tags: Mapping[str, str] | None = None
    ) -> None:
        """Delete a secret; 0 days deletes at once, 7-30 schedules. A missing secret is not an error.

        With ``tags``, a secret that does not carry every one of them is refused, never deleted."""
        from botocore.exceptions import ClientError

        days = validate_recovery_window(recovery_window_days)
        secret_id = self._id(ref_or_name)
        if tags:
            existing = self._describe(secret_id)
            if existing is None:
                return
            found = {t["Key"]: t["Value"] for t in existing.get("Tags") or []}
            if not _owned(found, tags):
                raise _foreign(secret_id, found, tags, "delete")
        args: dict[str, Any] = {"SecretId": secret_id}
        if days == 0:
            args["ForceDeleteWithoutRecovery"] = True
        else:
            args["RecoveryWindowInDays"] = days
        try:
            self._client.delete_secret(**args)
        except ClientError as err:
            code = _error_code(err)
            if code == "ResourceNotFoundException":
                return  # destroy must be idempotent: a retried `pulumi destroy` finds it gone
            if code == "InvalidRequestException" and days and self._scheduled_for_deletion(secret_id):
                return  # already scheduled: what we asked for is under way
            raise SecretStoreError(f"cannot delete secret {secret_id!r}: {code}") from None


# --------------------------------------------------------------------------- local files


class LocalSecretStore:
    """Secrets as files under ``root`` for the local (no cloud) target.

    Layout: one JSON file per secret, ``<root>/<name, '/' percent-encoded>.json``, mode
    0600 in a 0700 directory. Version ids are increasing integers as strings ("1", "2",
    ...) so a test or an operator can see how often a secret changed. Only the current
    version is kept, and ``delete`` removes the file at once whatever the recovery
    window (there is nothing to recover into locally); the window is still validated so
    that a bad value fails locally before it fails on AWS.
    """

    _SUFFIX = ".json"
    _TEMP_SUFFIX = ".tmp"  # cannot collide with a secret file, which always ends in .json

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))

    def path(self, name: str) -> str:
        """The file that holds secret `name` (its "ARN" in this store)."""
        # quote() turns '/' into %2F, so a name can never leave the root directory.
        return os.path.join(self.root, quote(_validate_name(name), safe="") + self._SUFFIX)

    def _name(self, ref_or_name: SecretRef | str) -> str:
        return ref_or_name.name if isinstance(ref_or_name, SecretRef) else ref_or_name

    def _ensure_root(self) -> None:
        try:
            os.mkdir(self.root, 0o700)
            os.chmod(self.root, 0o700)  # mkdir's mode is narrowed by the umask, never widened; set it exactly
        except FileExistsError:
            pass
        except OSError as err:
            raise SecretStoreError(f"cannot create secret directory {self.root}: {err.strerror}") from None
        mode = os.stat(self.root).st_mode
        if not stat.S_ISDIR(mode):
            raise SecretStoreError(f"secret directory {self.root} is not a directory")
        if mode & 0o077:
            # Refuse rather than chmod: the root was chosen by someone else, who should decide.
            raise SecretStoreError(
                f"secret directory {self.root} is accessible to others (mode {stat.S_IMODE(mode):o}); "
                "chmod 700 it"
            )

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self.path(name), encoding="utf-8") as handle:
                document = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise SecretStoreError(f"secret {name!r} in {self.root} is unreadable or corrupt") from None
        if not isinstance(document, dict) or not isinstance(document.get("value"), str):
            raise SecretStoreError(f"secret {name!r} in {self.root} is corrupt")
        return document

    def _write_atomically(self, path: str, data: bytes) -> None:
        temp = f"{path}.{secrets.token_hex(8)}{self._TEMP_SUFFIX}"
        # Created 0600 from the first byte; a later chmod would leave a window of wider access.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def put(
        self,
        name: str,
        value: str,
        description: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> SecretRef:
        """Store ``value`` as the new current version of ``name``."""
        path = self.path(name)
        self._ensure_root()
        previous = self._read(name)
        if previous is not None and tags and not _owned(previous.get("tags") or {}, tags):
            raise _foreign(name, previous.get("tags") or {}, tags, "write into")
        version = int(previous.get("version", 0)) + 1 if previous else 1
        document = {
            "name": name,
            "version": version,
            "description": description or (previous or {}).get("description", ""),
            "tags": dict(tags) if tags else (previous or {}).get("tags", {}),
            "value": value,
        }
        try:
            self._write_atomically(path, json.dumps(document, indent=1).encode("utf-8"))
        except OSError as err:
            raise SecretStoreError(f"cannot write secret {name!r} in {self.root}: {err.strerror}") from None
        return SecretRef(arn=path, version_id=str(version), name=name)

    def get(self, ref_or_name: SecretRef | str) -> str:
        """Return the current value of a secret."""
        name = self._name(ref_or_name)
        document = self._read(name)
        if document is None:
            raise SecretStoreError(f"secret {name!r} not found in {self.root}")
        return str(document["value"])

    def delete(
        self, ref_or_name: SecretRef | str, recovery_window_days: int, tags: Mapping[str, str] | None = None
    ) -> None:
        """Remove a secret's file; a missing secret is not an error. With ``tags``, as on AWS, a
        secret that does not carry every one of them is refused."""
        validate_recovery_window(recovery_window_days)
        name = self._name(ref_or_name)
        previous = self._read(name) if tags else None
        if previous is not None and not _owned(previous.get("tags") or {}, tags):
            raise _foreign(name, previous.get("tags") or {}, tags or {}, "delete")
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise SecretStoreError(f"cannot delete secret {name!r} in {self.root}: {err.strerror}") from None


def dump_string_map(document: Mapping[str, str]) -> str:
    """A generated secret's value (one entry per role or per node): JSON, keys sorted."""
    return json.dumps(dict(document), sort_keys=True)


def load_string_map(name: str, text: str, what: str) -> dict[str, str]:
    """A generated secret's value read back; anything but a JSON object of strings is refused, never
    overwritten: whatever wrote it may hold the only copy of a password or key in use."""
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict) or not all(isinstance(v, str) for v in document.values()):
        raise SecretStoreError(
            f"secret {name!r} is not {what}; refusing to overwrite it: restore its previous version "
            "(aws secretsmanager update-secret-version-stage) and run up again")
    return document
