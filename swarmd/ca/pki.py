"""Root CA and node certificates, field for field like swarmkit (cfssl-based) issues them.

Certificates are exchanged with tooling that inspects them (``openssl``, ``docker node
inspect``), so subject encoding, extension set/order/criticality and the validity
arithmetic follow what real Docker produces (see reference/docker/samples/).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_CN = "swarm-ca"
MANAGER_ROLE = "swarm-manager"
WORKER_ROLE = "swarm-worker"
CA_ROLE = "swarm-ca"
ROOT_CA_EXPIRATION = timedelta(days=7300)  # 630720000s, 20 years
ROOT_CA_BACKDATE = timedelta(minutes=5)  # cfssl initca default
CERT_BACKDATE = timedelta(hours=1)
DEFAULT_NODE_CERT_EXPIRATION = timedelta(hours=2160)  # 90 days
MIN_NODE_CERT_EXPIRATION = timedelta(hours=1)

_SERIAL_BYTES = 20


@dataclass(frozen=True)
class Identity:
    """Who a node certificate speaks for: authorisation is based on these three fields."""

    node_id: str
    role: str
    cluster_id: str


def _utc(now: datetime | None) -> datetime:
    """Normalise ``now``; naive datetimes are taken as UTC, the only zone certs know."""
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc)


def _round_minute(t: datetime) -> datetime:
    """Go's ``Time.Round(time.Minute)``: nearest minute, halves rounded up."""
    base = t.replace(second=0, microsecond=0)
    if t - base >= timedelta(seconds=30):
        base += timedelta(minutes=1)
    return base


def _serial() -> int:
    """20 random bytes with the top bit cleared (positive in DER); zero is redrawn since
    RFC 5280 forbids it."""
    while True:
        raw = bytearray(secrets.token_bytes(_SERIAL_BYTES))
        raw[0] &= 0x7F
        value = int.from_bytes(raw, "big")
        if value:
            return value


def _printable(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    """Go encodes DN strings as PrintableString when they fit; cryptography's default is
    UTF8String, which would change the DER (and ``CertIssuerSubject``)."""
    return x509.NameAttribute(oid, value, _type=_ASN1Type.PrintableString)


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key, the only algorithm swarmkit uses for CA and nodes."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (``BEGIN PRIVATE KEY``), the format of Docker's key files."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Load a PEM EC key (PEM headers such as ``kek-version`` are tolerated)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("private key is not an ECDSA key")
    return key


def create_root_ca(now: datetime | None = None) -> tuple[bytes, bytes]:
    """Create a self-signed root as cfssl ``initca`` does for swarmkit; returns
    (cert PEM, key PEM)."""
    key = generate_key()
    name = x509.Name([_printable(NameOID.COMMON_NAME, ROOT_CN)])
    not_before = _round_minute(_utc(now)) - ROOT_CA_BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_before + ROOT_CA_EXPIRATION)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key)


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM CSR with an empty subject: the CA decides every name, the node only proves
    possession of its key."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _load_cert(data: bytes) -> x509.Certificate:
    """First certificate of a PEM bundle (the leaf) or a DER certificate."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def sign_node_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    csr_pem: bytes,
    node_id: str,
    cluster_id: str,
    role: str,
    expiry: timedelta,
    now: datetime | None = None,
) -> bytes:
    """Issue a node's leaf certificate (PEM).

    Only the CSR's public key is used — a joiner must not be able to choose its own names,
    role or CA flag — and the signature is checked so the key is proven to be held.
    """
    if role not in (MANAGER_ROLE, WORKER_ROLE):
        raise ValueError(f"invalid node role: {role!r}")
    if expiry < MIN_NODE_CERT_EXPIRATION:
        raise ValueError("minimum certificate expiry time is: 1h0m0s")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise ValueError("invalid CSR") from exc
    if not valid:
        raise ValueError("invalid CSR")
    if not (isinstance(public_key, ec.EllipticCurvePublicKey)
            and isinstance(public_key.curve, (ec.SECP256R1, ec.SECP384R1))):
        raise ValueError("invalid CSR: the node key must be ECDSA P-256 (or P-384)")
    ca_cert = _load_cert(ca_cert_pem)
    ca_key = load_key(ca_key_pem)
    if _spki(ca_key.public_key()) != _spki(ca_cert.public_key()):
        raise ValueError("CA key does not match CA certificate")

    rounded = _round_minute(_utc(now))
    subject = x509.Name(
        [
            _printable(NameOID.ORGANIZATION_NAME, cluster_id),
            _printable(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            _printable(NameOID.COMMON_NAME, node_id),
        ]
    )
    dns_names = [role, node_id] + ([CA_ROLE] if role == MANAGER_ROLE else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(rounded - CERT_BACKDATE)
        .not_valid_after(rounded + expiry)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(ca_cert)),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _name_value(name: x509.Name, oid: x509.ObjectIdentifier, label: str) -> str:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        raise ValueError(f"certificate subject has no {label}")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8")


def identity_from_cert(cert_pem_or_der: bytes) -> Identity:
    """Read the node identity (CN, OU, O) from a leaf certificate, PEM or DER."""
    subject = _load_cert(cert_pem_or_der).subject
    return Identity(
        node_id=_name_value(subject, NameOID.COMMON_NAME, "CN (node ID)"),
        role=_name_value(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)"),
        cluster_id=_name_value(subject, NameOID.ORGANIZATION_NAME, "O (cluster ID)"),
    )


def _der_tlv(data: bytes, pos: int) -> tuple[int, int]:
    """Return (content start, element end) of the DER element at ``pos``."""
    length = data[pos + 1]
    header = 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
        header += n
    return pos + header, pos + header + length


def _raw_subject_and_spki(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """The subject and SubjectPublicKeyInfo exactly as encoded in the certificate (Go's
    ``RawSubject``/``RawSubjectPublicKeyInfo``), not a re-encoding."""
    tbs = cert.tbs_certificate_bytes
    pos, _ = _der_tlv(tbs, 0)  # into TBSCertificate
    if tbs[pos] == 0xA0:  # [0] version
        pos = _der_tlv(tbs, pos)[1]
    fields: list[bytes] = []
    for _ in range(5):  # serial, signature alg, issuer, validity, subject
        end = _der_tlv(tbs, pos)[1]
        fields.append(tbs[pos:end])
        pos = end
    spki = tbs[pos : _der_tlv(tbs, pos)[1]]
    return fields[4], spki


def tls_info(root_pem: bytes) -> tuple[str, str]:
    """(CertIssuerSubject, CertIssuerPublicKey) as ``docker node inspect`` shows them: std
    base64 of the root's raw DER subject and SubjectPublicKeyInfo."""
    subject, spki = _raw_subject_and_spki(_load_cert(root_pem))
    return base64.b64encode(subject).decode("ascii"), base64.b64encode(spki).decode("ascii")


