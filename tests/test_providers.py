"""The dynamic providers, called the way the Pulumi engine calls them.

Secrets Manager is moto, in-process. Every property bag crosses `wire()` first, the engine's own
serialization (numbers become floats, None values vanish), so the providers see what they would
see under `pulumi up`. Each provider is also pickled with Pulumi's own `serialize_provider` and
loaded in a fresh interpreter, as the provider host does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import dill
import pytest
from moto import mock_aws
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc

from components.aws.providers._common import UNKNOWN, aws_store, local_store
from components.aws.providers.cluster_tls import ClusterTlsProvider
from components.aws.providers.redis_users import RedisUsersSecretProvider
from components.aws.providers.sentinel_quorum import SentinelQuorumProvider
from components.aws.providers.tokens import BootstrapTokensProvider, SigningKeyProvider
from components.bundle import tls
from components.bundle.users import ROLE_KEYS, parse_secret
from components.runtime import bearer_token, bootstrap, ssm_probe, tls_secret
from components.runtime.secret_store import LocalSecretStore, SecretsManagerStore, SecretStoreError
from components.settings import TokenSettings
from tests.pulumi_harness import ROOT, outs_of

pytestmark = pytest.mark.timeout(120)

REGION = "eu-west-1"
OWNER = {"hst-ha:stack": "acme/hst-ha/test"}
T0 = datetime(2031, 3, 1, 12, 0, 0, tzinfo=UTC)


def wire(props: dict[str, Any] | None, keep_unknowns: bool = False) -> dict[str, Any]:
    """Through the engine's property serialization and back, as a provider method receives it."""
    assert props is not None, "the provider returned no outputs"
    # A private loop, as the provider host uses: asyncio.run() would unset the thread's current
    # loop, which the Pulumi mock tests that run later in this process still need.
    loop = asyncio.new_event_loop()
    try:
        struct = loop.run_until_complete(rpc.serialize_properties(props, {}))
    finally:
        loop.close()
    return rpc.deserialize_properties(struct, keep_unknowns)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Fake credentials so that nothing can ever reach a real account from a test.
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(variable, "testing")
    for variable in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(variable, raising=False)
    with mock_aws():
        yield


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Every expiry decision reads bootstrap.utcnow; this one moves only when told."""
    fake = Clock()
    monkeypatch.setattr(bootstrap, "utcnow", fake)
    return fake


def secrets_client():
    return boto3.client("secretsmanager", region_name=REGION)


def version_count(secret_id: str) -> int:
    return len(secrets_client().list_secret_version_ids(SecretId=secret_id)["Versions"])


# --------------------------------------------------------------------------- SigningKey


def signing_key_props(**overrides: Any) -> dict[str, Any]:
    props = {
        "key_length": 1024,  # the smallest length asnodeadmin accepts: fast tests
        "store": aws_store(REGION),
        "secret_name_prefix": "hst-ha/test/token-signing-key",
        "recovery_window_days": 0,
        "tags": OWNER,
        "provider_version": "1",
        "public_key_pem": None,
        "secret_arn": None,
        "secret_name": None,
        "fingerprint": None,
    }
    return wire({**props, **overrides}, keep_unknowns=True)


def create_signing_key(**overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    props = signing_key_props(**overrides)
    result = SigningKeyProvider().create(props)
    assert result.outs is not None
    return props, wire(result.outs)


def test_signing_key_create_keeps_the_private_key_in_its_own_secret(aws_env):
    _, outs = create_signing_key()
    assert outs["secret_arn"].startswith(f"arn:aws:secretsmanager:{REGION}:")
    assert outs["secret_name"].startswith("hst-ha/test/token-signing-key-")
    private_pem = secrets_client().get_secret_value(SecretId=outs["secret_arn"])["SecretString"]
    key = bearer_token.load_private_key_pem(private_pem)
    assert key.key_size == 1024
    assert bearer_token.public_key_pem(key) == outs["public_key_pem"]
    assert "PRIVATE KEY" not in json.dumps(outs)
    tags = secrets_client().describe_secret(SecretId=outs["secret_arn"])["Tags"]
    assert {"Key": "hst-ha:stack", "Value": "acme/hst-ha/test"} in tags


def test_signing_key_no_op_up_and_bookkeeping_updates_never_generate_a_key(aws_env, monkeypatch):
    props, outs = create_signing_key()
    monkeypatch.setattr(bearer_token, "generate_signing_key", lambda *a: pytest.fail("a key was generated"))
    provider = SigningKeyProvider()
    diff = provider.diff(outs["secret_arn"], outs, props)
    assert diff.changes is False and not diff.replaces

    news = signing_key_props(recovery_window_days=7, provider_version="2")
    diff = provider.diff(outs["secret_arn"], outs, news)
    assert diff.changes is True and not diff.replaces
    updated = outs_of(provider.update(outs["secret_arn"], outs, news))
    assert updated["public_key_pem"] == outs["public_key_pem"]
    assert updated["secret_arn"] == outs["secret_arn"]
    assert updated["recovery_window_days"] == 7
    assert version_count(outs["secret_arn"]) == 1


def test_signing_key_is_replaced_only_when_its_length_or_home_changes(aws_env):
    _, outs = create_signing_key()
    provider = SigningKeyProvider()
    diff = provider.diff(outs["secret_arn"], outs, signing_key_props(key_length=2048))
    assert diff.changes is True and diff.replaces == ["key_length"]
    # The replacement lives in a secret of its own, so creating it first cannot clobber the old one.
    assert diff.delete_before_replace is False
    _, new_outs = create_signing_key(key_length=2048)
    assert new_outs["secret_name"] != outs["secret_name"]
    assert secrets_client().get_secret_value(SecretId=outs["secret_arn"])["SecretString"]
    diff = provider.diff(outs["secret_arn"], outs, signing_key_props(store=aws_store("us-east-1")))
    assert diff.replaces == ["store"]


def test_signing_key_diff_tolerates_unknown_inputs_in_preview():
    olds = signing_key_props()
    news = signing_key_props(store={"kind": "aws", "region": UNKNOWN})
    diff = SigningKeyProvider().diff("id", olds, news)
    assert diff.changes is None  # the engine decides from its own input diff; `up` asks again
    check = SigningKeyProvider().check({}, news)
    assert check.failures == []


def test_signing_key_check_reports_every_bad_input():
    news = signing_key_props(key_length=3000, recovery_window_days=3, store={"kind": "gcp"})
    failures = {f.property: f.reason for f in SigningKeyProvider().check({}, news).failures}
    assert "power of 2 from 1024 to 16384" in failures["key_length"]
    assert "0 (delete at once) or from 7 to 30" in failures["recovery_window_days"]
    assert "must be aws or local" in failures["store"]


@pytest.mark.parametrize("days", [0, 7])
def test_signing_key_delete_honours_the_recovery_window(aws_env, days):
    props, outs = create_signing_key(recovery_window_days=days)
    SigningKeyProvider().delete(outs["secret_arn"], outs)
    if days == 0:
        with pytest.raises(secrets_client().exceptions.ResourceNotFoundException):
            secrets_client().describe_secret(SecretId=outs["secret_arn"])
    else:
        assert secrets_client().describe_secret(SecretId=outs["secret_arn"])["DeletedDate"]
    SigningKeyProvider().delete(outs["secret_arn"], outs)  # a retried destroy finds it gone: fine


# --------------------------------------------------------------------------- BootstrapTokens


def token_props(signing_key_arn: str, **overrides: Any) -> dict[str, Any]:
    props = {
        "signing_key_secret_id": signing_key_arn,
        "store": aws_store(REGION),
        "secret_name_prefix": "hst-ha/test/bearer-tokens",
        "access_key_id": "hst-ha-bootstrap",
        "user_ids": ["admin", "ops"],
        "group_ids": [],
        "scope_role": "admin",
        "expires_at": "",
        "lifetime_hours": 1,
        "key_length": 1024,
        "recovery_window_days": 0,
        "tags": OWNER,
        "provider_version": "1",
        "secret_arn": None,
        "secret_name": None,
        "token_expires_at": None,
        "token_issued_at": None,
        "token_verification_key": None,
        "digest": None,
    }
    return wire({**props, **overrides}, keep_unknowns=True)


@pytest.fixture
def signing_key(aws_env) -> dict[str, Any]:
    return create_signing_key()[1]


def create_tokens(signing_key: dict[str, Any], **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    props = token_props(signing_key["secret_arn"], **overrides)
    result = BootstrapTokensProvider().create(props)
    assert result.outs is not None
    return props, wire(result.outs)


def stored_document(secret_id: str) -> dict[str, Any]:
    return json.loads(secrets_client().get_secret_value(SecretId=secret_id)["SecretString"])


def stored_tokens(outs: dict[str, Any]) -> dict[str, str]:
    """The tokens live only in their secret: read them there, never from the outputs."""
    return {user: entry["token"] for user, entry in stored_document(outs["secret_arn"])["tokens"].items()}


def test_tokens_create_stores_one_document_with_a_token_per_user(signing_key, clock):
    _, outs = create_tokens(signing_key, group_ids=["eng", "ops"])
    assert re.fullmatch(r"hst-ha/test/bearer-tokens-[0-9a-f]{12}", outs["secret_name"])
    described = secrets_client().describe_secret(SecretId=outs["secret_arn"])
    assert described["Name"] == outs["secret_name"]
    assert described["Tags"] == [{"Key": "hst-ha:stack", "Value": "acme/hst-ha/test"}]
    document = stored_document(outs["secret_arn"])
    assert set(document) == {"access_key_id", "token_verification_key", "tokens"}
    assert document["access_key_id"] == "hst-ha-bootstrap"
    assert document["token_verification_key"] == signing_key["public_key_pem"]
    assert set(document["tokens"]) == {"admin", "ops"}
    for user, entry in document["tokens"].items():
        payload = bearer_token.verify(entry["token"], signing_key["public_key_pem"], clock.now)
        assert payload["user_id"] == user and payload["group_ids"] == ["eng", "ops"]
        assert payload["scope"] == "node.hst-ha-bootstrap:admin:all"
        assert entry == {
            "token": entry["token"], "expires_at": "2031-03-01T13:00:00Z", "issued_at": "2031-03-01T12:00:00Z"
        }
    assert outs["token_expires_at"] == {"admin": "2031-03-01T13:00:00Z", "ops": "2031-03-01T13:00:00Z"}
    assert "tokens" not in outs  # nowhere in the stack's state
    assert outs["token_verification_key"] == signing_key["public_key_pem"]
    assert len(outs["digest"]) == 64


def test_tokens_second_up_with_the_same_inputs_changes_nothing(signing_key, clock):
    props, outs = create_tokens(signing_key)
    before = stored_tokens(outs)
    # An `up` 59 minutes into a 1-hour lifetime is still a no-op (it was not past 54 minutes).
    clock.advance(minutes=59)
    provider = BootstrapTokensProvider()
    assert provider.diff(outs["secret_arn"], outs, props).changes is False
    # Even an update forced by something else (a provider_version bump) re-mints nothing.
    news = token_props(signing_key["secret_arn"], provider_version="2")
    assert provider.diff(outs["secret_arn"], outs, news).changes is True
    updated = wire(provider.update(outs["secret_arn"], outs, news).outs)
    assert stored_tokens(updated) == before and updated["digest"] == outs["digest"]
    assert updated["secret_name"] == outs["secret_name"]
    assert version_count(outs["secret_arn"]) == 1


def test_tokens_are_reminted_only_once_expired(signing_key, clock):
    props, outs = create_tokens(signing_key)
    before = stored_tokens(outs)
    provider = BootstrapTokensProvider()
    clock.advance(minutes=59, seconds=59)
    assert provider.diff(outs["secret_arn"], outs, props).changes is False
    clock.advance(seconds=1)  # 13:00:00: expired
    assert provider.diff(outs["secret_arn"], outs, props).changes is True
    updated = wire(provider.update(outs["secret_arn"], outs, props).outs)
    assert stored_tokens(updated)["admin"] != before["admin"]
    assert updated["token_expires_at"]["admin"] == "2031-03-01T14:00:00Z"
    clock.advance(hours=3)  # long expired
    assert provider.diff(outs["secret_arn"], updated, props).changes is True


def test_a_longer_lifetime_is_an_input_change_and_mints_for_that_long(signing_key, clock):
    props, outs = create_tokens(signing_key)
    before = stored_tokens(outs)
    news = token_props(signing_key["secret_arn"], lifetime_hours=24)
    provider = BootstrapTokensProvider()
    assert provider.diff(outs["secret_arn"], outs, news).changes is True
    updated = wire(provider.update(outs["secret_arn"], outs, news).outs)
    assert updated["token_expires_at"] == {"admin": "2031-03-02T12:00:00Z", "ops": "2031-03-02T12:00:00Z"}
    assert not set(stored_tokens(updated).values()) & set(before.values())
    clock.advance(hours=23)
    assert provider.diff(outs["secret_arn"], updated, news).changes is False


def test_changed_inputs_remint_only_the_tokens_they_change(signing_key, clock):
    props, outs = create_tokens(signing_key, user_ids=["admin"])
    provider = BootstrapTokensProvider()
    news = token_props(signing_key["secret_arn"], user_ids=["admin", "ops"])
    assert provider.diff(outs["secret_arn"], outs, news).changes is True
    first = stored_tokens(outs)
    added = wire(provider.update(outs["secret_arn"], outs, news).outs)
    added_tokens = stored_tokens(added)
    assert added_tokens["admin"] == first["admin"]  # still exactly what would be minted
    assert set(added_tokens) == {"admin", "ops"}

    news = token_props(signing_key["secret_arn"], user_ids=["admin", "ops"], scope_role="user")
    assert provider.diff(outs["secret_arn"], added, news).changes is True
    role_changed = wire(provider.update(outs["secret_arn"], added, news).outs)
    for user, token in stored_tokens(role_changed).items():
        assert token != added_tokens[user]
        assert bearer_token.decode(token).payload["scope"] == "node.hst-ha-bootstrap:user:all"


def test_a_new_signing_key_remints_every_token(signing_key, clock):
    props, outs = create_tokens(signing_key)
    _, new_key = create_signing_key(key_length=2048)
    news = token_props(new_key["secret_arn"])
    provider = BootstrapTokensProvider()
    assert provider.diff(outs["secret_arn"], outs, news).changes is True
    updated = wire(provider.update(outs["secret_arn"], outs, news).outs)
    for token in stored_tokens(updated).values():
        bearer_token.verify(token, new_key["public_key_pem"], clock.now)
    assert updated["token_verification_key"] == new_key["public_key_pem"]


def test_tokens_diff_tolerates_unknown_inputs_in_preview(signing_key, clock):
    props, outs = create_tokens(signing_key)
    provider = BootstrapTokensProvider()
    # The signing key is being replaced: its ARN is unknown until `up` creates it.
    news = token_props(UNKNOWN)
    assert provider.diff(outs["secret_arn"], outs, news).changes is True
    assert provider.check(outs, news).failures == []
    news = token_props(signing_key["secret_arn"], store={"kind": "aws", "region": UNKNOWN})
    assert provider.diff(outs["secret_arn"], outs, news).changes is None


def test_tokens_check_refuses_what_asnodeadmin_refuses(clock):
    news = token_props("arn:x", user_ids=[], scope_role="root", expires_at="2001-01-01T00:00:00Z")
    failures = BootstrapTokensProvider().check({}, news).failures
    reasons = " | ".join(f.reason for f in failures)
    assert "must list at least one user id" in reasons
    news = token_props("arn:x", scope_role="root", expires_at="2001-01-01T00:00:00Z")
    reasons = " | ".join(f.reason for f in BootstrapTokensProvider().check({}, news).failures)
    assert "--scope-role 'root'" in reasons and "is not in the future" in reasons
    news = token_props("arn:x", lifetime_hours=169, user_ids=[f"user{i}" for i in range(100)], key_length=4096)
    reasons = " | ".join(f.reason for f in BootstrapTokensProvider().check({}, news).failures)
    assert "169: must be from 1 to 168 hours" in reasons
    assert "100 user ids" in reasons and "over Secrets Manager's 65536-byte limit" in reasons


def test_tokens_never_adopt_write_into_or_delete_a_secret_they_did_not_create(signing_key, clock):
    """Issue 13, Medium 5: the predictable `<project>/<stack>/bearer-tokens` name, or another stack
    of the same project and stack name in this account, must not be taken over."""
    foreign = secrets_client().create_secret(Name="hst-ha/test/bearer-tokens", SecretString="theirs")["ARN"]
    _, outs = create_tokens(signing_key)
    _, other_stack = create_tokens(signing_key)  # same prefix: a second organization's `test` stack
    assert len({foreign, outs["secret_arn"], other_stack["secret_arn"]}) == 3
    BootstrapTokensProvider().delete(outs["secret_arn"], outs)
    assert secrets_client().get_secret_value(SecretId=foreign)["SecretString"] == "theirs"
    assert stored_tokens(other_stack)
    # A state that names a secret this stack did not tag (hand-edited, or from an older version
    # that adopted one) is refused, not deleted.
    with pytest.raises(SecretStoreError, match="refusing to delete it"):
        BootstrapTokensProvider().delete(
            foreign, {**other_stack, "secret_arn": foreign, "secret_name": "hst-ha/test/bearer-tokens"})
    assert secrets_client().get_secret_value(SecretId=foreign)["SecretString"] == "theirs"


def test_tokens_delete_removes_the_secret(signing_key, clock):
    _, outs = create_tokens(signing_key)
    BootstrapTokensProvider().delete(outs["secret_arn"], outs)
    with pytest.raises(secrets_client().exceptions.ResourceNotFoundException):
        secrets_client().describe_secret(SecretId=outs["secret_arn"])


def test_no_secret_in_errors_or_plain_outputs(signing_key, clock):
    private_pem = secrets_client().get_secret_value(SecretId=signing_key["secret_arn"])["SecretString"]
    _, outs = create_tokens(signing_key)
    text = json.dumps(outs)
    assert "PRIVATE KEY" not in text
    assert not [t for t in stored_tokens(outs).values() if t in text]

    # A signing-key secret that holds garbage: the message names the problem, not the content.
    secrets_client().put_secret_value(SecretId=signing_key["secret_arn"], SecretString="NotAKey" + private_pem[40:200])
    with pytest.raises(bearer_token.TokenError) as error:
        BootstrapTokensProvider().create(token_props(signing_key["secret_arn"], secret_name_prefix="hst-ha/test/other"))
    assert private_pem[40:80] not in str(error.value)
    # A missing one: the message names the secret only.
    with pytest.raises(SecretStoreError) as missing:
        BootstrapTokensProvider().create(
            token_props(signing_key["secret_arn"] + "-gone", secret_name_prefix="hst-ha/test/other"))
    assert "not found" in str(missing.value)


# --------------------------------------------------------------------------- the local target's path


def test_local_minting_is_idempotent_and_uses_the_same_rules(tmp_path, clock):
    store = LocalSecretStore(tmp_path / "secrets")
    settings = TokenSettings("hst-ha-bootstrap", ("admin",), ("eng",), "admin", None, 1024)
    private_pem, record = bootstrap.ensure_signing_key(store, 1024)
    first = bootstrap.mint_bootstrap_tokens(settings, store, private_pem, now=clock.now)
    assert first.ref is not None and first.minted == ("admin",)
    again = bootstrap.mint_bootstrap_tokens(settings, store, private_pem, now=clock.now + timedelta(minutes=10))
    assert again.ref is None and again.reused == ("admin",) and again.tokens == first.tokens
    assert json.loads(store.get(bootstrap.BEARER_TOKENS_SECRET)) == first.document
    # The key is reused while its length is the configured one.
    assert bootstrap.ensure_signing_key(store, 1024)[1].public_key_pem == record.public_key_pem
    assert bootstrap.ensure_signing_key(store, 2048)[1].public_key_pem != record.public_key_pem
    assert "tokens" not in repr(first) or first.tokens["admin"] not in repr(first)


def test_local_bootstrap_tokens_is_the_local_targets_one_call(tmp_path, clock):
    from components.settings import parse_settings

    settings = parse_settings({"tokenUserIds": ["admin", "ops"], "tokenKeyLength": 1024}, now=clock.now)
    store = LocalSecretStore(tmp_path / "secrets")
    record, result = bootstrap.local_bootstrap_tokens(settings, store, now=clock.now)
    document = json.loads(store.get(bootstrap.BEARER_TOKENS_SECRET))
    assert document["token_verification_key"] == record.public_key_pem
    for token in document["tokens"].values():
        bearer_token.verify(token["token"], record.public_key_pem, clock.now)
    _, second = bootstrap.local_bootstrap_tokens(settings, store, now=clock.now)
    assert second.ref is None and second.tokens == result.tokens


def test_providers_work_against_a_local_store(tmp_path, clock):
    store = local_store(str(tmp_path / "secrets"))
    key_outs = wire(SigningKeyProvider().create(signing_key_props(store=store)).outs)
    assert key_outs["secret_arn"] == key_outs["secret_name"]  # a local store reads by name
    props = token_props(key_outs["secret_arn"], store=store, secret_name_prefix="bearer-tokens")
    outs = wire(BootstrapTokensProvider().create(props).outs)
    assert outs["secret_arn"] == outs["secret_name"] and outs["secret_name"].startswith("bearer-tokens-")
    document = json.loads(LocalSecretStore(tmp_path / "secrets").get(outs["secret_name"]))
    bearer_token.verify(document["tokens"]["admin"]["token"], key_outs["public_key_pem"], clock.now)
    BootstrapTokensProvider().delete(outs["secret_arn"], outs)
    SigningKeyProvider().delete(key_outs["secret_arn"], key_outs)
    assert not list((tmp_path / "secrets").glob("*.json"))


# --------------------------------------------------------------------------- RedisUsersSecret


def users_props(**overrides: Any) -> dict[str, Any]:
    props = {
        "store": aws_store(REGION),
        "secret_name_prefix": "hst-ha/test/redis-users",
        "roles": sorted(ROLE_KEYS),
        "tags": OWNER,
        "recovery_window_days": 7,
        "provider_version": "1",
        "secret_arn": None,
        "secret_name": None,
        "version_id": None,
        "secret_tags": None,
    }
    return wire({**props, **overrides}, keep_unknowns=True)


def create_users(**overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    props = users_props(**overrides)
    result = RedisUsersSecretProvider().create(props)
    assert result.id == outs_of(result)["secret_arn"]
    return props, wire(outs_of(result))


def passwords(outs: dict[str, Any]) -> dict[str, str]:
    return json.loads(secrets_client().get_secret_value(SecretId=outs["secret_arn"])["SecretString"])


def test_users_secret_create_keeps_the_passwords_only_in_the_secret(aws_env):
    props, outs = create_users()
    assert "secret_arn" not in props  # None-valued inputs do not cross the wire
    stored = parse_secret(json.dumps(passwords(outs)))  # the nodes' reader: every role, well formed
    # The state (`pulumi stack export --show-secrets`): where and which, never what.
    state = json.dumps(outs)
    assert not [role for role, password in stored.items() if password in state]
    assert set(outs) == {*props, "secret_arn", "secret_name", "version_id", "secret_tags"}
    assert outs["secret_name"].startswith("hst-ha/test/redis-users-") and outs["roles"] == sorted(ROLE_KEYS)
    assert outs["version_id"] and outs["secret_tags"] == OWNER
    tags = secrets_client().describe_secret(SecretId=outs["secret_arn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == OWNER


def test_users_secret_second_up_and_bookkeeping_changes_touch_nothing(aws_env):
    provider = RedisUsersSecretProvider()
    props, outs = create_users()
    assert provider.diff(outs["secret_arn"], outs, props).changes is False
    reordered = users_props(roles=list(reversed(ROLE_KEYS)))
    assert provider.diff(outs["secret_arn"], outs, reordered).changes is False
    # A renamed stack keeps its secret: name and tags are fixed at create.
    renamed = users_props(secret_name_prefix="other/prod/redis-users", tags={"hst-ha:stack": "acme/other/prod"})
    assert provider.diff(outs["secret_arn"], outs, renamed).changes is False
    window = users_props(recovery_window_days=30)
    assert provider.diff(outs["secret_arn"], outs, window).changes is True
    before = passwords(outs)
    updated = wire(outs_of(provider.update(outs["secret_arn"], outs, window)))
    assert passwords(outs) == before and version_count(outs["secret_arn"]) == 1
    assert updated["version_id"] == outs["version_id"] and updated["recovery_window_days"] == 30


def test_users_secret_a_role_added_to_users_py_gets_only_its_own_password(aws_env):
    provider = RedisUsersSecretProvider()
    old_roles = sorted(k for k in ROLE_KEYS if k != "monitor")
    _, outs = create_users(roles=old_roles)
    before = passwords(outs)
    news = users_props()
    assert provider.diff(outs["secret_arn"], outs, news).changes is True
    updated = wire(outs_of(provider.update(outs["secret_arn"], outs, news)))
    after = passwords(outs)
    assert {k: after[k] for k in old_roles} == before and len(after["monitor"]) == 40
    assert updated["roles"] == sorted(ROLE_KEYS) and updated["version_id"] != outs["version_id"]
    assert updated["secret_arn"] == outs["secret_arn"] and version_count(outs["secret_arn"]) == 2
    assert after["monitor"] not in json.dumps(updated)


def test_users_secret_refresh_sees_a_role_removed_by_hand_and_up_restores_it(aws_env):
    provider = RedisUsersSecretProvider()
    props, outs = create_users()
    document = passwords(outs)
    del document["monitor"]
    secrets_client().put_secret_value(SecretId=outs["secret_arn"], SecretString=json.dumps(document))
    read = provider.read(outs["secret_arn"], outs)
    refreshed = wire(read.outs)
    assert read.id == outs["secret_arn"] and "monitor" not in refreshed["roles"]
    assert provider.diff(outs["secret_arn"], refreshed, props).changes is True
    provider.update(outs["secret_arn"], refreshed, props)
    assert {k: passwords(outs)[k] for k in document} == document and "monitor" in passwords(outs)


def test_users_secret_moves_only_with_its_store_and_waits_for_unknowns(aws_env):
    provider = RedisUsersSecretProvider()
    _, outs = create_users()
    moved = provider.diff(outs["secret_arn"], outs, users_props(store=aws_store("us-east-1")))
    assert moved.changes is True and moved.replaces == ["store"] and moved.delete_before_replace is False
    assert provider.diff(outs["secret_arn"], outs, users_props(store=UNKNOWN)).changes is None
    assert provider.diff(outs["secret_arn"], outs, users_props(roles=UNKNOWN)).changes is True


def test_users_secret_destroy_deletes_its_own_secret_and_never_a_foreign_one(aws_env):
    provider = RedisUsersSecretProvider()
    _, outs = create_users()
    provider.delete(outs["secret_arn"], outs)
    assert secrets_client().describe_secret(SecretId=outs["secret_arn"])["DeletedDate"]  # 7-day window
    provider.delete(outs["secret_arn"], outs)  # a retried destroy
    foreign = secrets_client().create_secret(Name="hst-ha/test/redis-users-foreign", SecretString="{}")
    theirs = {**outs, "secret_arn": foreign["ARN"], "secret_name": "hst-ha/test/redis-users-foreign"}
    with pytest.raises(SecretStoreError, match="not created by this stack"):
        provider.delete(foreign["ARN"], theirs)
    with pytest.raises(SecretStoreError, match="not created by this stack"):
        provider.update(foreign["ARN"], {**theirs, "roles": ["hst"]}, users_props())
    assert secrets_client().get_secret_value(SecretId=foreign["ARN"])["SecretString"] == "{}"


def test_users_secret_check_reports_every_bad_input():
    failures = RedisUsersSecretProvider().check({}, users_props(
        roles=[], tags={}, recovery_window_days=3, store={"kind": "gcp"}, secret_name_prefix="a b")).failures
    assert sorted(f.property for f in failures) == [
        "recovery_window_days", "roles", "secret_name_prefix", "store", "tags"]
    assert RedisUsersSecretProvider().check({}, users_props()).failures == []
    assert RedisUsersSecretProvider().check({}, users_props(roles=UNKNOWN, store=UNKNOWN)).failures == []


def test_users_secret_works_against_a_local_store(tmp_path):
    provider = RedisUsersSecretProvider()
    props, outs = create_users(store=local_store(str(tmp_path / "secrets")), roles=sorted(ROLE_KEYS)[:-1])
    store = LocalSecretStore(tmp_path / "secrets")
    first = json.loads(store.get(outs["secret_name"]))
    provider.update(outs["secret_arn"], outs, users_props(store=local_store(str(tmp_path / "secrets"))))
    assert set(json.loads(store.get(outs["secret_name"]))) == set(ROLE_KEYS)
    assert {k: v for k, v in json.loads(store.get(outs["secret_name"])).items() if k in first} == first
    provider.delete(outs["secret_arn"], outs)
    assert not list((tmp_path / "secrets").glob("*.json"))


# --------------------------------------------------------------------------- ClusterTls

TLS_ADDRESSES = ["10.0.1.10", "10.0.2.10", "10.0.3.10"]
GROWN = [*TLS_ADDRESSES, "10.0.1.11", "10.0.2.11"]


def tls_props(**overrides: Any) -> dict[str, Any]:
    props = {
        "store": aws_store(REGION),
        "secret_name_prefix": "hst-ha/test/tls",
        "ca_secret_name_prefix": "hst-ha/test/tls-ca",
        "addresses": sorted(TLS_ADDRESSES),
        "tags": OWNER,
        "recovery_window_days": 7,
        "provider_version": "1",
        "secret_arn": None, "secret_name": None, "version_id": None,
        "ca_secret_arn": None, "ca_secret_name": None, "secret_tags": None,
    }
    return wire({**props, **overrides}, keep_unknowns=True)


def create_tls(**overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    props = tls_props(**overrides)
    result = ClusterTlsProvider().create(props)
    assert result.id == outs_of(result)["secret_arn"]
    return props, wire(outs_of(result))


def stored(secret_id: str) -> dict[str, str]:
    return json.loads(secrets_client().get_secret_value(SecretId=secret_id)["SecretString"])


def test_tls_module_makes_a_ca_and_a_certificate_per_address_in_two_tagged_secrets(aws_env):
    store = SecretsManagerStore(region=REGION)
    made = tls_secret.create(store, "hst-ha/test/tls", "hst-ha/test/tls-ca", list(reversed(TLS_ADDRESSES)), OWNER)
    assert made.addresses == tuple(TLS_ADDRESSES)  # in address order, whatever the order given
    assert re.fullmatch(r"hst-ha/test/tls-[0-9a-f]{12}", made.nodes.name)
    assert re.fullmatch(r"hst-ha/test/tls-ca-[0-9a-f]{12}", made.ca.name)
    nodes, ca = stored(made.nodes.arn), stored(made.ca.arn)
    assert set(ca) == {tls.CA_CERT, tls.CA_KEY} and nodes[tls.CA_CERT] == ca[tls.CA_CERT]
    assert ca[tls.CA_KEY] not in json.dumps(nodes)  # the nodes' secret never holds the CA's key
    for address in TLS_ADDRESSES:
        assert tls.check_tls_document(nodes, address) == []
    for ref in (made.nodes, made.ca):
        tags = secrets_client().describe_secret(SecretId=ref.arn)["Tags"]
        assert {t["Key"]: t["Value"] for t in tags} == OWNER
    assert tls_secret.stored_addresses(store, made.nodes) == tuple(TLS_ADDRESSES)
    # The same addresses: nothing is written.
    same = tls_secret.sync_addresses(store, made, TLS_ADDRESSES, OWNER)
    assert same == made and version_count(made.nodes.arn) == 1
    for bad, why in (([], "at least one"), (["node-1"], "not an IP address"), (["10.0.1.10"] * 2, "twice")):
        with pytest.raises(SecretStoreError, match=why):
            tls_secret.create(store, "hst-ha/test/tls", "hst-ha/test/tls-ca", bad, OWNER)
    with pytest.raises(SecretStoreError, match="tags"):
        tls_secret.create(store, "hst-ha/test/tls", "hst-ha/test/tls-ca", TLS_ADDRESSES, {})


def test_tls_module_grow_signs_only_the_new_addresses_with_the_stored_ca(aws_env):
    store = SecretsManagerStore(region=REGION)
    made = tls_secret.create(store, "hst-ha/test/tls", "hst-ha/test/tls-ca", TLS_ADDRESSES, OWNER)
    before, ca_before = stored(made.nodes.arn), stored(made.ca.arn)
    grown = tls_secret.sync_addresses(store, made, GROWN, OWNER)
    after = stored(made.nodes.arn)
    assert grown.nodes.arn == made.nodes.arn and grown.nodes.version_id != made.nodes.version_id
    assert {k: after[k] for k in before} == before  # every existing entry byte for byte
    assert all(tls.check_tls_document(after, a) == [] for a in GROWN)
    assert stored(made.ca.arn) == ca_before and version_count(made.ca.arn) == 1  # the CA is only read
    # A certificate spoiled by hand is signed again; a removed address loses its entries.
    spoiled = {**after, tls.cert_entry("10.0.2.11"): after[tls.cert_entry("10.0.1.11")]}
    secrets_client().put_secret_value(SecretId=made.nodes.arn, SecretString=json.dumps(spoiled))
    assert "10.0.2.11" not in tls_secret.stored_addresses(store, made.nodes)
    tls_secret.sync_addresses(store, grown, GROWN[:-1] + ["10.0.2.11"], OWNER)
    repaired = stored(made.nodes.arn)
    assert tls.check_tls_document(repaired, "10.0.2.11") == []
    assert repaired[tls.cert_entry("10.0.1.11")] == after[tls.cert_entry("10.0.1.11")]
    tls_secret.sync_addresses(store, grown, TLS_ADDRESSES, OWNER)
    assert stored(made.nodes.arn) == before
    # A nodes' secret that no longer matches the CA secret is not written over.
    secrets_client().put_secret_value(SecretId=made.nodes.arn, SecretString=json.dumps(
        {**before, tls.CA_CERT: tls.make_ca().cert_pem}))
    with pytest.raises(SecretStoreError, match="does not hold the CA certificate"):
        tls_secret.sync_addresses(store, made, GROWN, OWNER)


def test_tls_module_a_failed_create_leaves_no_ca_behind(aws_env, monkeypatch):
    store = SecretsManagerStore(region=REGION)
    real_put = store.put

    def put(name: str, value: str, description: str = "", tags: Any = None):
        if name.startswith("hst-ha/test/tls-") and not name.startswith("hst-ha/test/tls-ca-"):
            raise SecretStoreError("cannot create secret: LimitExceededException")
        return real_put(name, value, description, tags)

    monkeypatch.setattr(store, "put", put)
    with pytest.raises(SecretStoreError, match="LimitExceeded"):
        tls_secret.create(store, "hst-ha/test/tls", "hst-ha/test/tls-ca", TLS_ADDRESSES, OWNER)
    assert secrets_client().list_secrets()["SecretList"] == []


def test_cluster_tls_state_holds_where_and_which_never_a_pem(aws_env):
    props, outs = create_tls()
    nodes, ca = stored(outs["secret_arn"]), stored(outs["ca_secret_arn"])
    # The state (`pulumi stack export --show-secrets`): ARNs, names, version id, addresses, tags.
    state = json.dumps(outs)
    assert "-----BEGIN" not in state and not [v for v in (*nodes.values(), *ca.values()) if v in state]
    assert set(outs) == {*props, "secret_arn", "secret_name", "version_id", "ca_secret_arn", "ca_secret_name",
                         "secret_tags"}
    assert outs["secret_name"].startswith("hst-ha/test/tls-")
    assert outs["ca_secret_name"].startswith("hst-ha/test/tls-ca-")
    assert outs["addresses"] == sorted(TLS_ADDRESSES) and outs["secret_tags"] == OWNER


def test_cluster_tls_second_up_is_no_change_and_a_grow_keeps_every_certificate(aws_env):
    provider = ClusterTlsProvider()
    props, outs = create_tls()
    assert provider.diff(outs["secret_arn"], outs, props).changes is False
    assert provider.diff(outs["secret_arn"], outs, tls_props(addresses=list(reversed(TLS_ADDRESSES)))).changes is False
    renamed = tls_props(secret_name_prefix="other/prod/tls", tags={"hst-ha:stack": "acme/other/prod"})
    assert provider.diff(outs["secret_arn"], outs, renamed).changes is False
    before = stored(outs["secret_arn"])
    grown = tls_props(addresses=sorted(GROWN))
    diff = provider.diff(outs["secret_arn"], outs, grown)
    assert diff.changes is True and not diff.replaces
    updated = wire(outs_of(provider.update(outs["secret_arn"], outs, grown)))
    after = stored(outs["secret_arn"])
    assert {k: after[k] for k in before} == before and all(tls.check_tls_document(after, a) == [] for a in GROWN)
    assert {k: updated[k] for k in ("secret_arn", "secret_name", "ca_secret_arn", "ca_secret_name")} == {
        k: outs[k] for k in ("secret_arn", "secret_name", "ca_secret_arn", "ca_secret_name")}
    assert updated["version_id"] != outs["version_id"] and updated["addresses"] == sorted(GROWN)
    assert provider.diff(outs["secret_arn"], updated, grown).changes is False  # the next up: nothing
    window = tls_props(addresses=sorted(GROWN), recovery_window_days=30)
    kept = wire(outs_of(provider.update(outs["secret_arn"], updated, window)))
    assert stored(outs["secret_arn"]) == after and kept["version_id"] == updated["version_id"]


def test_cluster_tls_refresh_sees_a_removed_certificate_and_up_signs_it_again(aws_env):
    provider = ClusterTlsProvider()
    props, outs = create_tls()
    document = stored(outs["secret_arn"])
    lost = {k: v for k, v in document.items() if not k.startswith("10.0.3.10.")}
    secrets_client().put_secret_value(SecretId=outs["secret_arn"], SecretString=json.dumps(lost))
    refreshed = wire(provider.read(outs["secret_arn"], outs).outs)
    assert refreshed["addresses"] == ["10.0.1.10", "10.0.2.10"]
    assert provider.diff(outs["secret_arn"], refreshed, props).changes is True
    provider.update(outs["secret_arn"], refreshed, props)
    restored = stored(outs["secret_arn"])
    assert tls.check_tls_document(restored, "10.0.3.10") == [] and {k: restored[k] for k in lost} == lost


def test_cluster_tls_moves_only_with_its_store_and_waits_for_unknowns(aws_env):
    provider = ClusterTlsProvider()
    _, outs = create_tls()
    moved = provider.diff(outs["secret_arn"], outs, tls_props(store=aws_store("us-east-1")))
    assert moved.changes is True and moved.replaces == ["store"] and moved.delete_before_replace is False
    assert provider.diff(outs["secret_arn"], outs, tls_props(store=UNKNOWN)).changes is None
    assert provider.diff(outs["secret_arn"], outs, tls_props(addresses=UNKNOWN)).changes is True


def test_cluster_tls_destroy_deletes_both_its_secrets_and_never_a_foreign_one(aws_env):
    provider = ClusterTlsProvider()
    _, outs = create_tls(recovery_window_days=0)
    # Someone's secret holding a copy of ours: only the tags tell it apart.
    copy = json.dumps(stored(outs["secret_arn"]))
    foreign = secrets_client().create_secret(Name="hst-ha/test/tls-foreign", SecretString=copy)
    theirs = {**outs, "secret_arn": foreign["ARN"], "secret_name": "hst-ha/test/tls-foreign"}
    with pytest.raises(SecretStoreError, match="not created by this stack"):
        provider.delete(foreign["ARN"], theirs)
    with pytest.raises(SecretStoreError, match="not created by this stack"):
        provider.update(foreign["ARN"], theirs, tls_props(addresses=sorted(GROWN)))
    assert secrets_client().get_secret_value(SecretId=foreign["ARN"])["SecretString"] == copy
    provider.delete(outs["secret_arn"], outs)
    left = {s["Name"] for s in secrets_client().list_secrets()["SecretList"]}
    assert left == {"hst-ha/test/tls-foreign"}  # recovery window 0: both of ours gone at once
    provider.delete(outs["secret_arn"], outs)  # a retried destroy
    _, scheduled = create_tls()
    provider.delete(scheduled["secret_arn"], scheduled)
    for key in ("secret_arn", "ca_secret_arn"):
        assert secrets_client().describe_secret(SecretId=scheduled[key])["DeletedDate"]  # the 7-day window


def test_cluster_tls_check_reports_every_bad_input():
    failures = ClusterTlsProvider().check({}, tls_props(
        addresses=["10.0.1.10", "node-2"], tags={}, recovery_window_days=3, store={"kind": "gcp"},
        secret_name_prefix="a b", ca_secret_name_prefix="c d")).failures
    assert sorted(f.property for f in failures) == [
        "addresses", "ca_secret_name_prefix", "recovery_window_days", "secret_name_prefix", "store", "tags"]
    same = ClusterTlsProvider().check({}, tls_props(ca_secret_name_prefix="hst-ha/test/tls")).failures
    assert [f.property for f in same] == ["ca_secret_name_prefix"]
    assert ClusterTlsProvider().check({}, tls_props()).failures == []
    assert ClusterTlsProvider().check({}, tls_props(addresses=UNKNOWN, store=UNKNOWN)).failures == []


def test_cluster_tls_works_against_a_local_store(tmp_path):
    provider = ClusterTlsProvider()
    where = local_store(str(tmp_path / "secrets"))
    _, outs = create_tls(store=where)
    store = LocalSecretStore(tmp_path / "secrets")
    first = json.loads(store.get(outs["secret_name"]))
    provider.update(outs["secret_arn"], outs, tls_props(store=where, addresses=sorted(GROWN)))
    grown = json.loads(store.get(outs["secret_name"]))
    assert {k: grown[k] for k in first} == first and all(tls.check_tls_document(grown, a) == [] for a in GROWN)
    provider.delete(outs["secret_arn"], outs)
    assert not list((tmp_path / "secrets").glob("*.json"))


# --------------------------------------------------------------------------- serialization


PROVIDERS = [SigningKeyProvider, BootstrapTokensProvider, SentinelQuorumProvider, RedisUsersSecretProvider,
             ClusterTlsProvider]


@pytest.mark.parametrize("provider_class", PROVIDERS, ids=lambda c: c.__name__)
def test_every_provider_round_trips_through_dill_as_pulumi_does(provider_class):
    provider = provider_class()
    assert type(dill.loads(dill.dumps(provider, recurse=True))) is type(provider)
    # Pulumi's own serializer (sorted dicts, recurse=True), then a fresh interpreter started in the
    # project directory, as the provider host is: nothing may depend on this process's state.
    blob = serialize_provider(provider)
    code = (
        "import base64, sys, dill\n"
        "p = dill.loads(base64.b64decode(sys.stdin.read()))\n"
        "r = p.check({}, {})\n"
        "print(type(p).__module__ + '.' + type(p).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{type(provider).__module__}.{type(provider).__name__}"
    # Small because the class is pickled by reference: no captured client, session or secret.
    assert len(base64.b64decode(blob)) < 2000


# --------------------------------------------------------------------------- SentinelQuorum over SSM

# Real `redis-cli --json` answers of a healthy 3-node local cluster on 127.0.3.11-13, as the probe
# script printed them (gzip + base64); tests/test_quorum_provider_live.py captures fresh ones.
CAPTURED = (ROOT / "tests" / "data" / "ssm_probe_output_3_nodes.txt").read_text()
HOSTS = ("127.0.3.11", "127.0.3.12", "127.0.3.13")
REDIS_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:hst-ha/test/redis-auth-AbCdEf"


def quorum_props(**overrides: Any) -> dict[str, Any]:
    props = {
        "sentinels": [f"{h}:41415" for h in HOSTS],
        "servers": [f"{h}:31415" for h in HOSTS],
        "master_name": "myprimary",
        "expected_nodes": 3,
        "password": {"kind": "aws", "secret_id": REDIS_ARN, "region": REGION},
        "instance_ids": ["i-0aaa", "i-0bbb", "i-0ccc"],
        "via": "ssm",
        "region": REGION,
        "haproxy_endpoints": ["127.0.3.11:31414"],
        "sentinel_settings": {"quorum": 2, "downAfterMs": 5000},
        "allow_missing_sentinels": 0,
        "timeout_s": 5,
        "provider_version": "1",
        "report": None,
        "probe_instance": None,
    }
    return wire({**props, **overrides}, keep_unknowns=True)


def reencode(raw: str) -> str:
    import gzip

    return base64.b64encode(gzip.compress(raw.encode())).decode() + "\n"


def decoded(encoded: str) -> str:
    import gzip

    return gzip.decompress(base64.b64decode(encoded)).decode()


class StubbedSsm:
    """A botocore Stubber on a real SSM client; boto3.client('ssm') inside the provider returns it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import botocore.session
        from botocore.stub import Stubber

        self.client = botocore.session.get_session().create_client(
            "ssm", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        self.stubber = Stubber(self.client)
        self.sent: list[dict[str, Any]] = []
        self.client.meta.events.register(
            "provide-client-params.ssm.SendCommand", lambda params, **_: self.sent.append(dict(params)),
        )
        monkeypatch.setattr("boto3.client", self._client)
        monkeypatch.setattr(ssm_probe, "POLL_S", 0.01)

    def _client(self, service: str, **_: Any) -> Any:
        assert service == "ssm", f"the SSM path must not build a {service} client"
        return self.client

    def command(self, instance: str, output: str | None = CAPTURED, status: str = "Success", pending: int = 1) -> None:
        """One SendCommand, `pending` polls before the invocation exists/finishes, then `status`."""
        command_id = str(uuid.uuid4())  # SSM's shape: 36 characters
        self.stubber.add_response("send_command", {"Command": {"CommandId": command_id}})
        self.stubber.add_client_error("get_command_invocation", service_error_code="InvocationDoesNotExist")
        for _ in range(pending):
            self.stubber.add_response(
                "get_command_invocation", {"CommandId": command_id, "InstanceId": instance, "Status": "InProgress"}
            )
        self.stubber.add_response("get_command_invocation", {
            "CommandId": command_id, "InstanceId": instance, "Status": status,
            "ResponseCode": 0 if status == "Success" else 1,
            "StandardOutputContent": output or "", "StandardErrorContent": "" if status == "Success" else "boom",
        })

    def unmanaged(self) -> None:
        self.stubber.add_client_error(
            "send_command", service_error_code="InvalidInstanceId", service_message="Instances not in a valid state",
        )


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubbedSsm]:
    stubbed = StubbedSsm(monkeypatch)
    # On this path the provider never reads the password: the node does, with its instance role.
    monkeypatch.setattr(
        "components.runtime.secret_store.SecretsManagerStore.get",
        lambda *a, **k: pytest.fail("the provider read the password"),
    )
    with stubbed.stubber:
        yield stubbed
    stubbed.stubber.assert_no_pending_responses()


