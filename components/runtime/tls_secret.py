"""The cluster's TLS secrets (`tlsEnabled`): the nodes' certificates and the deployer's CA.

Two secrets, made and kept here by whoever calls this module (the `ClusterTls` dynamic provider on
AWS), their values never returned, so never a Pulumi input, output or state entry:
- the nodes' secret, `components.bundle.tls.tls_secret_document`: the CA certificate and, per node
  address, its certificate and key. Every node's instance role reads it at boot;
- the CA secret, `components.bundle.tls.ca_secret_document`: the CA certificate and its key, read
  only here (to sign a certificate for a node added later). No node role can read it, so a node
  cannot mint a certificate the others would trust.

The life of the two, as `pulumi up`/`destroy` drive them through the provider:
- create: a new CA, one certificate per address, each secret under a name no one can have taken
  (`secret_store.unique_name`), carrying the stack's tags;
- the same addresses again: nothing is read or written;
- addresses added (a grow): the CA is loaded from its secret and signs the new addresses only;
  every other node's certificate and key are kept byte for byte (a running node holds its own
  copy, read at boot); addresses removed (a shrink) lose their entries;
- delete: only secrets carrying the stack's tags, with the configured recovery window.
Certificates are never renewed here (README: TLS, no rotation yet): tls.py makes them for ten years.

Pure module: no Pulumi import; the store (and its boto3 client) is the caller's, built per call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from components.bundle import tls
from components.runtime.bootstrap import SecretStore
from components.runtime.secret_store import (
    SecretRef,
    SecretStoreError,
    dump_string_map,
    load_string_map,
    unique_name,
)

__all__ = [
    "CA_DESCRIPTION", "NODES_DESCRIPTION", "TlsSecrets", "address_problems", "create", "delete",
    "stored_addresses", "sync_addresses",
]

NODES_DESCRIPTION = "hst-ha TLS: the cluster CA certificate and each node's certificate and key (JSON)"
CA_DESCRIPTION = "hst-ha TLS: the cluster CA's certificate and private key, for the deployer only (JSON)"


@dataclass(frozen=True)
class TlsSecrets:
    """Where the two secrets are and which addresses have a certificate. Nothing here is secret."""

    nodes: SecretRef  # the nodes' secret: ARN and version id on AWS; file path and version locally
    ca: SecretRef  # the deployer's CA secret
    addresses: tuple[str, ...]  # in address order


def address_problems(addresses: Sequence[str]) -> list[str]:
    """Why `addresses` cannot name the nodes' certificates; empty when they can."""
    if not addresses:
        return ["must list at least one node address"]
    problems = []
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except (TypeError, ValueError):
            problems.append(f"{address!r} is not an IP address (a node's certificate names its address)")
    if len(set(addresses)) != len(addresses):
        problems.append("lists an address twice")
    return problems


def _checked(addresses: Sequence[str]) -> tuple[str, ...]:
    problems = address_problems(addresses)
    if problems:
        raise SecretStoreError(f"TLS node addresses {list(addresses)}: {'; '.join(problems)}")
    return tuple(sorted(addresses, key=ipaddress.ip_address))


# What each secret holds, as a refusal to overwrite a spoiled one names it. Not ours to repair: the
# running nodes hold certificates this secret may be the only record of.
_NODES_DOCUMENT = "the nodes' TLS document (a JSON object of PEM texts)"
_CA_DOCUMENT = "the cluster CA document (a JSON object of PEM texts)"


def _need_tags(tags: Mapping[str, str], action: str) -> None:
    if not tags:
        raise SecretStoreError(f"refusing to {action} the TLS secrets without the stack's tags to prove them ours")


def create(store: SecretStore, nodes_prefix: str, ca_prefix: str, addresses: Sequence[str],
           tags: Mapping[str, str]) -> TlsSecrets:
    """A new CA in `<ca_prefix>-<random>` and a certificate per address in `<nodes_prefix>-<random>`."""
    wanted = _checked(addresses)
    _need_tags(tags, "create")
    ca = tls.make_ca(f"hst-ha {nodes_prefix}"[:64])  # a CN holds at most 64 characters
    ca_ref = store.put(unique_name(ca_prefix), dump_string_map(tls.ca_secret_document(ca)), description=CA_DESCRIPTION,
                       tags=tags)
    try:
        nodes_ref = store.put(unique_name(nodes_prefix), dump_string_map(tls.tls_secret_document(wanted, ca)),
                              description=NODES_DESCRIPTION, tags=tags)
    except BaseException:
        # Pulumi records nothing for a failed create: a CA left behind would be nobody's to delete.
        store.delete(ca_ref, 0, tags=tags)
        raise
    return TlsSecrets(nodes=nodes_ref, ca=ca_ref, addresses=wanted)


def stored_addresses(store: SecretStore, nodes: SecretRef) -> tuple[str, ...]:
    """The addresses the nodes' secret holds a valid certificate and key for (refresh, diff)."""
    document = load_string_map(nodes.name, store.get(nodes), _NODES_DOCUMENT)
    held = {entry[: -len(".crt")] for entry in document if entry.endswith(".crt") and entry != tls.CA_CERT}
    valid = []
    for address in held:
        try:
            if not tls.check_tls_document(document, address):
                valid.append(address)
        except ValueError:  # an entry named like no address: not a node's
            continue
    return tuple(sorted(valid, key=ipaddress.ip_address))


def sync_addresses(store: SecretStore, secrets: TlsSecrets, addresses: Sequence[str],
                   tags: Mapping[str, str]) -> TlsSecrets:
    """Bring the nodes' secret to `addresses`: the CA (from its secret) signs each address that has
    no valid certificate yet; every valid one is kept as it is; removed addresses are dropped. Writes
    a version only when something changed; the CA secret is only read."""
    wanted = _checked(addresses)
    _need_tags(tags, "write into")
    current = load_string_map(secrets.nodes.name, store.get(secrets.nodes), _NODES_DOCUMENT)
    ca = tls.load_ca(load_string_map(secrets.ca.name, store.get(secrets.ca), _CA_DOCUMENT))
    if current.get(tls.CA_CERT) != ca.cert_pem:
        raise SecretStoreError(
            f"secret {secrets.nodes.name!r} does not hold the CA certificate of {secrets.ca.name!r}: the running "
            "nodes trust the one they read at boot; restore the matching versions of both secrets and run up again")
    document = {tls.CA_CERT: ca.cert_pem}
    for address in wanted:
        if tls.check_tls_document(current, address):
            document[tls.cert_entry(address)], document[tls.key_entry(address)] = tls.node_certificate(ca, address)
        else:
            document.update({entry: current[entry] for entry in tls.node_entries(address) if entry != tls.CA_CERT})
    if document == current:
        return TlsSecrets(nodes=secrets.nodes, ca=secrets.ca, addresses=wanted)
    # By name: the store then checks the secret still carries our tags and no resource policy.
    ref = store.put(secrets.nodes.name, dump_string_map(document), tags=tags)
    return TlsSecrets(nodes=ref, ca=secrets.ca, addresses=wanted)


def delete(store: SecretStore, secrets: TlsSecrets, recovery_window_days: int, tags: Mapping[str, str]) -> None:
    """Delete both secrets, each refused unless it carries `tags`; a missing one is not an error."""
    _need_tags(tags, "delete")
    store.delete(secrets.nodes, recovery_window_days, tags=tags)
    store.delete(secrets.ca, recovery_window_days, tags=tags)
