"""Unit tests for swarmd.ca: IDs, join tokens, root/node certificates, certificate store.

Certificates are checked field by field against what real Docker produced
(/work/shared/reference/docker/samples), since other tools inspect them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from swarmd.ca import ids, pki, tokens
from swarmd.ca.store import CertificateStore
from swarmd.ca.tokens import InvalidJoinToken

SAMPLES = Path("/work/shared/reference/docker/samples")
NOW = datetime(2026, 11, 27, 4, 41, 45, tzinfo=timezone.utc)  # the real init time of the samples
NODE_ID = "wdnejenple5szx3qdd2xoomzg"
CLUSTER_ID = "9u2uc5fpynxo0si8871zsnlpb"
NINETY_DAYS = timedelta(hours=2160)
ID_RE = re.compile(r"[0-9a-z]{25}")
TOKEN_RE = re.compile(r"SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}")

needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="Docker samples not available")


def _sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


@pytest.fixture(scope="module")
def root() -> tuple[bytes, bytes]:
    return pki.create_root_ca(NOW)


def _issue(
    root: tuple[bytes, bytes],
    role: str = pki.MANAGER_ROLE,
    csr: bytes | None = None,
    expiry: timedelta = NINETY_DAYS,
    now: datetime = NOW,
) -> bytes:
    if csr is None:
        csr = pki.make_csr(pki.generate_key())
    return pki.sign_node_certificate(root[0], root[1], csr, NODE_ID, CLUSTER_ID, role, expiry, now)


# --------------------------------------------------------------------------- IDs


def test_b36() -> None:
    assert ids.b36(0) == "0"
    assert ids.b36(35) == "z"
    assert ids.b36(36) == "10"
    assert ids.b36(36**5 - 1) == "zzzzz"
    with pytest.raises(ValueError):
        ids.b36(-1)


def test_new_id_format_and_uniqueness() -> None:
    made = {ids.new_id() for _ in range(200)}
    assert len(made) == 200
    assert all(ID_RE.fullmatch(i) for i in made)


@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_new_id_extremes_are_25_chars(monkeypatch: pytest.MonkeyPatch, fill: int) -> None:
    monkeypatch.setattr(secrets, "token_bytes", lambda n: bytes([fill]) * n)
    value = ids.new_id()
    assert ID_RE.fullmatch(value)
    top = (1 << 135) if fill == 0 else (1 << 136) - 1
    assert value == ids.b36(top)[1:26]
    assert len(ids.b36(top)) == 27


# --------------------------------------------------------------------------- tokens


def test_invalid_join_token_message() -> None:
    assert str(InvalidJoinToken()) == "invalid join token"
    assert isinstance(InvalidJoinToken(), ValueError)


def test_generate_join_token_format(root: tuple[bytes, bytes]) -> None:
    worker = tokens.generate_join_token(root[0])
    manager = tokens.generate_join_token(root[0])
    for tok in (worker, manager):
        assert len(tok) == 85
        assert TOKEN_RE.fullmatch(tok)
    assert worker.split("-")[2] == manager.split("-")[2]
    assert worker.split("-")[3] != manager.split("-")[3]
    digest = int(hashlib.sha256(root[0]).hexdigest(), 16)
    assert worker.split("-")[2] == ids.b36(digest).rjust(50, "0")
    parsed = tokens.parse_join_token(worker)
    assert parsed == tokens.JoinToken(1, tokens.root_digest_hex(root[0]), worker[-25:], False)
    assert tokens.token_secret(worker) == worker[-25:]


def test_generate_join_token_pads_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "token_bytes", lambda n: b"\x00" * (n - 1) + b"\x01")
    tok = tokens.generate_join_token(b"x")
    assert tok.endswith("-" + "0" * 24 + "1")


def test_generate_fips_token(root: tuple[bytes, bytes]) -> None:
    tok = tokens.generate_join_token(root[0], fips=True)
    assert tok.startswith("SWMTKN-2-1-") and len(tok) == 87
    parsed = tokens.parse_join_token(tok)
    assert (parsed.version, parsed.fips) == (2, True)
    assert parsed.digest_hex == tokens.root_digest_hex(root[0])


@pytest.mark.parametrize(
    "token",
    [
        "invalidtoken",
        "SWMTKN-1-3wkodtpeoipd1u1hi0ykdcdwhw16dk73ulqqtn14b3indz68rf-4myj5xihyto11dg1cn55w8p6",
        "SWMTKN-2-1fhvpatk6ms36i3uc64tsv1ybyuxkb899zbjpq4ib64qwbibz4-1g3as27iwmko5yqh1byv868hx",
        "SWMTKN-0-1fhvpatk6ms36i3uc64tsv1ybyuxkb899zbjpq4ib64qwbibz4-1g3as27iwmko5yqh1byv868hx",
        "SWMTKN-3-1fhvpatk6ms36i3uc64tsv1ybyuxkb899zbjpq4ib64qwbibz4-1g3as27iwmko5yqh1byv868hx",
        "SWMTKN-2-2-1fhvpatk6ms36i3uc64tsv1ybyuxkb899zbjpq4ib64qwbibz4-1g3as27iwmko5yqh1byv868hx",
        "SWMTKN-1-x-1fhvpatk6ms36i3uc64tsv1ybyuxkb899zbjpq4ib64qwbibz4-1g3as27iwmko5yqh1byv868hx",
        "swmtkn-1-1fhvpatk6ms36i3uc64tsv1ybyuxkb899zbjpq4ib64qwbibz4-1g3as27iwmko5yqh1byv868hx",
        "foo",
        "",
        "SWMTKN-1-abc",
        "SWMTKN-1-abc-def",
        # part1 of 49 / 51 chars, part2 of 24 / 26 chars
        "SWMTKN-1-16cvpcx2n0kbjrgcdod8hkiarnpfemikkshybe5zfnue7kbpj-btolb1ez8qpypwfjtkj7mwbo3",
        "SWMTKN-1-16cvpcx2n0kbjrgcdod8hkiarnpfemikkshybe5zfnue7kbpjm0-btolb1ez8qpypwfjtkj7mwbo3",
        "SWMTKN-1-16cvpcx2n0kbjrgcdod8hkiarnpfemikkshybe5zfnue7kbpjm-btolb1ez8qpypwfjtkj7mwbo",
        "SWMTKN-1-16cvpcx2n0kbjrgcdod8hkiarnpfemikkshybe5zfnue7kbpjm-btolb1ez8qpypwfjtkj7mwbo30",
    ],
)
def test_parse_join_token_rejects(token: str) -> None:
    with pytest.raises(InvalidJoinToken) as info:
        tokens.parse_join_token(token)
    assert str(info.value) == "invalid join token"


def test_parse_join_token_digest_out_of_range() -> None:
    # 36^50 > 2^256: such a digest part is rejected by go-digest with its own message.
    with pytest.raises(InvalidJoinToken) as info:
        tokens.parse_join_token("SWMTKN-1-" + "z" * 50 + "-" + "a" * 25)
    assert str(info.value) == "invalid checksum digest length"
    max_ok = ids.b36(2**256 - 1)
    assert len(max_ok) == 50
    assert tokens.parse_join_token(f"SWMTKN-1-{max_ok}-{'a' * 25}").digest_hex == "f" * 64
    with pytest.raises(InvalidJoinToken):
        tokens.parse_join_token(f"SWMTKN-1-{ids.b36(2**256)}-{'a' * 25}")
    # Go's big.Int accepts a leading "+" ("-" can't occur: it splits the token)
    parsed = tokens.parse_join_token("SWMTKN-1-+" + "1" * 49 + "-" + "a" * 25)
    assert int(parsed.digest_hex, 16) == int("1" * 49, 36)


def test_parse_join_token_go_bigint_quirks() -> None:
    # Go's SetString result is used even when it fails: the value scanned before the first
    # bad character (so the join later fails on the fingerprint, as with Docker).
    parsed = tokens.parse_join_token("SWMTKN-1-a!" + "0" * 48 + "-" + "a" * 25)
    assert parsed.digest_hex == "0" * 63 + "a"
    parsed = tokens.parse_join_token("SWMTKN-1-1_" + "0" * 48 + "-" + "a" * 25)
    assert parsed.digest_hex == "0" * 63 + "1"
    assert tokens.parse_join_token("SWMTKN-1-" + "0" * 50 + "-" + "a" * 25).digest_hex == "0" * 64


def test_parse_join_token_valid_vectors() -> None:
    # From swarmkit's config_test.go: parse fine (only the fingerprint check fails).
    for tok, version in (
        ("SWMTKN-1-1kxftv4ofnc6mt30lmgipg6ngf9luhwqopfk1tz6bdmnkubg0e-4myj5xihyto11dg1cn55w8p61", 1),
        ("SWMTKN-2-0-1kxftv4ofnc6mt30lmgipg6ngf9luhwqopfk1tz6bdmnkubg0e-4myj5xihyto11dg1cn55w8p61", 2),
    ):
        parsed = tokens.parse_join_token(tok)
        assert (parsed.version, parsed.fips, parsed.secret) == (version, False, "4myj5xihyto11dg1cn55w8p61")
        assert len(parsed.digest_hex) == 64
    # swarm-behaviour.md Appendix A
    parsed = tokens.parse_join_token(
        "SWMTKN-1-63qm1y8gcas04vl1h1f584aoimndhtvz12meqn4zqw8a75htw4-6f85k93sfh73vw07f0n9wdi8h"
    )
    assert parsed.version == 1
    assert parsed.digest_hex.startswith("f4e66453") and parsed.digest_hex.endswith("f294")


def test_parse_join_token_secret_chars_not_validated() -> None:
    parsed = tokens.parse_join_token("SWMTKN-1-" + "1" * 50 + "-" + "!" * 25)
    assert parsed.secret == "!" * 25


@needs_samples
def test_real_tokens_pin_real_root() -> None:
    root_pem = _sample("root-ca.crt")
    expected = hashlib.sha256(root_pem).hexdigest()
    assert tokens.root_digest_hex(root_pem) == expected
    assert expected.startswith("2f3537") and expected.endswith("c612")
    der = _cert(root_pem).public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() != expected  # the digest is over the PEM text
    found = (SAMPLES / "tokens.txt").read_text().split()
    assert len(found) == 2
    for tok in found:
        assert TOKEN_RE.fullmatch(tok)
        parsed = tokens.parse_join_token(tok)
        assert parsed == tokens.JoinToken(1, expected, tok[-25:], False)
        # an uppercased token still parses to the same digest (its secret no longer matches)
        upper = tokens.parse_join_token(tok.upper())
        assert upper.digest_hex == expected
        assert upper.secret != parsed.secret


def test_token_digest_matches_root_file_on_disk(tmp_path: Path, root: tuple[bytes, bytes]) -> None:
    store = CertificateStore(tmp_path / "certificates")
    key = pki.generate_key()
    store.save(root[0], _issue(root, csr=pki.make_csr(key)), pki.key_to_pem(key))
    on_disk = (tmp_path / "certificates" / "swarm-root-ca.crt").read_bytes()
    tok = tokens.generate_join_token(root[0])
    assert tokens.parse_join_token(tok).digest_hex == hashlib.sha256(on_disk).hexdigest()


# --------------------------------------------------------------------------- root CA


def test_round_minute_half_up() -> None:
    base = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)
    assert pki._round_minute(base + timedelta(seconds=29, microseconds=999999)) == base
    assert pki._round_minute(base + timedelta(seconds=30)) == base + timedelta(minutes=1)
    assert pki._round_minute(base + timedelta(seconds=59)) == base + timedelta(minutes=1)
    assert pki._round_minute(datetime(2026, 12, 31, 23, 59, 45, tzinfo=timezone.utc)) == datetime(
        2027, 1, 1, tzinfo=timezone.utc
    )


def _assert_positive_20_byte_serial(cert: x509.Certificate) -> None:
    assert 0 < cert.serial_number < 2**159


def test_root_ca_fields(root: tuple[bytes, bytes]) -> None:
    cert = _cert(root[0])
    assert cert.version == x509.Version.v3
    # subject/issuer: exactly CN=swarm-ca as a PrintableString
    assert cert.subject == cert.issuer
    attrs = list(cert.subject)
    assert [(a.oid, a.value) for a in attrs] == [(NameOID.COMMON_NAME, "swarm-ca")]
    assert attrs[0]._type == _ASN1Type.PrintableString
    assert cert.subject.public_bytes() == bytes.fromhex("30133111300f06035504031308") + b"swarm-ca"
    # key and signature
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP256R1)
    assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    cert.verify_directly_issued_by(cert)
    # validity: 04:41:45 rounds to 04:42, minus 5 min; 7300 days
    assert cert.not_valid_before_utc == datetime(2026, 11, 27, 4, 37, tzinfo=timezone.utc)
    assert cert.not_valid_after_utc == datetime(2046, 11, 22, 4, 37, tzinfo=timezone.utc)
    _assert_positive_20_byte_serial(cert)
    # extensions: KU, BC, SKI — in that order, nothing else
    exts = list(cert.extensions)
    assert [e.oid for e in exts] == [
        ExtensionOID.KEY_USAGE,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ]
    ku = exts[0]
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign
    assert not (ku.value.digital_signature or ku.value.key_encipherment)
    bc = exts[1]
    assert bc.critical and bc.value.ca is True and bc.value.path_length is None
    assert not exts[2].critical
    assert exts[2].value == x509.SubjectKeyIdentifier.from_public_key(pub)
    # key: unencrypted PKCS#8 matching the certificate
    assert root[1].startswith(b"-----BEGIN PRIVATE KEY-----\n")
    key = pki.load_key(root[1])
    assert key.public_key() == pub


def test_root_ca_rounds_down_and_defaults_to_now() -> None:
    cert = _cert(pki.create_root_ca(datetime(2026, 1, 1, 10, 0, 29, tzinfo=timezone.utc))[0])
    assert cert.not_valid_before_utc == datetime(2026, 1, 1, 9, 55, tzinfo=timezone.utc)
    before = datetime.now(timezone.utc)
    cert = _cert(pki.create_root_ca()[0])
    assert before - timedelta(minutes=6) <= cert.not_valid_before_utc <= before - timedelta(minutes=4)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=7300)


def test_root_ca_serial_top_bit_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([b"\x00" * 20, b"\xff" * 20])
    monkeypatch.setattr(secrets, "token_bytes", lambda n: next(draws))
    cert = _cert(pki.create_root_ca(NOW)[0])
    assert cert.serial_number == 2**159 - 1  # zero redrawn, top bit of 0xff.. cleared


@needs_samples
def test_root_ca_matches_docker_sample(root: tuple[bytes, bytes]) -> None:
    ours, theirs = _cert(root[0]), _cert(_sample("root-ca.crt"))
    assert ours.subject.public_bytes() == theirs.subject.public_bytes()
    assert ours.not_valid_before_utc == theirs.not_valid_before_utc
    assert ours.not_valid_after_utc == theirs.not_valid_after_utc
    assert [(e.oid, e.critical) for e in ours.extensions] == [
        (e.oid, e.critical) for e in theirs.extensions
    ]
    for a, b in zip(ours.extensions, theirs.extensions):
        if a.oid != ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            assert a.value.public_bytes() == b.value.public_bytes()


# --------------------------------------------------------------------------- node certificates


def test_key_and_csr_helpers() -> None:
    key = pki.generate_key()
    assert isinstance(key.curve, ec.SECP256R1)
    pem = pki.key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert pki.load_key(pem).private_numbers() == key.private_numbers()
    csr = x509.load_pem_x509_csr(pki.make_csr(key))
    assert csr.is_signature_valid
    assert len(csr.subject) == 0
    assert csr.public_key() == key.public_key()


@pytest.mark.parametrize("role", [pki.MANAGER_ROLE, pki.WORKER_ROLE])
def test_node_cert_fields(root: tuple[bytes, bytes], role: str) -> None:
    key = pki.generate_key()
    cert = _cert(_issue(root, role=role, csr=pki.make_csr(key)))
    ca = _cert(root[0])
    assert cert.version == x509.Version.v3
    # subject in Go's order, every value a PrintableString
    attrs = list(cert.subject)
    assert [(a.oid, a.value) for a in attrs] == [
        (NameOID.ORGANIZATION_NAME, CLUSTER_ID),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        (NameOID.COMMON_NAME, NODE_ID),
    ]
    assert all(a._type == _ASN1Type.PrintableString for a in attrs)
    assert cert.issuer.public_bytes() == ca.subject.public_bytes()
    assert cert.public_key() == key.public_key()
    assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    cert.verify_directly_issued_by(ca)
    # validity: rounded 04:42 - 1 h .. rounded 04:42 + 90 days
    assert cert.not_valid_before_utc == datetime(2026, 11, 27, 3, 42, tzinfo=timezone.utc)
    assert cert.not_valid_after_utc == datetime(2027, 2, 25, 4, 42, tzinfo=timezone.utc)
    _assert_positive_20_byte_serial(cert)
    exts = list(cert.extensions)
    assert [(e.oid, e.critical) for e in exts] == [
        (ExtensionOID.KEY_USAGE, True),
        (ExtensionOID.EXTENDED_KEY_USAGE, False),
        (ExtensionOID.BASIC_CONSTRAINTS, True),
        (ExtensionOID.SUBJECT_KEY_IDENTIFIER, False),
        (ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False),
        (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False),
    ]
    ku = exts[0].value
    assert ku.digital_signature and ku.key_encipherment
    assert not (ku.key_cert_sign or ku.crl_sign or ku.content_commitment or ku.key_agreement)
    assert list(exts[1].value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert exts[2].value.ca is False and exts[2].value.path_length is None
    assert exts[3].value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = exts[4].value
    assert aki.key_identifier == ca_ski.digest
    assert aki.authority_cert_issuer is None and aki.authority_cert_serial_number is None
    expected_sans = [role, NODE_ID] + (["swarm-ca"] if role == pki.MANAGER_ROLE else [])
    assert exts[5].value.get_values_for_type(x509.DNSName) == expected_sans
    assert len(list(exts[5].value)) == len(expected_sans)


@needs_samples
@pytest.mark.parametrize(
    ("sample", "node_id", "role"),
    [
        ("manager-node.crt", NODE_ID, pki.MANAGER_ROLE),
        ("worker-node.crt", "ohdrfaminmossh2yt8y3bok0s", pki.WORKER_ROLE),
    ],
)
def test_node_cert_matches_docker_sample(
    root: tuple[bytes, bytes], sample: str, node_id: str, role: str
) -> None:
    theirs_pem = _sample(sample)
    theirs = _cert(theirs_pem)
    ours_pem = pki.sign_node_certificate(
        root[0], root[1], pki.make_csr(pki.generate_key()), node_id, CLUSTER_ID, role, NINETY_DAYS, NOW
    )
    ours = _cert(ours_pem)
    assert ours.subject.public_bytes() == theirs.subject.public_bytes()
    assert ours.issuer.public_bytes() == theirs.issuer.public_bytes()
    assert [(e.oid, e.critical) for e in ours.extensions] == [
        (e.oid, e.critical) for e in theirs.extensions
    ]
    for a, b in zip(ours.extensions, theirs.extensions):
        if a.oid not in (ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER):
            assert a.value.public_bytes() == b.value.public_bytes()
    # the real sample proves AKI = CA SKI and SKI = SHA-1 of the key bits, as we compute them
    real_root = _cert(_sample("root-ca.crt"))
    real_ski = real_root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert real_ski == x509.SubjectKeyIdentifier.from_public_key(real_root.public_key())
    assert theirs.extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier
    ).value.key_identifier == real_ski.digest
    assert pki.verify_node_cert(theirs_pem, _sample("root-ca.crt"), NOW) == pki.Identity(
        node_id, role, CLUSTER_ID
    )
    if sample == "manager-node.crt":  # same issue time as the sample
        assert ours.not_valid_before_utc == theirs.not_valid_before_utc
        assert ours.not_valid_after_utc == theirs.not_valid_after_utc


def test_csr_subject_and_extensions_do_not_leak(root: tuple[bytes, bytes]) -> None:
    key = pki.generate_key()
    evil = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "evil-node"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-manager"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "other-cluster"),
                ]
            )
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("swarm-ca"), x509.DNSName("evil.example")]),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = _cert(_issue(root, role=pki.WORKER_ROLE, csr=evil))
    assert pki.identity_from_cert(cert.public_bytes(serialization.Encoding.PEM)) == pki.Identity(
        NODE_ID, pki.WORKER_ROLE, CLUSTER_ID
    )
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not ku.key_cert_sign and not ku.crl_sign
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [pki.WORKER_ROLE, NODE_ID]
    assert cert.public_key() == key.public_key()


def test_bad_csr_signature_rejected(root: tuple[bytes, bytes]) -> None:
    der = bytearray(
        x509.load_pem_x509_csr(pki.make_csr(pki.generate_key())).public_bytes(serialization.Encoding.DER)
    )
    der[-5] ^= 0x01  # corrupt the signature
    try:
        tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    except ValueError:
        pytest.skip("corrupted CSR no longer parses")
    with pytest.raises(ValueError, match="invalid CSR"):
        _issue(root, csr=tampered)
    with pytest.raises(ValueError, match="invalid CSR"):
        _issue(root, csr=b"not a csr")


@pytest.mark.parametrize("make_key", [lambda: rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate,
                                      lambda: ec.generate_private_key(ec.SECP521R1())])
def test_csr_with_a_key_nodes_never_use_is_refused(root: tuple[bytes, bytes], make_key: Any) -> None:
    key = make_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    with pytest.raises(ValueError, match="ECDSA P-256"):
        _issue(root, csr=csr.public_bytes(serialization.Encoding.PEM))


def test_sign_node_certificate_argument_checks(root: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError):
        _issue(root, role="swarm-ca")
    with pytest.raises(ValueError, match="minimum certificate expiry time is: 1h0m0s"):
        _issue(root, expiry=timedelta(minutes=59))
    cert = _cert(_issue(root, expiry=timedelta(hours=1)))
    assert cert.not_valid_after_utc == datetime(2026, 11, 27, 5, 42, tzinfo=timezone.utc)
    other_key = pki.key_to_pem(pki.generate_key())
    with pytest.raises(ValueError, match="does not match"):
        pki.sign_node_certificate(
            root[0], other_key, pki.make_csr(pki.generate_key()), NODE_ID, CLUSTER_ID,
            pki.WORKER_ROLE, NINETY_DAYS, NOW,
        )


def test_identity_from_cert(root: tuple[bytes, bytes]) -> None:
    pem = _issue(root, role=pki.WORKER_ROLE)
    der = _cert(pem).public_bytes(serialization.Encoding.DER)
    expected = pki.Identity(node_id=NODE_ID, role=pki.WORKER_ROLE, cluster_id=CLUSTER_ID)
    assert pki.identity_from_cert(pem) == expected
    assert pki.identity_from_cert(der) == expected
    with pytest.raises(ValueError, match="OU"):
        pki.identity_from_cert(root[0])


def test_verify_node_cert(root: tuple[bytes, bytes]) -> None:
    pem = _issue(root)
    expected = pki.Identity(NODE_ID, pki.MANAGER_ROLE, CLUSTER_ID)
    assert pki.verify_node_cert(pem, root[0], NOW) == expected
    with pytest.raises(ValueError, match="not yet valid"):
        pki.verify_node_cert(pem, root[0], NOW - timedelta(minutes=61))
    # the leaf is backdated 1 h but the root only 5 min: like Go, the whole chain must be valid
    with pytest.raises(ValueError, match="root CA certificate has expired or is not yet valid"):
        pki.verify_node_cert(pem, root[0], NOW - timedelta(minutes=59))
    old_root = pki.create_root_ca(NOW - timedelta(hours=2))
    old_pem = pki.sign_node_certificate(
        old_root[0], old_root[1], pki.make_csr(pki.generate_key()), NODE_ID, CLUSTER_ID,
        pki.MANAGER_ROLE, NINETY_DAYS, NOW,
    )
    not_before = datetime(2026, 11, 27, 3, 42, tzinfo=timezone.utc)
    assert pki.verify_node_cert(old_pem, old_root[0], not_before) == expected
    with pytest.raises(ValueError, match="x509: certificate has expired or is not yet valid"):
        pki.verify_node_cert(old_pem, old_root[0], not_before - timedelta(seconds=1))
    not_after = datetime(2027, 2, 25, 4, 42, tzinfo=timezone.utc)
    assert pki.verify_node_cert(old_pem, old_root[0], not_after) == expected
    with pytest.raises(ValueError, match="is after 2027-02-25T04:42:00Z"):
        pki.verify_node_cert(old_pem, old_root[0], not_after + timedelta(seconds=1))
    with pytest.raises(ValueError, match="expired"):
        pki.verify_node_cert(pem, root[0], NOW + NINETY_DAYS + timedelta(minutes=1))
    other_root = pki.create_root_ca(NOW)[0]
    with pytest.raises(ValueError, match="unknown authority"):
        pki.verify_node_cert(pem, other_root, NOW)
    # a bundle (as during root rotation) containing the signing root is accepted
    assert pki.verify_node_cert(pem, other_root + root[0], NOW) == expected
    assert pki.cert_not_after(pem) == datetime(2027, 2, 25, 4, 42, tzinfo=timezone.utc)


@needs_samples
def test_tls_info_matches_docker_inspect() -> None:
    import json

    inspect = json.loads((SAMPLES / "manager-node-inspect.json").read_text())
    node = inspect[0] if isinstance(inspect, list) else inspect
    info = node["Description"]["TLSInfo"]
    root_pem = _sample("root-ca.crt")
    assert info["TrustRoot"].encode() == root_pem
    assert pki.tls_info(root_pem) == (info["CertIssuerSubject"], info["CertIssuerPublicKey"])
    assert info["CertIssuerSubject"] == "MBMxETAPBgNVBAMTCHN3YXJtLWNh"


def test_tls_info_of_generated_root(root: tuple[bytes, bytes]) -> None:
    import base64

    cert = _cert(root[0])
    subject_b64, spki_b64 = pki.tls_info(root[0])
    assert subject_b64 == "MBMxETAPBgNVBAMTCHN3YXJtLWNh"
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64decode(spki_b64) == spki


# --------------------------------------------------------------------------- store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certificate_store(tmp_path: Path, root: tuple[bytes, bytes]) -> None:
    directory = tmp_path / "state" / "certificates"
    store = CertificateStore(directory)
    assert not store.exists()
    key = pki.generate_key()
    cert_pem = _issue(root, csr=pki.make_csr(key))
    key_pem = pki.key_to_pem(key)
    store.save(root[0], cert_pem, key_pem)
    assert store.exists()
    assert store.load() == (root[0], cert_pem, key_pem)
    assert sorted(p.name for p in directory.iterdir()) == [
        "swarm-node.crt",
        "swarm-node.key",
        "swarm-root-ca.crt",
    ]
    assert _mode(directory) == 0o700
    assert _mode(directory / "swarm-root-ca.crt") == 0o644
    assert _mode(directory / "swarm-node.crt") == 0o644
    assert _mode(directory / "swarm-node.key") == 0o600
    # overwrite keeps modes
    store.save(root[0], cert_pem, key_pem)
    assert _mode(directory / "swarm-node.key") == 0o600
    (directory / "swarm-node.crt").unlink()
    assert not store.exists()
    store.wipe()
    assert not directory.exists()
    assert not store.exists()
    with pytest.raises(FileNotFoundError):
        store.load()


def test_certificate_store_root_only(tmp_path: Path, root: tuple[bytes, bytes]) -> None:
    store = CertificateStore(tmp_path / "certificates")
    store.save_root(root[0])
    assert store.load_root() == root[0]
    assert _mode(store.root_path) == 0o644
    assert not store.exists()