def test_probe_output_is_judged_by_the_same_code_as_verify_quorum():
    from components.aws.providers.sentinel_quorum import ssm_observation
    from components.runtime import quorum

    observation = ssm_observation(ssm_probe.parse_probe_output(CAPTURED), quorum_props())
    attempt = quorum.judge(observation, "myprimary", 3)
    assert attempt.problems == []
    assert attempt.primary == "127.0.3.11:31415"
    assert attempt.primary_view.replicas == ("127.0.3.12:31415", "127.0.3.13:31415")
    assert attempt.haproxy_ok == ["127.0.3.11:31414"]
    # Expecting five nodes, the same answers are not ready, for the reasons verify_quorum gives.
    problems = " | ".join(quorum.judge(observation, "myprimary", 5).problems)
    assert "sees 2 of 4 replicas healthy" in problems and "has 2 of 4 replicas online" in problems


def test_a_refused_or_silent_sentinel_reads_as_unreachable_and_a_bad_password_as_refused():
    from components.aws.providers.sentinel_quorum import ssm_observation
    from components.runtime import quorum

    raw = decoded(CAPTURED)
    lines, out, current = raw.splitlines(), [], ""
    for line in lines:  # node-3's Sentinel refused; node-2's refuses the password
        if line.startswith("@@hst-ha sentinel "):
            current = line.split()[2]
        if current == "127.0.3.13:41415" and not line.startswith("@@"):
            line = "Could not connect to Redis at 127.0.3.13:41415: Connection refused"
        elif current == "127.0.3.13:41415" and line.startswith("@@hst-ha-rc"):
            line = "@@hst-ha-rc 1"
        elif current == "127.0.3.12:41415" and not line.startswith("@@"):
            line = ('AUTH failed: WRONGPASS invalid username-password pair or user is disabled.\n'
                    'error:"NOAUTH Authentication required."')
        if line.startswith("@@hst-ha info"):
            current = ""
        out.append(line)
    observation = ssm_observation(ssm_probe.parse_probe_output(reencode("\n".join(out) + "\n")), quorum_props())
    problems = quorum.judge(observation, "myprimary", 3).problems
    refused = ("Sentinel 127.0.3.12:41415: refuses the monitoring user's password "
               "(not the one in the cluster's Redis users secret)")
    assert refused in problems
    assert any(p.startswith("Sentinel 127.0.3.13:41415: unreachable (Could not connect") for p in problems)
    assert quorum.judge(observation, "myprimary", 3, allow_missing=1).problems == [refused]


