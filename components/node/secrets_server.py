"""The node target's AWS: moto's server over TLS, holding the cluster's Redis secret (Secrets
Manager), the cluster document (SSM) and the code archive (S3), as the program made them.

Debian 12's botocore (1.29) has no AWS_ENDPOINT_URL, so the nodes reach it under the regional names
(`secretsmanager.<region>.amazonaws.com`, `ssm.<region>...`, `<bucket>.s3.<region>...`, mapped in
each node's /etc/hosts by vendor-data) and trust it through AWS_CA_BUNDLE: a throwaway CA made per
run, whose key never leaves the state dir.

    python -m components.node.secrets_server STATE_DIR ADDRESS PORT REGION SECRET_NAME [TLS_SECRET_NAME]

listens on every address of its namespace (each node has its own: see NodeCluster), reads the
secret from STATE_DIR/redis-users.json (0600; never on a command line): the program's document, a
JSON object with one password per role (components/bundle/users.py), checked with `parse_secret`
before it is stored, with TLS_SECRET_NAME the nodes' TLS secret from STATE_DIR/tls.json (0600; the
CA certificate and each node's certificate and key, `components.bundle.tls.tls_secret_document`),
and the SSM parameters and S3 objects from STATE_DIR/aws-objects.json (what
components.node.program captured: {"parameters": {name: value}, "objects": [{"bucket", "key",
"contentBase64"}]}). Then it writes STATE_DIR/secrets-server.ready and serves until SIGTERM. Needs
moto's server extras (flask).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import signal
import sys
import threading
from pathlib import Path

from components.bundle.users import parse_secret

CA_FILE = "ca.pem"
CERT_FILE = "secrets-server.pem"
KEY_FILE = "secrets-server.key"
SECRET_FILE = "redis-users.json"  # the same name as the local target's (components.local.state)
READY_FILE = "secrets-server.ready"
OBJECTS_FILE = "aws-objects.json"
TLS_FILE = "tls.json"  # the nodes' TLS secret (tlsEnabled), as the ClusterTls provider stores it
HOST_CA_FILE = "tls-ca.crt"  # the cluster CA's certificate, for clients on the host (drills)


def endpoint_name(region: str) -> str:
    return f"secretsmanager.{region}.amazonaws.com"


def other_endpoint_names(region: str, buckets: list[str]) -> list[str]:
    """SSM's and S3's regional names (S3 addresses a bucket by its virtual host), which every node
    reaches at the hub's own address: only Secrets Manager's can be cut per node."""
    return [f"ssm.{region}.amazonaws.com", f"s3.{region}.amazonaws.com",
            *(f"{b}.s3.{region}.amazonaws.com" for b in sorted(set(buckets)))]


def buckets(state_dir: Path) -> list[str]:
    objects = json.loads((state_dir / OBJECTS_FILE).read_text())["objects"]
    return [str(o["bucket"]) for o in objects]


def make_certificates(state_dir: Path, region: str, address: str, names: list[str] | None = None) -> None:
    """A CA and a server certificate for the regional names (and the address), valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hst-ha node target throwaway CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, endpoint_name(region))]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(endpoint_name(region)), *(x509.DNSName(n) for n in names or ()),
            x509.IPAddress(ipaddress.ip_address(address)),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (state_dir / CA_FILE).write_bytes(ca.public_bytes(pem))
    (state_dir / CERT_FILE).write_bytes(cert.public_bytes(pem))
    key_path = state_dir / KEY_FILE
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def serve(state_dir: Path, address: str, port: int, region: str, secret_name: str, tls_secret_name: str = "") -> None:
    import boto3
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("0.0.0.0", port, app, threaded=True,
                         ssl_context=(str(state_dir / CERT_FILE), str(state_dir / KEY_FILE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    client = boto3.client(
        "secretsmanager", region_name=region, endpoint_url=f"https://{address}:{port}",
        verify=str(state_dir / CA_FILE), aws_access_key_id="node-target", aws_secret_access_key="node-target",
    )
    document = (state_dir / SECRET_FILE).read_text()
    parse_secret(document)  # a malformed document fails here, naming the role, not at the nodes' first boot
    client.create_secret(Name=secret_name, SecretString=document)
    if tls_secret_name:
        client.create_secret(Name=tls_secret_name, SecretString=(state_dir / TLS_FILE).read_text())
    objects = json.loads((state_dir / OBJECTS_FILE).read_text())
    ssm = boto3.client(
        "ssm", region_name=region, endpoint_url=f"https://{address}:{port}",
        verify=str(state_dir / CA_FILE), aws_access_key_id="node-target", aws_secret_access_key="node-target",
    )
    for name, value in objects["parameters"].items():
        ssm.put_parameter(Name=name, Value=value, Type="String")
    s3 = boto3.client(
        "s3", region_name=region, endpoint_url=f"https://{address}:{port}",
        verify=str(state_dir / CA_FILE), aws_access_key_id="node-target", aws_secret_access_key="node-target",
    )
    for bucket in sorted({o["bucket"] for o in objects["objects"]}):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    for o in objects["objects"]:
        s3.put_object(Bucket=o["bucket"], Key=o["key"], Body=base64.b64decode(o["contentBase64"]))
    (state_dir / READY_FILE).write_text("ready\n")
    thread.join()


if __name__ == "__main__":
    directory, bind, port_text, region_name, name = sys.argv[1:6]
    serve(Path(directory), bind, int(port_text), region_name, name, *sys.argv[6:7])
