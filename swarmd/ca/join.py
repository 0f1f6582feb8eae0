"""Token-bound TLS for joining (DESIGN §4).

Both sides derive the same P-256 key from a join token's secret. That key signs a "join CA": the
manager serves, for each live token, a server certificate under the SNI name of that CA and trusts
it as a client anchor; the joiner presents a throw-away client certificate signed by it and trusts
only it. A handshake therefore succeeds only when both sides know the secret, and the secret
itself never crosses the wire. A rotated token's CA disappears from the manager's configuration,
so it stops working at the next handshake.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from swarmd.ca import pki

HKDF_INFO = b"swarmd join-ca v1"
JOIN_CA_PREFIX = "swarm-join-"
SNI_SUFFIX = ".join.swarm"
# The join CA's validity is fixed so both sides build the same anchor independently.
_CA_NOT_BEFORE = datetime(2000, 1, 1, tzinfo=timezone.utc)
_CA_NOT_AFTER = datetime(2100, 1, 1, tzinfo=timezone.utc)
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def derive_key(secret: str) -> ec.EllipticCurvePrivateKey:
    """HKDF-SHA256 over the secret, reduced into [1, n-1]."""
    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=HKDF_INFO).derive(secret.encode())
    d = int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(d, ec.SECP256R1())


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class JoinCA:
    """The CA one token defines: its key, certificate, and names."""

    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    short: str

    @property
    def name(self) -> str:
        return JOIN_CA_PREFIX + self.short

    @property
    def sni(self) -> str:
        return self.short + SNI_SUFFIX

    def _issue(self, subject: str, key: ec.EllipticCurvePublicKey, usage: x509.ObjectIdentifier,
               dns: str | None, lifetime: timedelta) -> bytes:
        now = datetime.now(timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)]))
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if dns:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def server_credentials(self) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) a manager serves under this CA's SNI name."""
        key = pki.generate_key()
        cert = self._issue("swarm-join-server", key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH,
                           self.sni, timedelta(days=3650))
        return pki.key_to_pem(key), cert

    def client_credentials(self) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) a joiner presents; thrown away after the join."""
        key = pki.generate_key()
        cert = self._issue("swarm-joiner", key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH, None,
                           timedelta(hours=2))
        return pki.key_to_pem(key), cert

    def issued(self, cert: x509.Certificate) -> bool:
        """True if ``cert`` was signed directly by this CA's key."""
        try:
            cert.verify_directly_issued_by(self._cert())
            return True
        except (ValueError, TypeError, Exception):  # noqa: BLE001 - any failure means "not ours"
            return False

    def _cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def join_ca(secret: str) -> JoinCA:
    key = derive_key(secret)
    public = key.public_key()
    digest = hashlib.sha256(_spki(public)).digest()
    short = digest[:8].hex()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, JOIN_CA_PREFIX + short)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(int.from_bytes(digest[8:24], "big") >> 1 or 1)
        .not_valid_before(_CA_NOT_BEFORE)
        .not_valid_after(_CA_NOT_AFTER)
        # pathlen 0: a token holder can sign leaves, never an intermediate that could pose as
        # another issuer.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return JoinCA(key=key, cert_pem=cert.public_bytes(serialization.Encoding.PEM), short=short)