def test_unreadable_or_truncated_probe_output_is_a_clear_probe_error():
    with pytest.raises(ssm_probe.ProbeError, match="not readable"):
        ssm_probe.parse_probe_output("not base64 at all!")
    with pytest.raises(ssm_probe.ProbeError, match="SSM keeps only 24000"):
        ssm_probe.parse_probe_output(CAPTURED.strip()[:1000] * 24)
    with pytest.raises(ssm_probe.ProbeError, match="ends early"):
        ssm_probe.parse_probe_output(reencode(decoded(CAPTURED).replace("@@hst-ha-end", "")))
    with pytest.raises(ssm_probe.ProbeError, match="instance role"):
        ssm_probe.parse_probe_output("@@hst-ha-no-password\n")


def test_the_probe_script_reads_the_password_on_the_node_and_never_prints_it():
    from components.aws.cloud_config import aws_layout

    layout = aws_layout(REDIS_ARN, REGION)
    command = f"{layout.secret_script} monitor"
    script = ssm_probe.render_probe_script(
        [f"{h}:41415" for h in HOSTS], [f"{h}:31415" for h in HOSTS], "myprimary", command, "127.0.0.1:31414",
    )
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    # The command is data in the header; the node runs it and keeps only what it prints.
    assert f"PASSWORD_COMMAND={shlex.quote(command)}\n" in script
    assert 'PASSWORD="$(bash -c "$PASSWORD_COMMAND")"' in script
    # Read-only: Sentinels as their default user, Redis as the monitoring user.
    assert "MONITOR_USER=hst-ha-monitor\n" in script
    assert '--user "$MONITOR_USER" INFO server replication' in script and "SENTINEL" in script
    assert 'export REDISCLI_AUTH="$PASSWORD"' in script and " -a " not in script
    assert "redis-cli --no-auth-warning --json" in script and "gzip -9 | base64 -w0" in script
    assert "SERVERS=(127.0.3.11:31415 127.0.3.12:31415 127.0.3.13:31415 127.0.0.1:31414)" in script


