"""`components.settings` on its own: the security rules, the token document bound against
real minted documents, and the module's own quality bar (complexity, types)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from components.runtime import bootstrap
from components.runtime.secret_store import LocalSecretStore
from components.settings import SettingsError, TokenSettings, node_address_problems, parse_settings
from tests.pulumi_harness import ROOT

NOW = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)


def problems(raw: dict) -> list[str]:
    with pytest.raises(SettingsError) as error:
        parse_settings(raw, now=NOW)
    return error.value.problems


def test_defaults_are_the_safe_ones():
    tokens = parse_settings({}, now=NOW).tokens
    assert tokens.scope_role == "user" and tokens.lifetime_hours == 1 and tokens.expires_at is None
    assert parse_settings({"tokenScopeRole": "admin"}, now=NOW).tokens.scope_role == "admin"  # only when asked


def test_an_expiry_is_capped_at_seven_days():
    assert parse_settings({"tokenExpiresAt": "2031-03-08T12:00:00Z"}, now=NOW).tokens.expires_at
    (problem,) = problems({"tokenExpiresAt": "2031-03-08T12:00:01Z"})
    assert problem.startswith("hst-ha:tokenExpiresAt = '2031-03-08T12:00:01Z': is more than 7 days ahead")
    assert "leave it empty and set tokenLifetimeHours" in problem


@pytest.mark.parametrize("user", ["alice", "ops.team", "a@example.com", "x" * 64, "svc+1", "A-1_b"])
def test_ordinary_user_ids_pass(user):
    assert parse_settings({"tokenUserIds": [user]}, now=NOW).tokens.user_ids == (user,)


@pytest.mark.parametrize("user", ["", " ", "a b", "a==SIGNATURE==b", "x" * 65, "é", "\udcff", '"quote', "-lead"])
def test_user_ids_are_bounded(user):
    assert any(p.startswith("hst-ha:tokenUserIds") for p in problems({"tokenUserIds": [user]}))


def test_the_count_limit_depends_on_the_key_length():
    many = [f"user{i:03d}" for i in range(40)]
    parse_settings({"tokenUserIds": many}, now=NOW)  # fits with RSA-4096
    found = problems({"tokenUserIds": many, "tokenKeyLength": 16384})
    assert any("over Secrets Manager's 65536-byte limit" in p for p in found)


@pytest.mark.parametrize("bits", [1024, 4096])
def test_the_document_bound_holds_for_real_documents(tmp_path, bits):
    """The bound judged at preview is above what minting really stores, and not far above."""
    tokens = TokenSettings("hst-ha-bootstrap", tuple(f"user.{i}@example.com" for i in range(12)), ("eng", "ops"),
                           "admin", None, bits, lifetime_hours=168)
    store = LocalSecretStore(tmp_path / f"s{bits}")
    private_pem, _ = bootstrap.ensure_signing_key(store, bits)
    result = bootstrap.mint_bootstrap_tokens(tokens, store, private_pem, now=NOW)
    actual = len(json.dumps(result.document, indent=1).encode())
    bound = bootstrap.token_document_bound(tokens)
    # Tokens compress a little (zlib of base64 text); the bound assumes they do not.
    assert actual <= bound <= actual * 1.4, (actual, bound)


def test_node_addresses_are_judged_against_their_own_subnet():
    cidrs = ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"]
    assert node_address_problems(["10.0.1.4", "10.0.2.254", "10.0.3.100"], cidrs) == []
    found = node_address_problems(["10.0.2.10", "10.0.2.0", "10.0.3.255"], cidrs)
    assert [p.split(":")[0] for p in found] == ["10.0.2.10", "10.0.2.0", "10.0.3.255"]
    assert "node-1 goes in subnet 10.0.1.0/24" in found[0] and "give an address from 10.0.1.4 to 10.0.1.254" in found[0]


def test_a_half_internet_pair_and_a_long_list_are_judged_as_their_union():
    assert any("whole internet" in p for p in problems({"transferCidrs": ["0.0.0.0/1", "128.0.0.0/2", "192.0.0.0/2"]}))
    ok = parse_settings({"adminCidrs": ["10.0.0.0/8", "172.16.0.0/12", "198.51.100.0/24"]}, now=NOW)
    assert ok.admin_cidrs == ("10.0.0.0/8", "172.16.0.0/12", "198.51.100.0/24")  # wide, but private
    assert any("more public addresses than a /8" in p for p in problems({"adminCidrs": ["11.0.0.0/8", "12.0.0.0/24"]}))


def test_a_bad_user_id_on_the_local_command_line_is_a_clean_error(tmp_path):
    """`--token-user-ids $'\\xff'` used to crash with a traceback after the cluster had started."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "local_cluster.py"), "up", "--state-dir", str(tmp_path / "state"),
         "--timeout", "1", "--token-user-ids", b"\xff".decode("utf-8", "surrogateescape")],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "hst-ha:tokenUserIds = '\\udcff': must be 1-64 ASCII letters" in result.stderr
    assert not (tmp_path / "state").exists(), "nothing may start before the settings are judged"


def test_parse_settings_stays_simple():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ruff"), "check", "--isolated", "--select", "C901",
         "--config", "lint.mccabe.max-complexity = 14", str(ROOT / "components" / "settings.py")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout


def test_settings_module_is_type_clean():
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent",
                             str(ROOT / "components" / "settings.py")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout


BAKED = {"amiId": "ami-0123456789abcdef0", "amiHasPackages": True}
MIRROR = {"packageMirrorPrefixListIds": ["pl-0123456789abcdef0"]}


@pytest.mark.parametrize("config", [BAKED, MIRROR, {**BAKED, **MIRROR}, {**BAKED, "amiHasPackages": "true"}],
                         ids=["baked", "mirror", "both", "baked-as-text"])
def test_an_aws_deploy_needs_a_way_to_its_packages(config):
    settings = parse_settings(config, aws=True)
    assert settings.ami_has_packages is (config.get("amiHasPackages") in (True, "true"))


def test_without_one_an_aws_deploy_is_refused_naming_both_fixes():
    for config in ({}, {"amiId": "ami-0123456789abcdef0"}, {"amiHasPackages": "false"}):
        with pytest.raises(SettingsError) as error:
            parse_settings(config, aws=True)
        (problem,) = error.value.problems
        assert problem.startswith("hst-ha:packageMirrorPrefixListIds = []: the nodes install their packages")
        assert "amiHasPackages true" in problem and "managed prefix list" in problem
    # The local target, the drills and the node target's own bookkeeping install nothing.
    assert parse_settings({}).ami_has_packages is False


def test_a_baked_ami_must_be_named():
    with pytest.raises(SettingsError) as error:
        parse_settings({**MIRROR, "amiHasPackages": True}, aws=True)
    assert error.value.problems == [
        "hst-ha:amiHasPackages = True: needs amiId: without it the nodes boot the stock Ubuntu 24.04 image, which "
        "has none of the packages; set amiId to your baked image, or set amiHasPackages false and name your package "
        "mirror in packageMirrorPrefixListIds"]
