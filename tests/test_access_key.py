"""The access-key registration step: the exact requests, the rendered bundle, and the script run
against a stand-in Node API (HTTPS, self-signed) and a real Redis. No real HST Server can run
here, so what HSTS does with the requests is not tested: only that these requests are sent."""

from __future__ import annotations

import base64
import datetime
import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from components.aws.cloud_config import (
    USER_DATA_LIMIT,
    aws_layout,
    node_files,
    node_user_data,
    written_files,
)
from components.bundle import NodePlace, document, render_bundle
from components.bundle.access_key import (
    NODE_API_USER,
    access_key_requests,
    render_access_key_step,
)
from components.bundle.scripts import ACCESS_KEY, SECRET, module_files, node_env, shipped
from components.bundle.users import MIN_PASSWORD_LENGTH, ROLE_KEYS
from components.runtime import bearer_token
from components.settings import parse_settings

pytestmark = pytest.mark.timeout(60)

# Own loopback addresses, apart from the local cluster (127.0.0.11..) and the bundle tests (127.0.1.x).
API_HOST = "127.0.2.10"
REDIS_HOST = "127.0.2.11"
ADDRESSES = ("10.42.0.10", "10.42.64.10", "10.42.128.10")
PUBLIC_KEY = bearer_token.public_key_pem(bearer_token.generate_signing_key(1024))
TLS_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hst-ha-tls-AbCdEf"
HST = {
    "hstInstallerUrl": "https://example.com/ibm-aspera-hsts.deb",
    "hstLicenseSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hsts-licence-AbCdEf",
    "hstRedisPasswordSetting": "db_password",
    "hstInstallerSha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
}
ACCESS_KEY_SECRET = "AccessKeySecretTheScriptMustNeverPrint0123"


def test_requests_are_get_then_put_or_post_with_the_verification_key():
    probe, update, create = access_key_requests("hst-ha-bootstrap", PUBLIC_KEY, "/srv/aspera")
    assert (probe.method, probe.path, probe.body) == ("GET", "/access_keys/hst-ha-bootstrap", None)
    assert (update.method, update.path) == ("PUT", "/access_keys/hst-ha-bootstrap")
    assert update.body == {"token_verification_key": PUBLIC_KEY}
    assert (create.method, create.path) == ("POST", "/access_keys")
    assert create.body == {
        "id": "hst-ha-bootstrap",
        "token_verification_key": PUBLIC_KEY,
        "storage": {"type": "local", "path": "/srv/aspera"},
    }
    assert json.loads(create.body_json()) == create.body


def test_an_access_key_id_is_escaped_in_the_path():
    probe, update, _ = access_key_requests("team a/b?", PUBLIC_KEY)
    assert probe.path == update.path == "/access_keys/team%20a%2Fb%3F"


def test_only_a_public_key_is_accepted():
    private = bearer_token.private_key_pem(bearer_token.generate_signing_key(1024))
    with pytest.raises(ValueError, match="PEM public key"):
        access_key_requests("hst-ha-bootstrap", private)


def _bundles(config: dict, key: str | None):
    settings = parse_settings({"nodeCount": 3, **config})
    licence = config.get("hstLicenseSecretArn")
    secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:redis-AbCdEf"
    layouts = [aws_layout(secret_arn, "eu-west-1", licence, tls_secret_arn=TLS_ARN)] * 3
    return settings, [
        render_bundle(settings, NodePlace(i, ADDRESSES), layouts[i], token_verification_key=key) for i in range(3)
    ]


def test_only_the_initial_primary_registers_and_only_with_hsts_installed():
    _, with_hst = _bundles(HST, PUBLIC_KEY)
    # Last, and after HST Server's installation: the script waits for asnodeadmin and the Node API.
    assert [s.name for s in with_hst[0].start_steps][-2:] == ["hsts", "access-key"]
    for replica in with_hst[1:]:
        assert "access-key" not in [s.name for s in replica.start_steps]
    _, without_hst = _bundles({}, PUBLIC_KEY)
    assert all("access-key" not in [s.name for s in b.start_steps] for b in without_hst)
    _, without_key = _bundles(HST, None)
    assert all("access-key" not in [s.name for s in b.start_steps] for b in without_key)


