"""Join tokens (swarmkit ``ca/config.go``): generation and parsing.

A token pins the cluster's root CA (its digest) and carries the secret that decides the
joiner's role, so the parser mirrors Docker's byte for byte: users paste tokens between
real Docker and this implementation and must see the same accept/reject decisions.

No code compares a token (or its secret) with another: a manager never receives one. The
joiner proves it knows the secret through the token-bound TLS handshake (``swarmd.ca.join``),
so there is no comparison whose timing could leak it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from swarmd.ca.ids import b36

TOKEN_PREFIX = "SWMTKN"
GENERATED_SECRET_ENTROPY_BYTES = 16
JOIN_TOKEN_BASE = 36
MAX_GENERATED_SECRET_LENGTH = 25  # ceil(log36(2^128 - 1))
BASE36_DIGEST_LEN = 50  # ceil(log36(2^256 - 1))

_HEX64 = re.compile(r"[a-f0-9]{64}")


class InvalidJoinToken(ValueError):
    """A token that fails ``ParseJoinToken``.

    The message is Docker's ``invalid join token``, except when the digest part decodes to
    something the go-digest library rejects (e.g. a value >= 2^256): Docker then returns
    that library's own text, and so do we.
    """

    def __init__(self, message: str = "invalid join token") -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class JoinToken:
    """A parsed token; ``digest_hex`` is the expected SHA-256 of the root CA PEM bundle."""

    version: int
    digest_hex: str
    secret: str
    fips: bool


def root_digest_hex(root_pem: bytes) -> str:
    """SHA-256 over the exact PEM bytes served by the CA (not the DER): that is what
    Docker's ``RootCA.Digest`` covers, so tokens interoperate."""
    return hashlib.sha256(root_pem).hexdigest()


def generate_join_token(root_pem: bytes, fips: bool = False) -> str:
    """Make a fresh token; v1 unless the cluster mandates FIPS (Docker keeps v1 for
    compatibility with older joiners)."""
    digest = int(root_digest_hex(root_pem), 16)
    secret = int.from_bytes(secrets.token_bytes(GENERATED_SECRET_ENTROPY_BYTES), "big")
    prefix = f"{TOKEN_PREFIX}-2-1-" if fips else f"{TOKEN_PREFIX}-1-"
    return (
        prefix
        + b36(digest).rjust(BASE36_DIGEST_LEN, "0")
        + "-"
        + b36(secret).rjust(MAX_GENERATED_SECRET_LENGTH, "0")
    )


def _go_big_int_base36(text: str) -> int:
    """Decode like Go's ``big.Int.SetString(text, 36)`` with the ok flag ignored, as
    swarmkit does.

    Go accepts an optional sign and both letter cases, stops at the first non-digit and
    keeps the value scanned so far (no digits -> 0). Python's ``int(text, 36)`` differs
    (it accepts underscores and whitespace and raises instead), hence this scanner.
    """
    neg = False
    i = 0
    if text[:1] in ("+", "-"):
        neg = text[0] == "-"
        i = 1
    value = 0
    for ch in text[i:]:
        if "0" <= ch <= "9":
            d = ord(ch) - ord("0")
        elif "a" <= ch <= "z":
            d = ord(ch) - ord("a") + 10
        elif "A" <= ch <= "Z":
            d = ord(ch) - ord("A") + 10
        else:
            break
        value = value * JOIN_TOKEN_BASE + d
    return -value if neg else value


def _digest_hex_from_part(part: str) -> str:
    """Turn the 50-char digest part into 64 hex chars, validating like go-digest."""
    value = _go_big_int_base36(part)
    text = format(value, "x")  # Go's Text(16): lowercase, "-" prefix when negative
    encoded = text.rjust(64, "0")  # fmt "%0[1]*s": left-pad with zeros to 64
    if len(encoded) != 64:
        raise InvalidJoinToken("invalid checksum digest length")
    if not _HEX64.fullmatch(encoded):
        raise InvalidJoinToken("invalid checksum digest format")
    return encoded


def parse_join_token(token: str) -> JoinToken:
    """Validate the token's shape and decode its digest without contacting a manager.

    Secret characters are deliberately not checked (Docker doesn't either): a wrong secret
    fails the token-bound TLS handshake instead.
    """
    parts = token.split("-")
    if len(parts) < 4 or parts[0] != TOKEN_PREFIX:
        raise InvalidJoinToken()
    if parts[1] == "1":
        if len(parts) != 4:
            raise InvalidJoinToken()
        version, fips = 1, False
    elif parts[1] == "2":
        if len(parts) != 5 or parts[2] not in ("0", "1"):
            raise InvalidJoinToken()
        version, fips = 2, parts[2] == "1"
    else:
        raise InvalidJoinToken()
    secret = parts[-1]
    digest_part = parts[-2]
    if len(digest_part) != BASE36_DIGEST_LEN or len(secret) != MAX_GENERATED_SECRET_LENGTH:
        raise InvalidJoinToken()
    return JoinToken(
        version=version, digest_hex=_digest_hex_from_part(digest_part), secret=secret, fips=fips
    )


def token_secret(token: str) -> str:
    """The secret part of a valid token (raises InvalidJoinToken otherwise)."""
    return parse_join_token(token).secret
