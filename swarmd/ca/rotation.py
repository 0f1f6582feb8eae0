"""Root CA rotation (swarm-behaviour.md §2.4): cross-signing, checks of an operator's CA, which
CA issued a node's certificate, and the steps the leader takes.

While a rotation runs, the trust root stays the old one; new certificates are signed with the new
key and sent with the new root cross-signed by the old key, so a node that still trusts only the
old root accepts them. Once every node has such a certificate the new root becomes the trust root.

``start`` records the new root, its key and the cross-signed certificate; from then on new node
certificates come from the new key. ``reconcile`` (run by the leader every few hundred ms, see
``swarmd.manager.rootrotation``) asks nodes to renew in batches of 30 and, once every node that
is up (Ready) holds a certificate from the new root, makes it the trust root and replaces both
join tokens. A node that was down meanwhile is not waited for: its old certificate is no longer
trusted, and it rejoins with the new token.

The steps read and write the cluster through the callables they are given (the manager's store),
so nothing here imports the manager.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from swarmd import errors
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import pki, tokens
from swarmd.errors import SwarmError
from swarmd.timeutil import now_rfc3339

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_CA_VALIDITY = timedelta(days=365)
BATCH = 30  # swarmkit's IssuanceStateRotateMaxBatchSize

# ``Manager.propose``: propose a store op, its result once applied (a refusal raises SwarmError).
Propose = Callable[..., object]


class ReadState(Protocol):
    """``StateMachine.read``: run a function on this manager's copy of the state, under its lock."""

    def __call__(self, fn: Callable[[Mapping[str, Any]], T], /) -> T: ...


class RotationError(ValueError):
    """A CA the cluster cannot rotate to; the message is Docker's."""