def test_ssm_create_verifies_from_one_node_and_records_the_report(ssm):
    ssm.command("i-0aaa")
    result = SentinelQuorumProvider().create(quorum_props())
    outs = wire(result.outs)
    report = outs["report"]
    assert report["primary"] == "127.0.3.11:31415" and report["replicas"] == ["127.0.3.12:31415", "127.0.3.13:31415"]
    assert report["sentinels_seen"] == [f"{h}:41415" for h in HOSTS] and report["ckquorum"].startswith("OK 3")
    assert report["haproxy_routes"] == ["127.0.3.11:31414"] and outs["probe_instance"] == "i-0aaa"
    (sent,) = ssm.sent
    assert sent["InstanceIds"] == ["i-0aaa"] and sent["DocumentName"] == "AWS-RunShellScript"
    (command,) = sent["Parameters"]["commands"]
    assert command.startswith("bash <<'HST_HA_PROBE'\n#!/bin/bash") and command.endswith("\nHST_HA_PROBE")
    # The node fetches the monitoring password itself, with its own helper and instance role.
    assert "PASSWORD_COMMAND='/opt/hst-ha/bin/hst-ha-secret monitor'\n" in command and REDIS_ARN not in command


def test_ssm_waits_for_an_agent_that_is_not_registered_yet_on_the_next_node(ssm):
    ssm.unmanaged()  # i-0aaa: SSM agent not registered yet
    ssm.command("i-0bbb")
    outs = outs_of(SentinelQuorumProvider().create(quorum_props()))
    assert outs["probe_instance"] == "i-0bbb"
    assert [s["InstanceIds"] for s in ssm.sent] == [["i-0aaa"], ["i-0bbb"]]


