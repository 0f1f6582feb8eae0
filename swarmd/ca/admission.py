"""How fast nodes may join through one manager, and with which keys.

Every admission adds a node to the store that every manager keeps, so a join token must not be
a licence to add nodes without end. Each join token and each source address (IPv6 by /64) has a
token bucket: a fleet booting at once gets its burst, after that joins go at a steady rate. The
limits are per manager (each keeps its own buckets).

Each admitted node's key is recorded (its SHA-256) and the store refuses a second node with the
same key: a CSR admits one node, not one per request.

swarmkit has no admission rate limit; the refusal follows the wording of its session registration limit
("node %s exceeded rate limit count of registrations").
"""

from __future__ import annotations

import logging
import hashlib
import math
import os
import time

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from swarmd import errors
from swarmd.errors import SwarmError
from swarmd.logs import LogLimiter
from swarmd.ratelimit import Buckets, Limit, source_of

log = logging.getLogger(__name__)

PER_TOKEN = Limit(burst=2000, per_second=2.0)
PER_SOURCE = Limit(burst=1000, per_second=1.0)
MAX_SOURCES = 16384     # buckets kept; more sources than that only get fresh buckets sooner
MAX_TOKENS = 64         # live tokens are two; rotated ones linger until their bucket is full
# Operators (and tests) may change the limits: "token:BURST:RATE,source:BURST:RATE".
LIMITS_ENV = "SWARMD_JOIN_RATE_LIMITS"


def refusal(what: str, retry_in: float) -> SwarmError:
    seconds = max(1, math.ceil(retry_in)) if math.isfinite(retry_in) else 0
    after = f"; retry in {seconds}s" if seconds else ""
    return SwarmError(errors.rpc_text("ResourceExhausted", f"{what} exceeded rate limit count of admissions{after}"),
                      grpc.StatusCode.RESOURCE_EXHAUSTED)


def token_key(joiner_cert_pem: bytes) -> str:
    """Which token a joiner holds, without the secret: the name of the join CA it derived from it
    (a rotated token's CA has another name, so a new token starts with a full bucket)."""
    cert = x509.load_pem_x509_certificate(joiner_cert_pem)
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def public_key_sha256(cert_pem: bytes) -> str:
    """SHA-256 (hex) of the SubjectPublicKeyInfo of the first certificate of a PEM chain."""
    spki = x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def limits_from(text: str | None) -> tuple[Limit, Limit]:
    per_token, per_source = PER_TOKEN, PER_SOURCE
    if not text:
        return per_token, per_source
    try:
        for item in text.split(","):
            kind, burst, rate = item.strip().split(":")
            limit = Limit(burst=float(burst), per_second=float(rate))
            if limit.burst < 1 or limit.per_second < 0 or not all(map(math.isfinite, (limit.burst, limit.per_second))):
                raise ValueError(item)
            if kind == "token":
                per_token = limit
            elif kind == "source":
                per_source = limit
            else:
                raise ValueError(item)
    except ValueError:
        log.warning("ignoring %s=%r: expected token:BURST:RATE,source:BURST:RATE", LIMITS_ENV, text)
        return PER_TOKEN, PER_SOURCE
    return per_token, per_source


class AdmissionLimiter:
    def __init__(self, per_token: Limit | None = None, per_source: Limit | None = None) -> None:
        env_token, env_source = limits_from(os.environ.get(LIMITS_ENV))
        self._tokens = Buckets(per_token or env_token, MAX_TOKENS)
        self._sources = Buckets(per_source or env_source, MAX_SOURCES)
        self._warnings = LogLimiter(10, 60.0, log.warning)
        log.debug("admissions limited to %s per join token and %s per source",
                  self._tokens.limit.describe(), self._sources.limit.describe())

    def admit(self, token: str, source_ip: str, now: float | None = None) -> None:
        """Take one admission from both buckets, or refuse (and take from neither)."""
        now = time.monotonic() if now is None else now
        source = source_of(source_ip)
        if not self._sources.take(source, now):
            error = refusal(f"source {source}", self._sources.wait(source, now))
        elif not self._tokens.take(token, now):
            self._sources.give_back(source)
            error = refusal("join token", self._tokens.wait(token, now))
        else:
            return
        self._warnings.warn(f"refused a join from {source_ip}: {error.message}", now)
        raise error
