"""A node's TLS state from the certificate the manager verified (swarmd.manager.nodetls)."""

from __future__ import annotations

from datetime import timedelta

from swarmd.ca import pki, rotation
from swarmd.manager import nodetls

EXPIRY = timedelta(days=1)


def leaf(ca_cert: bytes, ca_key: bytes) -> bytes:
    return pki.sign_node_certificate(ca_cert, ca_key, pki.make_csr(pki.generate_key()), "n" * 25, "c" * 25,
                                     pki.WORKER_ROLE, EXPIRY)


def test_the_issuer_is_the_root_that_signed_the_leaf() -> None:
    old_cert, old_key = pki.create_root_ca()
    new_cert, new_key = pki.create_root_ca()
    roots = (old_cert.decode(), new_cert.decode())
    assert nodetls.issuer_of(leaf(old_cert, old_key), roots) == pki.tls_info(old_cert)
    # During a rotation the new key signs and the leaf comes with the cross-signed root: the
    # issuer is the new root, as the node itself would report it.
    cross = rotation.cross_sign(new_cert, old_cert, old_key)
    rotated = leaf(new_cert, new_key) + cross
    assert nodetls.issuer_of(rotated, roots) == pki.tls_info(new_cert) == rotation.issuer_info(rotated, old_cert)
    assert nodetls.issuer_of(rotated, roots[:1]) is None  # the new root is not (yet) a cluster root


def test_a_leaf_of_no_cluster_root_or_no_certificate_has_no_issuer() -> None:
    root, _ = pki.create_root_ca()
    other, other_key = pki.create_root_ca()
    assert nodetls.issuer_of(leaf(other, other_key), (root.decode(),)) is None
    assert nodetls.issuer_of(b"not a certificate", (root.decode(),)) is None
    assert nodetls.issuer_of(b"", (root.decode(),)) is None


def test_only_a_cluster_root_is_recorded_as_the_trust_root() -> None:
    current, _ = pki.create_root_ca()
    new, _ = pki.create_root_ca()
    roots = (current.decode(), new.decode())
    assert nodetls.trust_root(new.decode(), roots, stored=current.decode()) == new.decode()
    assert nodetls.trust_root("x" * (1 << 20), roots, stored=new.decode()) == new.decode()
    assert nodetls.trust_root("", roots, stored=None) == current.decode()
    assert nodetls.cluster_roots({"root_ca": {"cert": "A"}}) == ("A",)
    assert nodetls.cluster_roots({"root_ca": {"cert": "A"}, "root_rotation": {"cert": "B"}}) == ("A", "B")
