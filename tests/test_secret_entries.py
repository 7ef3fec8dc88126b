"""components/runtime/secret_entries.py, what bin/hst-ha-secret runs on a fetched secret: the
functions called directly, and the command line as the script runs it (the secret on stdin, the
rules from the node's values), its messages naming the role or the entry and never a value."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from components.aws.cloud_config import AWS_HOME, node_code
from components.bundle import NodeLayout, NodePlace, Sinks, render_bundle
from components.bundle.names import PASSWORD_ALPHABET
from components.bundle.users import MIN_PASSWORD_LENGTH, ROLE_KEYS
from components.runtime import secret_entries
from components.runtime.secret_entries import SecretError, UnknownRole, passwords, tls_entries, write_entry
from components.settings import parse_settings

PASSWORDS = {key: f"{key.capitalize()}EntriesPassword0123456789" for key in ROLE_KEYS}
ENTRIES = ("ca.crt", "10.0.1.10.crt", "10.0.1.10.key")
PEMS = {
    "ca.crt": "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
    "10.0.1.10.crt": "-----BEGIN CERTIFICATE-----\nNODE\n-----END CERTIFICATE-----\n",
    "10.0.1.10.key": "-----BEGIN PRIVATE KEY-----\nKEYVALUE\n-----END PRIVATE KEY-----\n",
}
ROOT = Path(__file__).resolve().parent.parent


def _passwords(document: object, wanted: list[str]) -> list[str]:
    text = document if isinstance(document, str) else json.dumps(document)
    return passwords(text, PASSWORD_ALPHABET, MIN_PASSWORD_LENGTH, ROLE_KEYS, wanted)


def run(argv: list[str], document: str | bytes, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The module as hst-ha-secret runs it: `python3 -m`, the secret on stdin."""
    data = document.encode() if isinstance(document, str) else document
    done = subprocess.run([sys.executable, "-m", "components.runtime.secret_entries", *argv], input=data,
                          capture_output=True, timeout=30, check=False, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def password_argv(*wanted: str) -> list[str]:
    return ["passwords", PASSWORD_ALPHABET, str(MIN_PASSWORD_LENGTH), " ".join(ROLE_KEYS), *wanted]


def test_the_wanted_passwords_in_the_order_asked():
    assert _passwords(PASSWORDS, ["monitor", "hst", "monitor"]) == [
        PASSWORDS["monitor"], PASSWORDS["hst"], PASSWORDS["monitor"]]
    done = run(password_argv("operator", "replication"), json.dumps(PASSWORDS))
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == f"{PASSWORDS['operator']}\n{PASSWORDS['replication']}\n"


def test_an_unknown_role_is_named_with_the_roles_there_are():
    with pytest.raises(UnknownRole, match=r"no role 'admin'; the roles are \['hst', "):
        _passwords(PASSWORDS, ["hst", "admin"])
    done = run(password_argv("hst", "admin"), json.dumps(PASSWORDS))
    # Nothing printed, not even the known role's password: all is checked before anything is written.
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("hst-ha-secret: no role 'admin'") and "regenerate" not in done.stderr


@pytest.mark.parametrize("bad", [
    None, "Short0123", "has space & amp 0123456789", "Ünïcode0123456789abc", "x" * 15, 12345678901234567890,
    ["ListNotAPassword0123456789"],
])
def test_a_missing_or_malformed_password_names_the_role_never_the_value(bad):
    document = {k: v for k, v in PASSWORDS.items() if k != "sentinel"}
    if bad is not None:
        document["sentinel"] = bad
    with pytest.raises(SecretError, match="the password of role sentinel is missing or not at least 16") as caught:
        _passwords(document, ["hst", "sentinel"])
    done = run(password_argv("hst", "sentinel"), json.dumps(document))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"hst-ha-secret: {caught.value}; regenerate the secret\n"
    values = [*PASSWORDS.values(), *([] if bad is None else [json.dumps(bad), str(bad)])]
    assert not [v for v in values if v in done.stderr or v in str(caught.value)]


@pytest.mark.parametrize(("document", "why"), [
    ("has space & amp PasswordLike0123456789", "the Redis users secret is not JSON"),
    ("", "the Redis users secret is not JSON"),
    (b"\xff\xfeNotUtf8PasswordLike0123", "the Redis users secret is not JSON"),
    ("[" * 100_000, "the Redis users secret is not JSON"),
    (json.dumps(list(PASSWORDS.values())), "the Redis users secret is not a JSON object of one password per role"),
])
def test_a_document_that_is_not_a_json_object_is_refused(document, why):
    done = run(password_argv("hst"), document)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"hst-ha-secret: {why}; regenerate the secret\n"
    assert "PasswordLike" not in done.stderr and not any(p in done.stderr for p in PASSWORDS.values())


def test_the_tls_entries_are_written_with_their_modes_and_replaced_whole(tmp_path):
    paths = [tmp_path / "etc" / "tls-ca.crt", tmp_path / "data" / "tls" / "node.crt",
             tmp_path / "data" / "tls" / "node.key"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    # A previous, longer file is replaced, not overwritten in place; a left-over tmp of the key is
    # world-readable and must not lend the key its mode.
    paths[2].write_text("OLD" * 1000)
    old_inode = paths[2].stat().st_ino
    Path(f"{paths[2]}.tmp").write_text("left over")
    os.chmod(f"{paths[2]}.tmp", 0o666)
    done = run(["tls", " ".join(ENTRIES), *map(str, paths)], json.dumps({**PEMS, "10.0.1.11.key": "other"}))
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    for path, entry, mode in zip(paths, ENTRIES, (0o644, 0o644, 0o600), strict=True):
        assert path.read_text() == PEMS[entry]
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
        assert not Path(f"{path}.tmp").exists()
    assert paths[2].stat().st_ino != old_inode  # renamed into place: a reader never sees half a key
    assert secret_entries.TLS_MODES == (0o644, 0o644, 0o600)


def test_write_entry_sets_the_mode_whatever_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        write_entry(str(tmp_path / "public.crt"), "PEM", 0o644)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "public.crt").stat().st_mode) == 0o644
    assert (tmp_path / "public.crt").read_text() == "PEM"