def _fmt_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    """Go's x509 wording, so errors read like Docker's."""
    if now < cert.not_valid_before_utc:
        raise ValueError(
            f"x509: {what} has expired or is not yet valid: current time {_fmt_time(now)} "
            f"is before {_fmt_time(cert.not_valid_before_utc)}"
        )
    if now > cert.not_valid_after_utc:
        raise ValueError(
            f"x509: {what} has expired or is not yet valid: current time {_fmt_time(now)} "
            f"is after {_fmt_time(cert.not_valid_after_utc)}"
        )


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not bc.ca:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def verify_node_cert(cert_pem: bytes, root_pem: bytes, now: datetime | None = None) -> Identity:
    """Check that a node certificate (a leaf, possibly followed by the cross-signed intermediate
    of a root rotation) chains to (one of) the cluster root(s) and is currently valid, then
    return the identity it carries."""
    when = _utc(now)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
        roots = x509.load_pem_x509_certificates(root_pem)
    except ValueError as exc:
        raise ValueError(f"cannot parse certificate: {exc}") from exc
    cert, intermediates = chain[0], chain[1:]
    issuer = next((r for r in roots if _signed_by(cert, r)), None)
    if issuer is None:
        for mid in intermediates:
            root = next((r for r in roots if _signed_by(mid, r)), None)
            if root is not None and _signed_by(cert, mid):
                _check_validity(mid, when, "intermediate certificate")
                issuer = root
                break
    if issuer is None:
        raise ValueError("x509: certificate signed by unknown authority")
    _check_validity(cert, when, "certificate")
    _check_validity(issuer, when, "root CA certificate")
    return identity_from_cert(cert.public_bytes(serialization.Encoding.DER))


def cert_not_before(cert_pem: bytes) -> datetime:
    """Start of validity (UTC, aware) of the leaf; with cert_not_after, drives renewal."""
    return _load_cert(cert_pem).not_valid_before_utc


def cert_not_after(cert_pem: bytes) -> datetime:
    """Expiry (UTC, aware) of the leaf; drives renewal scheduling."""
    return _load_cert(cert_pem).not_valid_after_utc