def test_ssm_failure_says_what_to_check_within_the_timeout(ssm):
    for _ in range(200):
        ssm.stubber.add_client_error(
            "send_command", service_error_code="InvalidInstanceId", service_message="not managed"
        )
    started = datetime.now()
    with pytest.raises(Exception) as error:
        SentinelQuorumProvider().create(quorum_props(timeout_s=1.5))
    ssm.stubber._queue.clear()  # what the timeout left unused
    assert (datetime.now() - started).total_seconds() < 5
    message = str(error.value)
    assert "was not failover-ready within 1.5s" in message
    assert "is not managed by Systems Manager yet" in message and "AmazonSSMManagedInstanceCore" in message


def test_ssm_a_probe_that_fails_on_the_node_is_reported_and_retried(ssm):
    ssm.command("i-0aaa", output="", status="Failed")
    ssm.command("i-0bbb")
    outs = outs_of(SentinelQuorumProvider().create(quorum_props()))
    assert outs["probe_instance"] == "i-0bbb"


def test_quorum_diff_reverifies_only_when_the_node_set_or_sentinel_settings_change():
    provider = SentinelQuorumProvider()
    olds = quorum_props()
    assert provider.diff("q", olds, quorum_props()).changes is False
    # How long to wait is not what is verified.
    assert provider.diff("q", olds, quorum_props(timeout_s=900)).changes is False
    assert provider.diff("q", olds, quorum_props(instance_ids=["i-0aaa", "i-0bbb", "i-0ddd"])).changes is True
    assert provider.diff("q", olds, quorum_props(sentinel_settings={"quorum": 3, "downAfterMs": 5000})).changes is True
    # Preview of a node replacement: its new id is unknown; verify again.
    assert provider.diff("q", olds, quorum_props(instance_ids=["i-0aaa", UNKNOWN, "i-0ccc"])).changes is True
    assert provider.diff("q", olds, quorum_props()).replaces in (None, [])
    provider.delete("q", olds)  # nothing to undo


def test_quorum_check_refuses_inputs_that_cannot_work():
    provider = SentinelQuorumProvider()
    failures = {f.property: f.reason for f in provider.check({}, quorum_props(
        via="telnet", sentinels=["no-port"], timeout_s=0,
    )).failures}
    assert "must be one of direct, ssm" in failures["via"]
    assert "must be host:port" in failures["sentinels"]
    assert "must be positive" in failures["timeout_s"]
    refused = provider.check({}, quorum_props(password={"kind": "file", "path": "/tmp/x"})).failures
    assert [f.reason for f in refused] == ["via ssm reads the password on the node: it must be kind aws"]
    unknown = quorum_props(password={"kind": "aws", "secret_id": UNKNOWN, "region": REGION}, instance_ids=UNKNOWN)
    assert provider.check({}, unknown).failures == []
