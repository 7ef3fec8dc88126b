"""Lint every script and the fence a node gets, strictly: a finding fails, and so does a missing
linter (scripts/setup.sh installs shellcheck and lua-check), so CI can never pass without looking."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from components.aws.cloud_config import aws_layout
from components.bundle import NodePlace, render_bundle, scripts
from components.runtime import bearer_token
from components.settings import parse_settings

FILES = Path(str(resources.files("components.bundle").joinpath("files")))
SHELL = sorted(name for name in scripts.SHIPPED if name.endswith(".sh"))
LUA = sorted(name for name in scripts.SHIPPED if name.endswith(".lua"))


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: install the Debian package {package} (scripts/setup.sh does)")
    return path


def test_every_file_in_files_is_shipped_and_linted_here():
    assert sorted(p.name for p in FILES.iterdir()) == sorted(scripts.SHIPPED)
    assert sorted(SHELL + LUA) == sorted(scripts.SHIPPED)


@pytest.mark.parametrize("name", SHELL)
def test_shellcheck_finds_nothing(name):
    result = subprocess.run(
        [_tool("shellcheck", "shellcheck"), "--shell=bash", "--severity=style", str(FILES / name)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", LUA)
def test_luacheck_finds_nothing(name):
    # HAProxy 2.6 embeds Lua 5.3; `core` is the one global HAProxy gives a script (declared in the file).
    result = subprocess.run(
        [_tool("luacheck", "lua-check"), "--std", "lua53", "--no-color", "--codes", str(FILES / name)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rendered_data_file_is_clean_shell(tmp_path):
    """The node.env with every step's values (HST Server, access key), as the scripts source it."""
    config = {
        "nodeCount": 3,
        # A quote in the key: the data file must keep it data.
        "hstInstallerUrl": "s3://installers/aspera's/hsts.deb",
        "hstLicenseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hsts-licence-AbCdEf",
        "hstRedisPasswordSetting": "db_password",
        "hstInstallerSha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
    }
    layout = aws_layout("arn:aws:secretsmanager:eu-west-1:123456789012:secret:redis-AbCdEf", "eu-west-1",
                        str(config["hstLicenseSecretArn"]),
                        tls_secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:tls-AbCdEf")
    key = bearer_token.public_key_pem(bearer_token.generate_signing_key(1024))
    bundle = render_bundle(parse_settings(config), NodePlace(0, ("10.0.0.1", "10.0.0.2", "10.0.0.3")), layout,
                           token_verification_key=key)
    env = tmp_path / "node.env"
    env.write_text(bundle.file(layout.node_env).content)
    result = subprocess.run(
        [_tool("shellcheck", "shellcheck"), "--shell=bash", "--severity=style", str(env)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Sourced, every value comes back as rendered: quoting makes a command or a URL data, not code.
    shown = subprocess.run(
        ["bash", "-c", 'source "$1"; printf "%s\\n" "$SECRETS_COMMAND" "$HST_INSTALLER_URL" "$PEERS"', "-", str(env)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    assert shown == f"{layout.secrets_command}\ns3://installers/aspera's/hsts.deb\n10.0.0.2 10.0.0.3\n"


def test_the_ssm_probe_file_and_a_rendered_probe_are_clean_shell(tmp_path):
    """The SentinelQuorum probe (components/runtime/files/ssm-probe.sh), as shipped and as rendered
    with a header of values that need quoting (a space, a quote, a pipe)."""
    from components.runtime import ssm_probe

    probe = Path(str(resources.files("components.runtime").joinpath("files", ssm_probe.PROBE_SCRIPT)))
    rendered = tmp_path / "rendered-probe.sh"
    rendered.write_text(ssm_probe.render_probe_script(
        ["10.0.0.1:41415", "10.0.0.2:41415"], ["10.0.0.1:31415", "10.0.0.2:31415"], "my 'primary'",
        "cat /run/secret | tr -d '\\n'", "127.0.0.1:31414",
    ))
    for path in (probe, rendered):
        result = subprocess.run(
            [_tool("shellcheck", "shellcheck"), "--shell=bash", "--severity=style", str(path)],
            check=False, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, f"{path.name}: {result.stdout}{result.stderr}"
    # Sourced up to its first command, the header gives back every value as passed: data, not code.
    header = rendered.read_text().split("\nset -u\n", 1)[0]
    shown = subprocess.run(
        ["bash", "-c", header + '\nprintf "%s\\n" "$MASTER" "$PASSWORD_COMMAND" "${SERVERS[@]}"'],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    assert shown == ("my 'primary'\ncat /run/secret | tr -d '\\n'\n"
                     "10.0.0.1:31415\n10.0.0.2:31415\n127.0.0.1:31414\n")
