"""The node key file (``swarm-node.key``): the TLS private key plus, on managers, the Raft data key.

Laid out like Docker's: a PEM block whose headers carry ``kek-version`` and ``raft-dek``. Without
autolock the key is plain PKCS#8 and the data key is stored as is. With autolock the key is
``ENCRYPTED PRIVATE KEY`` (PKCS#8, PBES2) and the data key is sealed with AES-256-GCM under the
unlock key, so a copy of the state directory is useless without the unlock key. The PEM
container itself is ``swarmd.keypem`` (standard library only, so swarmctl can read it too).

The unlock key format is Docker's: ``SWMKEY-1-`` + unpadded standard base64 of 32 random bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from swarmd import keypem
from swarmd.keypem import ENCRYPTED_LABEL as ENCRYPTED_LABEL
from swarmd.keypem import PLAIN_LABEL as PLAIN_LABEL
from swarmd.keypem import KeyFileError as KeyFileError
from swarmd.keypem import LockedError as LockedError
from swarmd.keypem import is_encrypted as is_encrypted

UNLOCK_KEY_PREFIX = "SWMKEY-1-"
UNLOCK_KEY_BYTES = 32
DEK_BYTES = 32
_DEK_AAD = b"swarmd raft-dek v1"


class WrongUnlockKey(KeyFileError):
    """The unlock key given does not open this key file."""


def generate_unlock_key() -> str:
    return UNLOCK_KEY_PREFIX + base64.b64encode(os.urandom(UNLOCK_KEY_BYTES)).decode().rstrip("=")


def parse_unlock_key(text: str) -> bytes:
    """The key's 32 bytes; ``ValueError('invalid key string')`` as Docker says for anything else."""
    if not text.startswith(UNLOCK_KEY_PREFIX):
        raise ValueError("invalid key string")
    body = text[len(UNLOCK_KEY_PREFIX):]
    if not re.fullmatch(r"[A-Za-z0-9+/]{43}", body):
        raise ValueError("invalid key string")
    try:
        raw = base64.b64decode(body + "=", validate=True)
    except binascii.Error:
        raise ValueError("invalid key string") from None
    if len(raw) != UNLOCK_KEY_BYTES:
        raise ValueError("invalid key string")
    return raw


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=DEK_BYTES * 8)


@dataclass
class NodeKey:
    """A node key file's content, in clear (only ever held in memory)."""

    key_pem: bytes                       # plain PKCS#8 PEM without headers, as TLS wants it
    dek: bytes | None = None             # the Raft data key (managers)
    kek_version: int = 0
    pending_dek: bytes | None = None     # the next data key, while the Raft files move to it
    extra: dict[str, str] = field(default_factory=dict)


def _seal_dek(dek: bytes, kek: bytes) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(kek).encrypt(nonce, dek, _DEK_AAD)).decode()


def _open_dek(text: str, kek: bytes) -> bytes:
    try:
        raw = base64.b64decode(text)
        return AESGCM(kek).decrypt(raw[:12], raw[12:], _DEK_AAD)
    except (InvalidTag, ValueError):
        raise WrongUnlockKey("invalid key provided") from None


def encode(node_key: NodeKey, kek: bytes | None) -> bytes:
    """The file's bytes: encrypted under ``kek`` when given, plain otherwise."""
    key = serialization.load_pem_private_key(node_key.key_pem, password=None)
    headers = {"kek-version": str(node_key.kek_version), **node_key.extra}
    if kek is None:
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        if node_key.dek is not None:
            headers["raft-dek"] = base64.b64encode(node_key.dek).decode()
        if node_key.pending_dek is not None:
            headers["raft-dek-pending"] = base64.b64encode(node_key.pending_dek).decode()
        return keypem.pem(PLAIN_LABEL, headers, der)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(kek))
    if node_key.dek is not None:
        headers["raft-dek"] = _seal_dek(node_key.dek, kek)
    if node_key.pending_dek is not None:
        headers["raft-dek-pending"] = _seal_dek(node_key.pending_dek, kek)
    return keypem.pem(ENCRYPTED_LABEL, headers, der)


def decode(data: bytes, kek: bytes | None) -> NodeKey:
    """Read a key file; ``LockedError`` if it is encrypted and ``kek`` is None,
    ``WrongUnlockKey`` if ``kek`` does not open it."""
    block = keypem.read(data)
    if block.label == ENCRYPTED_LABEL:
        if kek is None:
            raise LockedError("the node key is encrypted")
        dek = _open_dek(block.dek, kek) if block.dek else None
        pending = _open_dek(block.pending_dek, kek) if block.pending_dek else None
        try:
            key = serialization.load_der_private_key(block.der, password=kek)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise WrongUnlockKey("invalid key provided") from None
    else:
        dek, pending = keypem.plain_data_keys(block)
        try:
            key = serialization.load_der_private_key(block.der, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyFileError(keypem.DAMAGED) from None
    plain = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    return NodeKey(key_pem=plain, dek=dek, kek_version=block.kek_version, pending_dek=pending,
                   extra=block.extra)
