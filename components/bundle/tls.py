"""The cluster's private CA and its nodes' certificates (`tlsEnabled`), as PEM text. Pure: no Pulumi, no I/O.

One CA per cluster signs one certificate per node address; Redis and Sentinel on that address
present it to every client, and present it again as their client certificate when they connect to
each other (replication, Sentinel links). Its only name is the node's IP address (an IP SAN): the
nodes and the clients reach each other by address, never by host name.

Two documents, two readers:
- `tls_secret_document`: what every node fetches at boot (the CA certificate, each node's
  certificate and key), the TLS counterpart of the Redis users' secret. A node's boot script writes
  its own three files from it (files/hst-ha-secret.sh, `--tls`).
- `ca_secret_document`: the CA's key, for the deployer alone (to sign a certificate for a node added
  later); the nodes never read it, so a node cannot mint a certificate.

Keys are ECDSA P-256: as strong as RSA 3072 for TLS and generated in milliseconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The secret's entry names are the node's business too: defined where its stdlib renderer reads them.
from components.bundle.names import TLS_CA_CERT as CA_CERT
from components.bundle.names import tls_cert_entry as cert_entry
from components.bundle.names import tls_key_entry as key_entry
from components.bundle.names import tls_node_entries as node_entries

__all__ = [
    "CA_CERT", "CA_KEY", "CA_VALID_DAYS", "NODE_VALID_DAYS", "CertificateAuthority", "ca_secret_document",
    "cert_entry", "check_tls_document", "key_entry", "load_ca", "make_ca", "node_certificate", "node_entries",
    "tls_secret_document",
]

# There is no certificate rotation yet (README: TLS), so a certificate must outlive the cluster.
CA_VALID_DAYS = 3650
NODE_VALID_DAYS = 3650

CA_KEY = "ca.key"


@dataclass(frozen=True)
class CertificateAuthority:
    cert_pem: str
    key_pem: str

    def __repr__(self) -> str:  # the default repr would print the key
        return "CertificateAuthority(<private key hidden>)"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def make_ca(common_name: str = "hst-ha cluster CA", now: datetime | None = None) -> CertificateAuthority:
    """A new self-signed CA that may sign node certificates only (path length 0)."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def load_ca(document: Mapping[str, str]) -> CertificateAuthority:
    """The CA back from `ca_secret_document`'s document."""
    try:
        return CertificateAuthority(document[CA_CERT], document[CA_KEY])
    except KeyError as missing:
        raise ValueError(f"the CA document has no {missing}; it holds {sorted(document)}") from None


def node_certificate(ca: CertificateAuthority, address: str, now: datetime | None = None) -> tuple[str, str]:
    """(certificate PEM, key PEM) for the node at `address`: server and client authentication, IP SAN only."""
    ip = ipaddress.ip_address(address)  # ValueError for anything but an address
    now = now or datetime.now(UTC)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key made by make_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=NODE_VALID_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key)


def tls_secret_document(addresses: Iterable[str], ca: CertificateAuthority | None = None) -> dict[str, str]:
    """What the nodes fetch: the CA certificate and, per node address, its certificate and key.

    Without `ca` a new CA is made and only its certificate is returned here: keep the CA with
    `make_ca` + `ca_secret_document` when certificates must be signed later (a node added)."""
    ca = ca or make_ca()
    document = {CA_CERT: ca.cert_pem}
    for address in addresses:
        if cert_entry(address) in document:
            raise ValueError(f"node address {address} is given twice")
        document[cert_entry(address)], document[key_entry(address)] = node_certificate(ca, address)
    return document


def ca_secret_document(ca: CertificateAuthority) -> dict[str, str]:
    """The CA with its key: the deployer's secret, never readable by the nodes."""
    return {CA_CERT: ca.cert_pem, CA_KEY: ca.key_pem}


def check_tls_document(document: Mapping[str, str], address: str) -> list[str]:
    """What is wrong with `document` for the node at `address` (empty when it can serve TLS):
    the three entries exist, the certificate is the CA's, names the address and matches the key."""
    problems = [f"no {entry}" for entry in node_entries(address) if entry not in document]
    if problems:
        return problems
    try:
        ca_cert = x509.load_pem_x509_certificate(document[CA_CERT].encode())
        cert = x509.load_pem_x509_certificate(document[cert_entry(address)].encode())
        key = serialization.load_pem_private_key(document[key_entry(address)].encode(), password=None)
    except ValueError as error:
        return [f"an entry is not PEM ({error})"]
    if cert.issuer != ca_cert.subject:
        problems.append(f"{cert_entry(address)} is not signed by {CA_CERT}")
    else:
        ca_public = ca_cert.public_key()
        if not isinstance(ca_public, ec.EllipticCurvePublicKey):
            problems.append(f"{CA_CERT} has no EC key")
        else:
            try:
                ca_public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
            except Exception:  # cryptography's InvalidSignature
                problems.append(f"{cert_entry(address)} is not signed by {CA_CERT}")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if ipaddress.ip_address(address) not in names.get_values_for_type(x509.IPAddress):
        problems.append(f"{cert_entry(address)} does not name {address}")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        problems.append(f"{key_entry(address)} is not the key of {cert_entry(address)}")
    return problems
