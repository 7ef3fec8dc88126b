"""Secret stores: Secrets Manager against moto in-process, and the local 0600 file store."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from components.bundle.users import ROLE_KEYS, parse_secret
from components.runtime import users_secret
from components.runtime.secret_store import LocalSecretStore, SecretRef, SecretsManagerStore, SecretStoreError

REGION = "eu-west-1"
NAME = "hst-ha/dev/bearer-token/admin"
OWNER = {"hst-ha:stack": "acme/hst-ha/dev"}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Fake credentials so that nothing can ever reach a real account from a test.
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    for variable in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(variable, raising=False)
    with mock_aws():
        yield


@pytest.fixture
def sm_store(aws_env: None) -> SecretsManagerStore:
    return SecretsManagerStore(region=REGION)


def _raw_client() -> object:
    return boto3.client("secretsmanager", region_name=REGION)


# --------------------------------------------------------------------------- Secrets Manager


def test_put_creates_secret_with_tags_and_description(sm_store: SecretsManagerStore) -> None:
    ref = sm_store.put(NAME, "token-1", description="bootstrap token", tags={"stack": "dev"})
    assert ref.name == NAME
    assert ref.arn.startswith(f"arn:aws:secretsmanager:{REGION}:")
    assert ref.version_id
    described = _raw_client().describe_secret(SecretId=NAME)  # type: ignore[attr-defined]
    assert described["Description"] == "bootstrap token"
    assert {"Key": "stack", "Value": "dev"} in described["Tags"]
    assert sm_store.get(NAME) == "token-1"


def test_second_put_makes_new_version_and_get_returns_latest(sm_store: SecretsManagerStore) -> None:
    first = sm_store.put(NAME, "token-1", tags=OWNER)
    second = sm_store.put(NAME, "token-2", tags=OWNER)
    assert second.arn == first.arn
    assert second.version_id != first.version_id
    assert sm_store.get(NAME) == "token-2"
    assert sm_store.get(first) == "token-2"  # a ref names the secret, get returns AWSCURRENT
    versions = _raw_client().list_secret_version_ids(SecretId=NAME)["Versions"]  # type: ignore[attr-defined]
    assert {v["VersionId"] for v in versions} >= {first.version_id, second.version_id}


def test_delete_without_recovery_removes_at_once(sm_store: SecretsManagerStore) -> None:
    ref = sm_store.put(NAME, "token-1")
    sm_store.delete(ref, 0)
    with pytest.raises(SecretStoreError, match="not found"):
        sm_store.get(NAME)
    # Gone for good, not scheduled: the name can be created fresh at once.
    again = sm_store.put(NAME, "token-2")
    assert again.version_id != ref.version_id
    assert sm_store.get(NAME) == "token-2"


def test_delete_with_recovery_window_schedules(sm_store: SecretsManagerStore) -> None:
    sm_store.put(NAME, "token-1")
    sm_store.delete(NAME, 7)
    described = _raw_client().describe_secret(SecretId=NAME)  # type: ignore[attr-defined]
    assert described.get("DeletedDate")
    # Deleting again while scheduled is what a retried destroy does: not an error.
    sm_store.delete(NAME, 30)


# A secret someone else made under the name we would use: never adopted,
# never written into, never deleted, and its resource policy never kept.


def _foreign_secret(policy: bool = False) -> str:
    client = _raw_client()
    arn = client.create_secret(Name=NAME, SecretString="theirs", Tags=[{"Key": "team", "Value": "other"}])["ARN"]  # type: ignore[attr-defined]
    if policy:
        document = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
                    '"Principal":{"AWS":"arn:aws:iam::210987654321:root"},'
                    '"Action":"secretsmanager:GetSecretValue","Resource":"*"}]}')
        client.put_resource_policy(SecretId=NAME, ResourcePolicy=document)  # type: ignore[attr-defined]
    return str(arn)


def test_a_foreign_secret_of_the_same_name_is_not_written_into(sm_store: SecretsManagerStore) -> None:
    _foreign_secret()
    with pytest.raises(SecretStoreError, match="exists but was not created by this stack") as error:
        sm_store.put(NAME, "our-token", tags=OWNER)
    assert "our-token" not in str(error.value) and "theirs" not in str(error.value)
    assert _raw_client().get_secret_value(SecretId=NAME)["SecretString"] == "theirs"  # type: ignore[attr-defined]
    with pytest.raises(SecretStoreError, match="not created by this stack"):
        sm_store.put(NAME, "our-token")  # naming no owner claims nothing: still refused


def test_a_foreign_secret_is_never_deleted(sm_store: SecretsManagerStore) -> None:
    arn = _foreign_secret()
    with pytest.raises(SecretStoreError, match="refusing to delete it"):
        sm_store.delete(SecretRef(arn=arn, version_id="", name=NAME), 0, tags=OWNER)
    assert _raw_client().get_secret_value(SecretId=NAME)["SecretString"] == "theirs"  # type: ignore[attr-defined]


def test_our_secret_with_a_resource_policy_someone_added_is_not_written_into(sm_store: SecretsManagerStore) -> None:
    sm_store.put(NAME, "token-1", tags=OWNER)
    _raw_client().put_resource_policy(SecretId=NAME, ResourcePolicy='{"Version":"2012-10-17","Statement":[]}')  # type: ignore[attr-defined]
    with pytest.raises(SecretStoreError, match="has a resource policy this stack never set"):
        sm_store.put(NAME, "token-2", tags=OWNER)
    assert sm_store.get(NAME) == "token-1"


def test_our_own_secret_is_deleted_when_it_carries_our_tags(sm_store: SecretsManagerStore) -> None:
    ref = sm_store.put(NAME, "token-1", tags=OWNER)
    sm_store.delete(ref, 0, tags=OWNER)
    with pytest.raises(SecretStoreError, match="not found"):
        sm_store.get(NAME)


def test_local_store_refuses_foreign_secrets_too(local_store: LocalSecretStore) -> None:
    local_store.put("bearer-tokens", "theirs", tags={"team": "other"})
    with pytest.raises(SecretStoreError, match="not created by this stack"):
        local_store.put("bearer-tokens", "ours", tags=OWNER)
    with pytest.raises(SecretStoreError, match="refusing to delete"):
        local_store.delete("bearer-tokens", 0, tags=OWNER)
    assert local_store.get("bearer-tokens") == "theirs"


def test_delete_missing_secret_is_not_an_error(sm_store: SecretsManagerStore) -> None:
    sm_store.delete("hst-ha/never-created", 0)
    sm_store.delete("hst-ha/never-created", 7)


def test_recreate_after_scheduled_deletion_restores_and_puts(sm_store: SecretsManagerStore) -> None:
    first = sm_store.put(NAME, "token-1", tags=OWNER)
    sm_store.delete(NAME, 7)
    again = sm_store.put(NAME, "token-2", tags=OWNER)
    assert again.arn == first.arn
    described = _raw_client().describe_secret(SecretId=NAME)  # type: ignore[attr-defined]
    assert not described.get("DeletedDate")
    assert sm_store.get(NAME) == "token-2"


def test_recreate_after_scheduled_deletion_with_real_aws_error() -> None:
    # Real AWS refuses CreateSecret with InvalidRequestException here (moto says
    # ResourceExistsException), so replay AWS's answers with a stubbed client.
    client = boto3.client(
        "secretsmanager",
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{NAME}-AbCdEf"
    with Stubber(client) as stub:
        stub.add_client_error(
            "create_secret",
            service_error_code="InvalidRequestException",
            service_message="You can't create this secret because a secret with this name is already "
            "scheduled for deletion.",
        )
        stub.add_response(
            "describe_secret",
            {"ARN": arn, "Name": NAME, "DeletedDate": "2030-01-01T00:00:00Z",
             "Tags": [{"Key": k, "Value": v} for k, v in OWNER.items()]},
            {"SecretId": NAME},
        )
        stub.add_response("get_resource_policy", {"ARN": arn, "Name": NAME}, {"SecretId": NAME})
        stub.add_response("restore_secret", {"ARN": arn, "Name": NAME}, {"SecretId": NAME})
        stub.add_response(
            "put_secret_value",
            {"ARN": arn, "Name": NAME, "VersionId": "v" * 32},
            {"SecretId": NAME, "SecretString": "token-2"},
        )
        ref = SecretsManagerStore(client=client).put(NAME, "token-2", tags=OWNER)
        stub.assert_no_pending_responses()
    assert ref == SecretRef(arn=arn, version_id="v" * 32, name=NAME)


def test_create_failing_for_other_reason_is_reported_without_value() -> None:
    client = boto3.client(
        "secretsmanager", region_name=REGION, aws_access_key_id="t", aws_secret_access_key="t"
    )
    with Stubber(client) as stub:
        stub.add_client_error("create_secret", service_error_code="AccessDeniedException")
        with pytest.raises(SecretStoreError) as caught:
            SecretsManagerStore(client=client).put(NAME, "super-secret-value")
    assert "AccessDeniedException" in str(caught.value)
    assert "super-secret-value" not in str(caught.value)


@pytest.mark.parametrize("days", [-1, 1, 6, 31, 365, True, "7"])
def test_bad_recovery_window_refused(sm_store: SecretsManagerStore, days: object) -> None:
    sm_store.put(NAME, "token-1")
    with pytest.raises(SecretStoreError, match="must be 0 .* or from 7 to 30 days"):
        sm_store.delete(NAME, days)  # type: ignore[arg-type]
    assert sm_store.get(NAME) == "token-1"


def test_bad_name_refused(sm_store: SecretsManagerStore) -> None:
    with pytest.raises(SecretStoreError, match="secret name"):
        sm_store.put("bad name with spaces", "v")


def test_get_missing_secret(sm_store: SecretsManagerStore) -> None:
    with pytest.raises(SecretStoreError, match="not found"):
        sm_store.get("hst-ha/absent")


# --------------------------------------------------------------------------- local files


@pytest.fixture
def local_store(tmp_path: Path) -> LocalSecretStore:
    return LocalSecretStore(str(tmp_path / "secrets"))


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_local_round_trip_and_modes(local_store: LocalSecretStore) -> None:
    ref = local_store.put(NAME, "token-1", description="d", tags={"k": "v"})
    assert os.path.isabs(ref.arn)
    assert os.path.dirname(ref.arn) == local_store.root  # '/' in the name does not make subdirectories
    assert ref.version_id == "1"
    assert local_store.get(NAME) == "token-1"
    assert local_store.get(ref) == "token-1"
    assert _mode(local_store.root) == 0o700
    assert _mode(ref.arn) == 0o600


def test_local_modes_hold_under_permissive_umask(local_store: LocalSecretStore) -> None:
    old = os.umask(0)
    try:
        ref = local_store.put(NAME, "token-1")
    finally:
        os.umask(old)
    assert _mode(local_store.root) == 0o700
    assert _mode(ref.arn) == 0o600


def test_local_second_put_increments_version(local_store: LocalSecretStore) -> None:
    local_store.put(NAME, "token-1")
    second = local_store.put(NAME, "token-2")
    assert second.version_id == "2"
    assert local_store.get(NAME) == "token-2"
    assert _mode(second.arn) == 0o600


def test_local_leaves_no_temp_files(local_store: LocalSecretStore) -> None:
    for i in range(5):
        local_store.put(NAME, f"token-{i}")
    local_store.put("other", "x")
    assert sorted(os.listdir(local_store.root)) == sorted(
        ["hst-ha%2Fdev%2Fbearer-token%2Fadmin.json", "other.json"]
    )


def test_local_failed_write_leaves_no_temp_file(
    local_store: LocalSecretStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_store.put(NAME, "token-1")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(SecretStoreError, match="cannot write"):
        local_store.put(NAME, "token-2")
    monkeypatch.undo()
    assert os.listdir(local_store.root) == ["hst-ha%2Fdev%2Fbearer-token%2Fadmin.json"]
    assert local_store.get(NAME) == "token-1"


def test_local_delete_and_missing(local_store: LocalSecretStore) -> None:
    ref = local_store.put(NAME, "token-1")
    local_store.delete(ref, 0)
    assert not os.path.exists(ref.arn)
    with pytest.raises(SecretStoreError, match="not found"):
        local_store.get(NAME)
    local_store.delete(NAME, 7)  # missing: not an error
    with pytest.raises(SecretStoreError, match="from 7 to 30"):
        local_store.delete(NAME, 3)


def test_local_names_cannot_escape_root(local_store: LocalSecretStore, tmp_path: Path) -> None:
    ref = local_store.put("../../escape", "x")
    assert os.path.dirname(ref.arn) == local_store.root
    assert not (tmp_path.parent / "escape.json").exists()
    with pytest.raises(SecretStoreError, match="secret name"):
        local_store.put("a b", "x")


def test_local_refuses_root_open_to_others(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o755)
    with pytest.raises(SecretStoreError, match="chmod 700"):
        LocalSecretStore(str(root)).put(NAME, "token-1")
    assert list(root.iterdir()) == []


def test_errors_never_contain_values(local_store: LocalSecretStore) -> None:
    ref = local_store.put(NAME, "super-secret-value")
    with open(ref.arn, "w", encoding="utf-8") as handle:
        handle.write("{corrupt super-secret-value")
    with pytest.raises(SecretStoreError) as caught:
        local_store.get(NAME)
    assert "super-secret-value" not in str(caught.value)


# --------------------------------------------------------------------------- the Redis users' secret


USERS_PREFIX = "hst-ha/dev/redis-users"


def _document(store: SecretsManagerStore | LocalSecretStore, record: users_secret.UsersSecret) -> dict[str, str]:
    return dict(json.loads(store.get(record.ref)))


def _versions(arn: str) -> int:
    return len(_raw_client().list_secret_version_ids(SecretId=arn)["Versions"])  # type: ignore[attr-defined]


def test_users_secret_create_makes_one_password_per_role_and_returns_none(sm_store: SecretsManagerStore) -> None:
    record = users_secret.create(sm_store, USERS_PREFIX, ROLE_KEYS, OWNER)
    assert record.name.startswith(f"{USERS_PREFIX}-") and len(record.name) == len(USERS_PREFIX) + 13
    assert record.ref.arn.startswith(f"arn:aws:secretsmanager:{REGION}:") and record.ref.version_id
    assert record.roles == tuple(sorted(ROLE_KEYS))
    passwords = parse_secret(sm_store.get(record.ref))  # the nodes' own reader accepts it
    assert all(len(p) == users_secret.PASSWORD_LENGTH and p.isalnum() and p.isascii() for p in passwords.values())
    assert len(set(passwords.values())) == len(ROLE_KEYS)
    # What the provider keeps in the state: no password anywhere in it.
    assert not [p for p in passwords.values() if p in repr(record)]
    described = _raw_client().describe_secret(SecretId=record.ref.arn)  # type: ignore[attr-defined]
    assert {t["Key"]: t["Value"] for t in described["Tags"]} == OWNER
    assert described["Description"] == users_secret.DESCRIPTION
    # Two creates never share a name: nothing to collide with, nothing to adopt.
    assert users_secret.create(sm_store, USERS_PREFIX, ROLE_KEYS, OWNER).name != record.name


def test_users_secret_same_roles_again_reads_and_writes_nothing_new(sm_store: SecretsManagerStore) -> None:
    record = users_secret.create(sm_store, USERS_PREFIX, ROLE_KEYS, OWNER)
    before = _document(sm_store, record)
    again = users_secret.sync_roles(sm_store, record.ref, list(reversed(ROLE_KEYS)), OWNER)
    assert again.ref == record.ref and _versions(record.ref.arn) == 1
    assert _document(sm_store, record) == before
    assert users_secret.stored_roles(sm_store, record.ref) == tuple(sorted(ROLE_KEYS))


def test_users_secret_added_role_gets_a_password_and_the_others_keep_theirs(sm_store: SecretsManagerStore) -> None:
    old_roles = [k for k in ROLE_KEYS if k != "operator"]
    record = users_secret.create(sm_store, USERS_PREFIX, old_roles, OWNER)
    # An operator rotated hst's password since (rotation.py publishes a new version of the document).
    rotated = {**_document(sm_store, record), "hst": "R0tatedR0tatedR0tatedR0tatedR0tated12345"}
    sm_store.put(record.name, json.dumps(rotated), tags=OWNER)
    grown = users_secret.sync_roles(sm_store, record.ref, ROLE_KEYS, OWNER)
    document = _document(sm_store, grown)
    assert {k: document[k] for k in old_roles} == rotated  # kept, the rotated one included
    assert len(document["operator"]) == users_secret.PASSWORD_LENGTH
    assert grown.ref.version_id not in ("", record.ref.version_id) and _versions(record.ref.arn) == 3
    parse_secret(json.dumps(document))


def test_users_secret_removed_role_is_dropped(sm_store: SecretsManagerStore) -> None:
    record = users_secret.create(sm_store, USERS_PREFIX, [*ROLE_KEYS, "legacy"], OWNER)
    before = _document(sm_store, record)
    users_secret.sync_roles(sm_store, record.ref, ROLE_KEYS, OWNER)
    after = _document(sm_store, record)
    assert "legacy" not in after and after == {k: before[k] for k in ROLE_KEYS}


def test_users_secret_delete_honours_the_window_and_never_touches_a_foreign_secret(
    sm_store: SecretsManagerStore,
) -> None:
    record = users_secret.create(sm_store, USERS_PREFIX, ROLE_KEYS, OWNER)
    with pytest.raises(SecretStoreError, match="not created by this stack"):
        users_secret.delete(sm_store, record.ref, 7, {"hst-ha:stack": "other/hst-ha/dev"})
    with pytest.raises(SecretStoreError, match="without the stack's tags"):
        users_secret.delete(sm_store, record.ref, 7, {})
    users_secret.delete(sm_store, record.ref, 7, OWNER)
    assert _raw_client().describe_secret(SecretId=record.ref.arn)["DeletedDate"]  # type: ignore[attr-defined]
    users_secret.delete(sm_store, record.ref, 7, OWNER)  # a retried destroy
    # Someone else's secret under the name: never written into, never deleted.
    foreign = _raw_client().create_secret(  # type: ignore[attr-defined]
        Name=f"{USERS_PREFIX}-foreign", SecretString='{"hst": "x"}', Tags=[{"Key": "team", "Value": "other"}])
    ref = SecretRef(arn=foreign["ARN"], version_id="", name=f"{USERS_PREFIX}-foreign")
    with pytest.raises(SecretStoreError, match="not created by this stack"):
        users_secret.sync_roles(sm_store, ref, ROLE_KEYS, OWNER)
    with pytest.raises(SecretStoreError, match="not created by this stack"):
        users_secret.delete(sm_store, ref, 0, OWNER)
    assert _raw_client().get_secret_value(SecretId=foreign["ARN"])["SecretString"] == '{"hst": "x"}'  # type: ignore[attr-defined]


def test_users_secret_refuses_bad_roles_missing_tags_and_a_corrupt_document(sm_store: SecretsManagerStore) -> None:
    for roles in ([], ["hst", "hst"], ["Bad Role"]):
        with pytest.raises(SecretStoreError, match="roles"):
            users_secret.create(sm_store, USERS_PREFIX, roles, OWNER)
    with pytest.raises(SecretStoreError, match="needs the stack's tags"):
        users_secret.create(sm_store, USERS_PREFIX, ROLE_KEYS, {})
    record = users_secret.create(sm_store, USERS_PREFIX, ROLE_KEYS, OWNER)
    sm_store.put(record.name, "not json", tags=OWNER)
    with pytest.raises(SecretStoreError, match="refusing to overwrite it") as error:
        users_secret.sync_roles(sm_store, record.ref, [*ROLE_KEYS, "new"], OWNER)
    assert "not json" not in str(error.value)
    assert sm_store.get(record.ref) == "not json"


def test_users_secret_local_store_follows_the_same_rules(tmp_path: Path) -> None:
    store = LocalSecretStore(tmp_path / "secrets")
    record = users_secret.create(store, USERS_PREFIX, ROLE_KEYS[:-1], OWNER)
    ref = SecretRef(arn="", version_id="", name=record.name)
    first = json.loads(store.get(ref))
    grown = users_secret.sync_roles(store, ref, ROLE_KEYS, OWNER)
    assert grown.ref.version_id == "2"
    assert {k: v for k, v in json.loads(store.get(ref)).items() if k in first} == first
    users_secret.delete(store, ref, 0, OWNER)
    assert not list((tmp_path / "secrets").glob("*.json"))