def test_the_bundle_carries_the_exact_request_bodies_and_runs_the_step_last():
    _, bundles = _bundles({**HST, "accessKeyId": "ops-key"}, PUBLIC_KEY)
    primary = bundles[0]
    step = primary.start_steps[-1]
    assert step.argv == ("/opt/hst-ha/bin/hst-ha-access-key",) and not step.daemon
    create = json.loads(primary.file("/opt/hst-ha/etc/access-key/create.json").content)
    update = json.loads(primary.file("/opt/hst-ha/etc/access-key/update.json").content)
    assert create == {"id": "ops-key", "token_verification_key": PUBLIC_KEY,
                      "storage": {"type": "local", "path": "/srv/aspera"}}
    assert update == {"token_verification_key": PUBLIC_KEY}
    settings = parse_settings({"nodeCount": 3, **HST, "accessKeyId": "ops-key"})
    user_data = node_user_data(settings, NodePlace(0, ADDRESSES), aws_layout("arn:x", "eu-west-1",
                               HST["hstLicenseSecretArn"], tls_secret_arn=TLS_ARN), parameter="/o/p/s/cluster-document",
                               region="eu-west-1", code_url="s3://bucket/code/0123.tar.gz",
                               token_verification_key=PUBLIC_KEY)
    # The key travels in the initial primary's user data (registered once, at its first boot) and the
    # node renders the request bodies from it.
    node = json.loads(written_files(user_data)["/opt/hst-ha/etc/node.json"])
    assert node["accessKey"] == {"id": "ops-key", "verificationKey": PUBLIC_KEY}
    files = node_files(user_data, document.dump(document.build(settings, ADDRESSES)))
    assert json.loads(files["/opt/hst-ha/etc/access-key/create.json"]) == create
    # cloud-init runs it after every daemon is enabled.
    runcmd = yaml.safe_load(user_data)["runcmd"]
    assert runcmd[-1] == ["/opt/hst-ha/bin/hst-ha-access-key"]
    assert "PRIVATE KEY" not in user_data


@pytest.mark.parametrize("n", [3, 15])
def test_the_largest_user_data_fits_ec2(tmp_path, n):
    """The initial primary with HST Server and the default 4096-bit verification key carries the most."""
    settings = parse_settings({"nodeCount": n, **HST})
    layout = aws_layout("arn:aws:secretsmanager:eu-west-1:123456789012:secret:redis-AbCdEf", "eu-west-1",
                        HST["hstLicenseSecretArn"], tls_secret_arn=TLS_ARN)
    key = bearer_token.public_key_pem(bearer_token.generate_signing_key(4096))
    addresses = tuple(f"10.42.{i % 3}.{10 + i // 3}" for i in range(n))
    text = node_user_data(settings, NodePlace(0, addresses), layout, parameter="/o/p/s/cluster-document",
                          region="eu-west-1", code_url="s3://bucket/code/0123.tar.gz", token_verification_key=key)
    assert len(text.encode()) <= USER_DATA_LIMIT  # as text: nothing gzipped
    (tmp_path / "primary.yaml").write_text(text)
    result = subprocess.run(["cloud-init", "schema", "-c", str(tmp_path / "primary.yaml")],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    files = node_files(text, document.dump(document.build(settings, addresses)))
    assert json.loads(files["/opt/hst-ha/etc/access-key/update.json"]) == {"token_verification_key": key}


def test_the_script_is_shipped_as_it_is_and_its_values_are_in_the_data_file():
    # shellcheck runs on files/hst-ha-access-key.sh in tests/test_node_scripts.py.
    _, bundles = _bundles(HST, PUBLIC_KEY)
    assert bundles[0].file("/opt/hst-ha/bin/hst-ha-access-key").content == shipped(ACCESS_KEY)
    env = bundles[0].file("/opt/hst-ha/etc/node.env").content
    assert "ACCESS_KEY_ID=hst-ha-bootstrap\n" in env
    assert "ACCESS_KEY_CREATE_BODY=/opt/hst-ha/etc/access-key/create.json\n" in env
    # Replicas do not register the key, so their data file has none of its values.
    assert "ACCESS_KEY_" not in bundles[1].file("/opt/hst-ha/etc/node.env").content


# --------------------------------------------------------------------------- run against stand-ins


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _self_signed(tmp: Path) -> ssl.SSLContext:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-api-stand-in")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1)).sign(key, hashes.SHA256())
    )
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return context


