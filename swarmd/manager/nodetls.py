"""A node's TLS state (``node inspect``'s TLSInfo, and what root rotation waits for), taken from
what the manager verified rather than from what the node says.

The issuer is the cluster CA whose key signed the certificate the node connected with: TLS
checked that signature, so no request field is needed (or believed). The trust root is the one
thing only the node knows; it is kept only when it is one of the cluster's roots, so a node
cannot put anything else (a megabyte that changes on every call, say) into the store.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from cryptography import x509

from swarmd.ca import pki


def cluster_roots(cluster: Mapping[str, Any]) -> tuple[str, ...]:
    """The roots a node may hold: the current one, and the new one while a rotation runs."""
    rotating = cluster.get("root_rotation")
    current = str(cluster["root_ca"]["cert"])
    return (current, str(rotating["cert"])) if rotating else (current,)


@functools.lru_cache(maxsize=1 << 15)  # a fleet of 10,000 nodes, twice during a rotation
def issuer_of(cert_pem: bytes, roots: tuple[str, ...]) -> tuple[str, str] | None:
    """(CertIssuerSubject, CertIssuerPublicKey) of the root in ``roots`` that signed the leaf
    (during a rotation the new key signs, and the new root carries it); None if none did.
    Cached: every node calls every few seconds with the same certificate."""
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return None
    for root in roots:
        try:
            leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(root.encode()))
        except Exception:  # noqa: BLE001 - any failure means "not this root"
            continue
        return pki.tls_info(root.encode())
    return None


def trust_root(claimed: str, roots: tuple[str, ...], stored: str | None) -> str:
    """The root to record as the node's: its claim if that is a cluster root, else what the store
    already says (a node that has not adopted a finished rotation's root yet), else the current one."""
    if claimed in roots:
        return claimed
    return stored or roots[0]
