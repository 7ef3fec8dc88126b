"""tlsEnabled without a running cluster: the CA and node certificates (checked by openssl), the
setting, the rendered TLS lines (haproxy -c on them), the boot script writing each node's three
files from the TLS secret, and the SSM probe's TLS flags. The live proof is tests/test_tls_live.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from components.bundle import NodeLayout, NodePlace, render_bundle, tls
from components.runtime import ssm_probe
from components.settings import SettingsError, parse_settings

ADDRESSES = ("127.0.2.11", "127.0.2.12", "127.0.2.13")
PASSWORDS = {"hst": "a" * 24, "replication": "b" * 24, "sentinel": "c" * 24, "monitor": "d" * 24,
             "operator": "e" * 24}


def openssl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True, timeout=30, check=False)


def test_node_certificates_are_the_cas_and_name_their_address(tmp_path: Path) -> None:
    ca = tls.make_ca()
    document = tls.tls_secret_document(ADDRESSES, ca)
    assert set(document) == {tls.CA_CERT, *(e for a in ADDRESSES for e in tls.node_entries(a))}
    assert tls.CA_KEY not in document and ca.key_pem not in json.dumps(document)
    (tmp_path / "ca.crt").write_text(document[tls.CA_CERT])
    for address in ADDRESSES:
        assert tls.check_tls_document(document, address) == []
        cert = tmp_path / f"{address}.crt"
        cert.write_text(document[tls.cert_entry(address)])
        verified = openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), "-verify_ip", address,
                           "-purpose", "sslserver", str(cert))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        as_client = openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), "-purpose", "sslclient", str(cert))
        assert as_client.returncode == 0, as_client.stdout + as_client.stderr
    wrong_ip = openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), "-verify_ip", "127.0.2.99",
                       str(tmp_path / f"{ADDRESSES[0]}.crt"))
    assert wrong_ip.returncode != 0
    # Entries swapped between nodes, or signed by another CA, are found out.
    swapped = {**document, tls.key_entry(ADDRESSES[0]): document[tls.key_entry(ADDRESSES[1])]}
    assert tls.check_tls_document(swapped, ADDRESSES[0]) == [f"{ADDRESSES[0]}.key is not the key of {ADDRESSES[0]}.crt"]
    foreign = {**document, tls.CA_CERT: tls.make_ca().cert_pem}
    assert any("not signed" in p for p in tls.check_tls_document(foreign, ADDRESSES[0]))
    assert tls.check_tls_document({}, ADDRESSES[0]) == [f"no {e}" for e in tls.node_entries(ADDRESSES[0])]
    assert tls.load_ca(tls.ca_secret_document(ca)) == ca
    assert ca.key_pem not in repr(ca)
    with pytest.raises(ValueError, match="given twice"):
        tls.tls_secret_document([ADDRESSES[0], ADDRESSES[0]], ca)
    with pytest.raises(ValueError):
        tls.node_certificate(ca, "node-1.example")


def test_the_setting_is_a_boolean_refused_otherwise() -> None:
    assert parse_settings({}).tls_enabled is True  # on by default: HST Server's side stays on loopback
    assert parse_settings({"tlsEnabled": False}).tls_enabled is False
    assert parse_settings({"tlsEnabled": True}).tls_enabled is True
    assert parse_settings({"tlsEnabled": "true"}).tls_enabled is True
    with pytest.raises(SettingsError, match=r"tlsEnabled = 'yes': must be true or false"):
        parse_settings({"tlsEnabled": "yes"})


def layouts(home: Path, tls_command: str | None) -> list[NodeLayout]:
    return [NodeLayout(home=str(home / f"node-{i + 1}"), secrets_command=f"cat {home / 'secrets.json'}",
                       haproxy_address=ADDRESSES[i], tls_command=tls_command) for i in range(len(ADDRESSES))]


def test_rendered_tls_lines_and_none_without_the_setting(tmp_path: Path) -> None:
    on, off = parse_settings({}), parse_settings({"tlsEnabled": False})
    layout = layouts(tmp_path, "cat /dev/null")[1]
    bundle = render_bundle(on, NodePlace(1, ADDRESSES), layout)
    redis_conf = bundle.file(layout.template(layout.redis_conf)).content.splitlines()
    sentinel_conf = bundle.file(layout.template(layout.sentinel_conf)).content.splitlines()
    for conf, port in ((redis_conf, on.redis_port), (sentinel_conf, on.sentinel_port)):
        assert "port 0" in conf and f"tls-port {port}" in conf and f"port {port}" not in conf
        for line in ("tls-replication yes", "tls-auth-clients optional", f"tls-ca-cert-file {layout.tls_ca_file}",
                     f"tls-cert-file {layout.tls_cert_file}", f"tls-key-file {layout.tls_key_file}"):
            assert line in conf
    haproxy = bundle.file(layout.template(layout.haproxy_cfg)).content.splitlines()
    # The routed backend's servers, and each guard backend's default-server (its Sentinel servers take it).
    servers = [line for line in haproxy
               if line.lstrip().startswith("default-server inter 250ms") or f":{on.redis_port} " in line]
    assert len(servers) == 3 + 3
    assert all(line.endswith(f" ssl verify required ca-file {layout.tls_ca_file}") for line in servers)
    assert haproxy.count("    tcp-check connect ssl") == 1 + 3
    assert f"    bind {ADDRESSES[1]}:{on.haproxy_port}" in haproxy  # HST Server's side: plaintext
    env = bundle.file(layout.node_env).content
    assert f"TLS_CA_FILE={layout.tls_ca_file}\n" in env
    plain = render_bundle(off, NodePlace(1, ADDRESSES), layout)
    text = "\n".join(f.content for f in plain.files)
    assert "tls-" not in text and " ssl" not in text and "TLS_CA_FILE=''\n" in text
    with pytest.raises(ValueError, match="no way to fetch the TLS secret"):
        render_bundle(on, NodePlace(1, ADDRESSES), layouts(tmp_path, None)[1])


def test_boot_script_writes_the_nodes_tls_files_and_haproxy_accepts_them(tmp_path: Path) -> None:
    (tmp_path / "secrets.json").write_text(json.dumps(PASSWORDS))
    (tmp_path / "tls.json").write_text(json.dumps(tls.tls_secret_document(ADDRESSES)))
    settings = parse_settings({"tlsEnabled": True})
    for index, layout in enumerate(layouts(tmp_path, f"cat {tmp_path / 'tls.json'}")):
        bundle = render_bundle(settings, NodePlace(index, ADDRESSES), layout)
        for f in bundle.files:
            Path(f.path).parent.mkdir(parents=True, exist_ok=True)
            Path(f.path).write_text(f.content)
            os.chmod(f.path, f.mode)
        boot = subprocess.run(bundle.start_steps[0].argv, capture_output=True, text=True, timeout=60, check=False)
        assert boot.returncode == 0, boot.stderr
        assert stat.S_IMODE(os.stat(layout.tls_key_file).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(layout.tls_ca_file).st_mode) == 0o644
        verified = openssl("verify", "-CAfile", layout.tls_ca_file, "-verify_ip", ADDRESSES[index],
                           layout.tls_cert_file)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        checked = subprocess.run(["haproxy", "-c", "-f", layout.haproxy_cfg], capture_output=True, text=True,
                                 timeout=60, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(("document", "why"), [
    ("not json", "is not JSON"),
    ({"ca.crt": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"}, f"no PEM entry '{ADDRESSES[0]}.crt'"),
])
def test_boot_script_refuses_a_bad_tls_secret(tmp_path: Path, document: object, why: str) -> None:
    (tmp_path / "secrets.json").write_text(json.dumps(PASSWORDS))
    (tmp_path / "tls.json").write_text(document if isinstance(document, str) else json.dumps(document))
    layout = layouts(tmp_path, f"cat {tmp_path / 'tls.json'}")[0]
    bundle = render_bundle(parse_settings({"tlsEnabled": True}), NodePlace(0, ADDRESSES), layout)
    for f in bundle.files:
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        Path(f.path).write_text(f.content)
        os.chmod(f.path, f.mode)
    boot = subprocess.run(bundle.start_steps[0].argv, capture_output=True, text=True, timeout=60, check=False)
    assert boot.returncode == 1
    assert why in boot.stderr and "could not write the TLS certificates" in boot.stderr
    assert not Path(layout.redis_conf).exists()


def test_ssm_probe_asks_the_nodes_over_tls_and_haproxy_in_plaintext() -> None:
    script = ssm_probe.render_probe_script(["10.0.0.1:41415"], ["10.0.0.1:31415"], "myprimary", "true",
                                           "127.0.0.1:31414", "/opt/hst-ha/etc/tls-ca.crt")
    assert "TLS_CA_FILE=/opt/hst-ha/etc/tls-ca.crt\n" in script and "PLAINTEXT=127.0.0.1:31414\n" in script
    plain = ssm_probe.render_probe_script(["10.0.0.1:41415"], [], "myprimary", "true")
    assert "TLS_CA_FILE=''\n" in plain