class StandInNodeApi:
    """Records every request; knows the access keys in `existing`; answers a creation with a secret."""

    def __init__(self, tmp: Path, existing: set[str]):
        self.requests: list[dict] = []
        self.existing = existing
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                auth = self.headers.get("Authorization", "")
                user = base64.b64decode(auth.split(" ", 1)[1]).decode() if auth.startswith("Basic ") else ""
                api.requests.append({
                    "method": self.command, "path": self.path, "body": json.loads(body) if body else None,
                    "user": user, "content_type": self.headers.get("Content-Type"),
                })
                reply: dict[str, Any] = {"error": {"user_message": "not found"}}
                status = 404
                if self.path == "/ping":
                    status, reply = 200, {}
                elif self.command == "GET" and self.path.startswith("/access_keys/"):
                    if self.path.rsplit("/", 1)[1] in api.existing:
                        status, reply = 200, {"id": self.path.rsplit("/", 1)[1]}
                elif self.command == "PUT":
                    status, reply = 200, {"id": self.path.rsplit("/", 1)[1]}
                elif self.command == "POST" and self.path == "/access_keys":
                    status, reply = 201, {"id": json.loads(body)["id"], "secret": ACCESS_KEY_SECRET}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.port = _free_port(API_HOST)
        self.server = ThreadingHTTPServer((API_HOST, self.port), Handler)
        self.server.socket = _self_signed(tmp).wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def redis_primary(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real Redis standing in for "HAProxy leads to the primary"; only this process is stopped."""
    password_file = tmp_path / "redis-users.json"
    # The Redis users' secret: HST Server's role is the one the step authenticates with.
    password_file.write_text(json.dumps({r: f"AccessKeyTest{r.capitalize()}Password0123" for r in ROLE_KEYS}))
    password_file.chmod(0o600)
    port = _free_port(REDIS_HOST)
    child = subprocess.Popen(
        ["redis-server", "--bind", REDIS_HOST, "--port", str(port), "--requirepass", "AccessKeyTestHstPassword0123",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection((REDIS_HOST, port), timeout=0.1).close()
                break
            except OSError:
                threading.Event().wait(0.02)
        yield port, password_file
    finally:
        child.terminate()
        child.wait(10)


def _run_step(tmp_path: Path, redis_port: int, password_file: Path, existing: set[str]):
    api = StandInNodeApi(tmp_path, existing)
    fake_admin = tmp_path / "asnodeadmin"
    # Records how it was called; the password argument is what curl must then authenticate with.
    fake_admin.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" >> {tmp_path}/asnodeadmin.calls\n'
                          f'echo == >> {tmp_path}/asnodeadmin.calls\n')
    fake_admin.chmod(0o755)
    step = render_access_key_step(
        "hst-ha-bootstrap", PUBLIC_KEY, str(tmp_path / "home"), REDIS_HOST, redis_port,
        asnodeadmin=str(fake_admin), node_api=f"https://{API_HOST}:{api.port}", wait_s=20,
    )
    # As the bundle lays them out: the script in <home>/bin, its values in <home>/etc/node.env.
    env = {**step.env, "SECRETS_COMMAND": f"cat {password_file}", "SECRET_ROLES": " ".join(ROLE_KEYS),
           "MIN_PASSWORD_LENGTH": MIN_PASSWORD_LENGTH}
    files = [*step.files, (step.script_path, step.script, 0o755),
             (str(tmp_path / "home/bin/hst-ha-secret"), shipped(SECRET), 0o755),
             (str(tmp_path / "home/etc/node.env"), node_env("node-1", env), 0o644),
             *((f.path, f.content, f.mode) for f in module_files(str(tmp_path / "home")))]
    for path, content, mode in files:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
        os.chmod(path, mode)
    try:
        done = subprocess.run([step.script_path], check=False, capture_output=True, text=True, timeout=40)
    finally:
        api.close()
    calls = [c.strip("\n").split("\n") for c in (tmp_path / "asnodeadmin.calls").read_text().split("==\n") if c.strip()]
    # The bootstrap Node API user is deleted when the step ends.
    assert calls[-1] == ["-d", "-u", NODE_API_USER]
    return step, api.requests, done, calls[0]


def test_script_posts_a_new_access_key(tmp_path: Path, redis_primary):
    port, password_file = redis_primary
    step, requests, done, admin_args = _run_step(tmp_path, port, password_file, existing=set())
    assert done.returncode == 0, done.stderr
    calls = [(r["method"], r["path"]) for r in requests if r["path"] != "/ping"]
    assert calls == [("GET", "/access_keys/hst-ha-bootstrap"), ("POST", "/access_keys")]
    post = requests[-1]
    assert post["body"] == step.create.body and post["content_type"] == "application/json"
    # curl authenticated as the Node API user asnodeadmin was just asked to create, with its password.
    assert admin_args[:2] == ["-a", "-u"] and admin_args[2] == NODE_API_USER
    node_password = admin_args[admin_args.index("-p") + 1]
    assert post["user"] == f"{NODE_API_USER}:{node_password}" and len(node_password) == 32
    assert "created" in done.stderr
    output = done.stdout + done.stderr
    for secret in (ACCESS_KEY_SECRET, node_password, "AccessKeyTestHstPassword0123"):
        assert secret not in output


def test_script_puts_the_key_on_an_existing_access_key(tmp_path: Path, redis_primary):
    port, password_file = redis_primary
    _, requests, done, _ = _run_step(tmp_path, port, password_file, existing={"hst-ha-bootstrap"})
    assert done.returncode == 0, done.stderr
    calls = [(r["method"], r["path"], r["body"]) for r in requests if r["path"] != "/ping"]
    assert calls == [
        ("GET", "/access_keys/hst-ha-bootstrap", None),
        ("PUT", "/access_keys/hst-ha-bootstrap", {"token_verification_key": PUBLIC_KEY}),
    ]
    assert "updated" in done.stderr