@pytest.mark.parametrize("document", [
    {k: v for k, v in PEMS.items() if k != "10.0.1.10.key"},
    {**PEMS, "10.0.1.10.key": "KEYVALUE but no PEM armour"},
    {**PEMS, "10.0.1.10.key": ["-----BEGIN PRIVATE KEY-----"]},
])
def test_a_missing_pem_entry_is_named_and_nothing_is_written(tmp_path, document):
    with pytest.raises(SecretError, match=r"the TLS secret has no PEM entry '10.0.1.10.key'"):
        tls_entries(json.dumps(document), ENTRIES)
    paths = [tmp_path / name for name in ("ca.crt", "node.crt", "node.key")]
    done = run(["tls", " ".join(ENTRIES), *map(str, paths)], json.dumps(document))
    assert done.returncode == 1
    assert done.stderr == "hst-ha-secret: the TLS secret has no PEM entry '10.0.1.10.key'; regenerate it\n"
    assert "KEYVALUE" not in done.stderr and "CA\n" not in done.stderr
    assert not any(p.exists() for p in paths)  # all checked before the first file is written


@pytest.mark.parametrize(("document", "why"), [
    ("-----BEGIN PRIVATE KEY-----\nKEYVALUE", "the TLS secret is not JSON"),
    (json.dumps([PEMS["ca.crt"]]), "the TLS secret is not a JSON object of PEM entries"),
])
def test_a_tls_document_that_is_not_a_json_object_is_refused(tmp_path, document, why):
    done = run(["tls", " ".join(ENTRIES), *(str(tmp_path / n) for n in ("a", "b", "c"))], document)
    assert done.returncode == 1 and done.stderr == f"hst-ha-secret: {why}; regenerate it\n"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [
    [], ["passwords"], ["passwords", PASSWORD_ALPHABET, "sixteen", "hst monitor", "hst"],
    ["passwords", PASSWORD_ALPHABET, "16", "hst monitor"], ["tls", "a b", "x", "y", "z"],
    ["tls", "a b c", "x", "y"], ["rotate"],
])
def test_a_wrong_command_line_exits_2_before_reading_the_secret(argv):
    done = run(argv, json.dumps(PASSWORDS))
    assert done.returncode == 2 and done.stdout == "" and done.stderr.startswith("usage: ")
    assert not any(p in done.stderr for p in PASSWORDS.values())


def test_the_module_needs_only_the_standard_library(tmp_path):
    """The node's python3 has nothing but the distribution's packages: run from a copy of the file
    alone, with no site packages, it still works."""
    package = tmp_path / "components" / "runtime"
    package.mkdir(parents=True)
    (tmp_path / "components" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "secret_entries.py").write_text((ROOT / "components/runtime/secret_entries.py").read_text())
    done = subprocess.run([sys.executable, "-E", "-s", "-S", "-m", "components.runtime.secret_entries",
                           *password_argv("hst")], input=json.dumps(PASSWORDS), capture_output=True, text=True,
                          timeout=30, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{PASSWORDS['hst']}\n"


@pytest.mark.parametrize("sinks", [None, Sinks(cluster="c", events="file:/e", metrics="file:/m", backups="file:/b")])
def test_every_bundle_and_the_code_archive_ship_the_module_as_written(tmp_path, sinks):
    """hst-ha-secret runs on every node, observers or not: the package and the module are in every
    bundle, once each, as written (the tests import the same bytes), and in the AWS code archive."""
    layout = NodeLayout(home=str(tmp_path), secrets_command="cat /dev/null", sinks=sinks)
    bundle = render_bundle(parse_settings({"tlsEnabled": False}), NodePlace(0, ("10.0.1.10", "10.0.2.10", "10.0.3.10")),
                           layout)
    paths = [f.path for f in bundle.files]
    assert len(paths) == len(set(paths))
    module = bundle.file(f"{tmp_path}/components/runtime/secret_entries.py")
    assert module.content == (ROOT / "components/runtime/secret_entries.py").read_text() and module.mode == 0o644
    for package in ("components/__init__.py", "components/runtime/__init__.py"):
        assert bundle.file(f"{tmp_path}/{package}").content == (ROOT / package).read_text()
    shipped = {p.rsplit("/", 1)[1] for p in paths if p.startswith(f"{tmp_path}/components/runtime/")}
    assert shipped == {"__init__.py", "secret_entries.py", *([] if sinks is None else
                       [f"{m}.py" for m in ("nodeenv", "events", "metrics", "backup")])}
    archive = {f.path: f.content for f in node_code(AWS_HOME)}
    assert archive[f"{AWS_HOME}/components/runtime/secret_entries.py"] == module.content
