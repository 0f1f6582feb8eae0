"""Root CA rotation (swarm-behaviour.md §2.4): cross-signing, checks of an operator's CA, and
which CA issued a node's certificate.

While a rotation runs, the trust root stays the old one; new certificates are signed with the new
key and sent with the new root cross-signed by the old key, so a node that still trusts only the
old root accepts them. Once every node has such a certificate the new root becomes the trust root.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from swarmd.ca import pki, tokens

MIN_CA_VALIDITY = timedelta(days=365)


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
