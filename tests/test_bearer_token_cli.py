"""The operator CLI scripts/bearer_token.py, run as an operator would: a subprocess from the repo root."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from components.runtime.bearer_token import (
    TokenRequest,
    generate_signing_key,
    mint,
    private_key_pem,
    public_key_pem,
    verify,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bearer_token.py"
TOKEN_LINE = re.compile(r"eJ[A-Za-z0-9+/]+=*\n")


def state_home(cwd: Path) -> Path:
    """The XDG_STATE_HOME run_cli gives the script: beside cwd, never the real ~/.local/state."""
    return cwd.parent / f"{cwd.name}.state"


def run_cli(*args: str, cwd: Path, stdin: str | None = None,
            env_changes: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    # The venv's interpreter and a cwd outside the repo: the script must find `components` itself.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["XDG_STATE_HOME"] = str(state_home(cwd))
    for name, value in (env_changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120, env=env,
    )


@pytest.fixture(scope="module")
def key_1024() -> rsa.RSAPrivateKey:
    return generate_signing_key(1024)


@pytest.fixture
def key_file(tmp_path: Path, key_1024: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "signing.pem"
    path.write_text(private_key_pem(key_1024))
    path.chmod(0o600)
    return path


def test_create_with_generated_key_then_verify_with_saved_public_key(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    created = run_cli(
        "--bearer-create", "--access-key", "AK1", "--user-id", "666", "--group-ids", "eng, ops",
        "--scope-role", "user", "--token-key-length", "2048", cwd=checkout,
    )
    assert created.returncode == 0, created.stderr
    assert TOKEN_LINE.fullmatch(created.stdout), "stdout must hold the token alone, on one line"

    # Never into the current directory (often a checkout): into a 0700 directory of the user's state.
    assert list(checkout.iterdir()) == []
    keys = state_home(checkout) / "hst-ha" / "bearer-keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    private = sorted(keys.glob("bearer-AK1-*Z.pem"))
    public = sorted(keys.glob("bearer-AK1-*Z.pub.pem"))
    assert len(private) == 1 and len(public) == 1
    assert re.fullmatch(r"bearer-AK1-\d{8}T\d{6}Z\.pem", private[0].name)
    assert public[0].name == private[0].name.replace(".pem", ".pub.pem")
    assert stat.S_IMODE(private[0].stat().st_mode) == 0o600
    assert private[0].name in created.stderr and public[0].name in created.stderr
    assert created.stdout.strip() not in created.stderr

    verified = run_cli("--bearer-verify", "--token", created.stdout.strip(), "--public-key", str(public[0]),
                       "--access-key", "AK1", cwd=checkout)
    assert verified.returncode == 0, verified.stderr
    payload = json.loads(verified.stdout)
    assert payload["user_id"] == "666"
    assert payload["group_ids"] == ["eng", "ops"]
    assert payload["scope"] == "node.AK1:user:all"
    expires_at = datetime.strptime(payload["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=58) < expires_at - datetime.now(UTC) <= timedelta(hours=1)


def test_without_xdg_state_home_keys_go_under_home(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    created = run_cli("--bearer-create", "--access-key", "AK1", "--user-id", "u", "--token-key-length", "1024",
                      cwd=work, env_changes={"XDG_STATE_HOME": None, "HOME": str(home)})
    assert created.returncode == 0, created.stderr
    keys = home / ".local" / "state" / "hst-ha" / "bearer-keys"
    assert len(list(keys.glob("bearer-AK1-*.pem"))) == 2
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert list(work.iterdir()) == []


def test_a_default_key_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    keys = state_home(work) / "hst-ha" / "bearer-keys"
    keys.mkdir(parents=True, mode=0o755)
    keys.chmod(0o755)
    result = run_cli("--bearer-create", "--access-key", "AK1", "--user-id", "u", "--token-key-length", "1024",
                     cwd=work)
    assert result.returncode == 2 and result.stdout == ""
    assert f"{keys} is open to other users (mode 0755): `chmod 700 {keys}`, or set --output-dir" in result.stderr
    assert list(keys.iterdir()) == [] and list(work.iterdir()) == []


def test_create_with_key_file_signs_with_it(tmp_path: Path, key_file: Path, key_1024: rsa.RSAPrivateKey) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    created = run_cli(
        "--bearer-create", "--access-key", "AK1", "--user-id", "u",
        "--expires-at", "2099-01-01T00:00:00.000Z", "--key-file-path", str(key_file), cwd=workdir,
    )
    assert created.returncode == 0, created.stderr
    assert TOKEN_LINE.fullmatch(created.stdout)
    payload = verify(created.stdout, public_key_pem(key_1024))
    assert payload["expires_at"] == "2099-01-01T00:00:00.000Z"
    assert payload["scope"] == "node.AK1:admin:all"
    assert list(workdir.iterdir()) == []  # no key generated or saved
    assert not state_home(workdir).exists()


def test_create_saves_into_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    out.mkdir()
    created = run_cli("--bearer-create", "--access-key", "AK/2", "--user-id", "u", "--token-key-length", "1024",
                      "--output-dir", str(out), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and all(n.startswith("bearer-AK_2-") for n in names)  # '/' never reaches a path


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (["--token-key-length", "3000"], ["--token-key-length 3000: must be a power of 2 from 1024 to 16384 bits"]),
        (["--token-key-length", "abc"], ["--token-key-length 'abc': not a number"]),
        (["--scope-role", "root"], ["--scope-role 'root': must be one of admin, user"]),
        (["--expires-at", "2030-01-01T00:00:00+02:00"], ["not the offset +02:00"]),
        (["--expires-at", "2001-01-01T00:00:00Z"], ["--expires-at '2001-01-01T00:00:00Z': is not in the future"]),
        (["--group-ids", "a,,b"], ["--group-ids 'a,,b': every group ID must be non-empty"]),
        (
            ["--access-key", "a:b", "--user-id", "", "--expires-at", "tomorrow", "--token-key-length", "32768"],
            ["--access-key 'a:b'", "--user-id ''", "--expires-at 'tomorrow'", "--token-key-length 32768"],
        ),
    ],
)
def test_bad_options_exit_2_with_message(tmp_path: Path, args: list[str], messages: list[str]) -> None:
    base = {"--access-key": "AK1", "--user-id": "u"}
    merged = [*[x for k, v in base.items() if k not in args for x in (k, v)], *args]
    result = run_cli("--bearer-create", *merged, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    for message in messages:
        assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # refused before any key was generated
    assert not state_home(tmp_path).exists()


def test_missing_required_options_exit_2(tmp_path: Path) -> None:
    result = run_cli("--bearer-create", cwd=tmp_path)
    assert result.returncode == 2
    assert "--access-key '': must be a non-empty access key ID" in result.stderr
    assert "--user-id '': must be a non-empty user ID" in result.stderr
    assert run_cli("--bearer-create", "--bearer-verify", cwd=tmp_path).returncode == 2
    assert run_cli(cwd=tmp_path).returncode == 2


def test_bad_key_file_exit_2(tmp_path: Path) -> None:
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    result = run_cli("--bearer-create", "--access-key", "AK1", "--user-id", "u",
                     "--key-file-path", str(not_a_key), cwd=tmp_path)
    assert result.returncode == 2
    assert "--key-file-path: not an unencrypted PEM private key" in result.stderr
    missing = run_cli("--bearer-create", "--access-key", "AK1", "--user-id", "u",
                      "--key-file-path", str(tmp_path / "absent.pem"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "not an existing PEM private key file" in missing.stderr


@pytest.fixture
def public_key_file(tmp_path: Path, key_1024: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "pub.pem"
    path.write_text(public_key_pem(key_1024))
    return path


def test_verify_token_from_stdin(tmp_path: Path, key_1024: rsa.RSAPrivateKey, public_key_file: Path) -> None:
    token = mint(TokenRequest("AK1", "u"), key_1024).token
    result = run_cli("--bearer-verify", "--token", "-", "--public-key", str(public_key_file),
                     cwd=tmp_path, stdin=f"Bearer {token}\n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["user_id"] == "u"


def test_verify_failures_exit_1(tmp_path: Path, key_1024: rsa.RSAPrivateKey, public_key_file: Path) -> None:
    other = mint(TokenRequest("AK1", "u"), generate_signing_key(1024)).token
    result = run_cli("--bearer-verify", "--token", other, "--public-key", str(public_key_file), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert "bad signature" in result.stderr

    expired = mint(TokenRequest("AK1", "u"), key_1024, now=datetime.now(UTC) - timedelta(hours=2)).token
    result = run_cli("--bearer-verify", "--token", expired, "--public-key", str(public_key_file), cwd=tmp_path)
    assert result.returncode == 1
    assert "the token expired at" in result.stderr

    result = run_cli("--bearer-verify", "--token", "garbage", "--public-key", str(public_key_file), cwd=tmp_path)
    assert result.returncode == 1
    assert "not an Aspera bearer token" in result.stderr

    good = mint(TokenRequest("AK1", "u"), key_1024).token
    result = run_cli("--bearer-verify", "--token", good, "--public-key", str(public_key_file),
                     "--access-key", "AK2", cwd=tmp_path)
    assert result.returncode == 1
    assert "is for another access key" in result.stderr


def test_verify_usage_errors_exit_2(tmp_path: Path) -> None:
    result = run_cli("--bearer-verify", "--token", "eJx", cwd=tmp_path)
    assert result.returncode == 2
    assert "--public-key: required with --bearer-verify" in result.stderr


# --------------------------------------------------------------------------- progress (in-process)


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bearer_token_cli", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_progress_dots_for_slow_key_lengths(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _load_script()
    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_S", 0.05)
    with cli._progress(16384):
        time.sleep(0.3)  # stands in for the minute a 16384-bit key takes
    err = capsys.readouterr().err
    assert err.startswith("generating a 16384-bit RSA signing key")
    assert re.search(r"^\.{3,}$", err, re.MULTILINE), err  # a line of dots, ended before the summary
    assert "key generated in" in err

    with cli._progress(4096):
        time.sleep(0.1)
    assert capsys.readouterr().err == ""  # fast lengths stay quiet


# --------------------------------------------------------------------------- benchmark smoke test


def test_benchmark_prints_json(tmp_path: Path) -> None:
    # Smallest run only: the real lengths (and never 16384) are for manual runs.
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_tokens.py"),
         "--lengths", "1024", "--runs", "3", "--tokens", "5", "--mint-runs", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [generation] = report["key_generation"]
    assert generation["bits"] == 1024 and generation["runs"] == 3
    assert 0 < generation["min_s"] <= generation["median_s"] <= generation["max_s"]
    assert report["minting"]["key_bits"] == 4096
    assert report["minting"]["median_tokens_per_s"] > 0