def cross_sign(new_root_pem: bytes, old_root_pem: bytes, old_key_pem: bytes) -> bytes:
    """The new root's certificate re-issued by the old root: same subject, key and extensions."""
    new = x509.load_pem_x509_certificate(new_root_pem)
    old = x509.load_pem_x509_certificate(old_root_pem)
    old_key = serialization.load_pem_private_key(old_key_pem, password=None)
    if not isinstance(old_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise RotationError("unable to generate a cross-signed certificate for root rotation")
    builder = (x509.CertificateBuilder()
               .subject_name(new.subject)
               .issuer_name(old.subject)
               .public_key(new.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(new.not_valid_before_utc)
               .not_valid_after(min(new.not_valid_after_utc, old.not_valid_after_utc)))
    for ext in new.extensions:
        if ext.oid != ExtensionOID.AUTHORITY_KEY_IDENTIFIER:
            builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(old.public_key()), critical=False)  # type: ignore[arg-type]
    return builder.sign(old_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def check_signing_ca(cert_pem: bytes, key_pem: bytes, current_root_pem: bytes,
                     now: datetime | None = None) -> bytes:
    """Validate an operator's root CA as Docker does; return the certificate PEM, normalised."""
    when = now or datetime.now(UTC)
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise RotationError("could not parse the desired CA certificate") from None
    if len(certs) != 1:
        raise RotationError("the desired CA certificate cannot contain multiple certificates")
    cert = certs[0]
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise RotationError("the desired CA certificate is not a CA certificate")
    except x509.ExtensionNotFound:
        raise RotationError("the desired CA certificate is not a CA certificate") from None
    if cert.not_valid_after_utc - when < MIN_CA_VALIDITY:
        raise RotationError("CA certificate expires too soon")
    if when < cert.not_valid_before_utc:
        raise RotationError("the desired CA certificate is not valid yet")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise RotationError("could not parse the desired CA key (a PEM key without a passphrase)") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RotationError("the desired CA key must be an ECDSA key")
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise RotationError("the desired CA key does not match the desired CA certificate")
    current = x509.load_pem_x509_certificate(current_root_pem)
    if current.public_key().public_bytes(serialization.Encoding.DER, spki) == \
            cert.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise RotationError("Cannot update to a cert with an identical key")
    return cert.public_bytes(serialization.Encoding.PEM)


def issuer_info(chain_pem: bytes, root_pem: bytes) -> tuple[str, str]:
    """(CertIssuerSubject, CertIssuerPublicKey) of the CA that signed the chain's leaf: the
    cross-signed intermediate when the chain has one, else the root."""
    chain = x509.load_pem_x509_certificates(chain_pem)
    if len(chain) > 1:
        return pki.tls_info(chain[1].public_bytes(serialization.Encoding.PEM))
    return pki.tls_info(root_pem)  # the first root of the bundle


def root_digest(root_pem: bytes) -> str:
    """``sha256:<hex>`` as the rotation progress shows it."""
    return "sha256:" + tokens.root_digest_hex(root_pem)


def spki_b64(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


# -- the cluster's rotation state ------------------------------------------------------------
def signing_material(cluster: Mapping[str, Any]) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, CA key, chain to append) that new node certificates are issued with."""
    current = cluster.get("root_rotation")
    if current:
        return current["cert"].encode(), current["key"].encode(), current["cross_signed"].encode()
    return cluster["root_ca"]["cert"].encode(), cluster["root_ca"]["key"].encode(), b""


def trusted_roots(cluster: Mapping[str, Any]) -> bytes:
    """The roots a manager accepts node certificates from: the new one too while rotating."""
    current = cluster.get("root_rotation")
    roots = str(cluster["root_ca"]["cert"])
    return (roots + current["cert"] if current else roots).encode()


def desired_root(cluster: Mapping[str, Any]) -> str:
    """The root new node certificates come from: the new one while rotating."""
    current = cluster.get("root_rotation")
    return str(current["cert"] if current else cluster["root_ca"]["cert"])


def converged(node: Mapping[str, Any], desired_spki: str) -> bool:
    """Whether a node's certificate comes from the root whose key is ``desired_spki``."""
    return bool((node.get("tls") or {}).get("issuer_public_key") == desired_spki)


# -- the leader's steps ----------------------------------------------------------------------
def start(cluster: Mapping[str, Any], req: pb.UpdateClusterRequest, spec: Mapping[str, Any],
          propose: Propose) -> None:
    """Begin a rotation of ``cluster`` to the operator's CA in ``req``, or to a new one; ``spec``:
    the spec changes the same update makes (stored with the rotation, in one op)."""
    old_cert, old_key = cluster["root_ca"]["cert"].encode(), cluster["root_ca"]["key"].encode()
    force: int | None = None
    try:
        if req.signing_ca_cert or req.signing_ca_key:
            if not req.signing_ca_cert:
                raise errors.invalid(errors.rpc_text(
                    "INVALID_ARGUMENT", "if a signing CA key is provided, the signing CA cert must also be provided"))
            new_cert = check_signing_ca(req.signing_ca_cert, req.signing_ca_key, old_cert)
            new_key = serialization.load_pem_private_key(req.signing_ca_key, password=None).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        else:
            new_cert, new_key = pki.create_root_ca()
            force = int(cluster.get("force_rotate", 0)) + 1
        cross = cross_sign(new_cert, old_cert, old_key)
    except RotationError as e:
        raise errors.invalid(errors.rpc_text("INVALID_ARGUMENT", str(e))) from None
    propose("start_root_rotation", now=now_rfc3339(), force_rotate=force, spec=spec,
            rotation={"cert": new_cert.decode(), "key": new_key.decode(), "cross_signed": cross.decode()})
    log.info("root CA rotation started to %s", root_digest(new_cert))


def reconcile(read: ReadState, propose: Propose) -> bool:
    """One step of a rotation in progress; True while one is. Cheap when there is none."""
    def progress(state: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        cluster = state["cluster"]
        if not cluster or not cluster.get("root_rotation"):
            return None, []
        return dict(cluster["root_rotation"]), [dict(n) for n in state["nodes"].values()]
    current, nodes = read(progress)
    if current is None:
        return False
    desired_spki = spki_b64(current["cert"].encode())
    # Only nodes that are up are waited for: a Down node (or one that never connected) would
    # hold the rotation forever; it rejoins with the new token instead.
    pending = [n for n in nodes if n.get("state") == "ready" and not converged(n, desired_spki)]
    if not pending:
        new_root = current["cert"].encode()
        try:
            propose("finish_root_rotation", cert=current["cert"], now=now_rfc3339(),
                    join_tokens={"worker": tokens.generate_join_token(new_root),
                                 "manager": tokens.generate_join_token(new_root)})
            log.info("root CA rotation finished: the trust root is now %s", root_digest(new_root))
        except SwarmError as e:
            log.warning("could not finish the root rotation: %s", e.message)
            return True
        return False
    in_flight = sum(1 for n in pending if n.get("cert_rotate"))
    batch = [n["id"] for n in pending if not n.get("cert_rotate")][:max(0, BATCH - in_flight)]
    if batch:
        propose("mark_cert_rotation", ids=batch)
    return True
