"""Encryption at rest of the Raft journal and snapshots (AES-256-GCM under the node's data key).

Every record is sealed on its own with a fresh random nonce; the authentication tag doubles as
the record's checksum, so a damaged or tampered journal is detected when it is read back.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
TAG_BYTES = 16


class DecryptError(Exception):
    """A sealed record does not open under this key: damaged, tampered, or another key."""


class DataCipher:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the raft data key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, data: bytes, aad: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise DecryptError("sealed record too short")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptError("sealed record does not authenticate") from None
