"""The node key file (``swarm-node.key``): the TLS private key plus, on managers, the Raft data key.

Laid out like Docker's: a PEM block whose headers carry ``kek-version`` and ``raft-dek``. Without
autolock the key is plain PKCS#8 and the data key is stored as is. With autolock the key is
``ENCRYPTED PRIVATE KEY`` (PKCS#8, PBES2) and the data key is sealed with AES-256-GCM under the
unlock key, so a copy of the state directory is useless without the unlock key.

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

UNLOCK_KEY_PREFIX = "SWMKEY-1-"
UNLOCK_KEY_BYTES = 32
DEK_BYTES = 32
PLAIN_LABEL = "PRIVATE KEY"
ENCRYPTED_LABEL = "ENCRYPTED PRIVATE KEY"
_DEK_AAD = b"swarmd raft-dek v1"
_PEM_RE = re.compile(r"-----BEGIN ([A-Z ]+)-----\n(.*?)-----END \1-----", re.DOTALL)


class KeyFileError(Exception):
    """The key file is unreadable or damaged."""


class LockedError(KeyFileError):
    """The key file is encrypted and no unlock key was given."""


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


def is_encrypted(data: bytes) -> bool:
    return f"-----BEGIN {ENCRYPTED_LABEL}-----".encode() in data


def _split(data: bytes) -> tuple[str, dict[str, str], bytes]:
    match = _PEM_RE.search(data.decode("ascii", "replace"))
    if match is None:
        raise KeyFileError("the node key file is not a PEM key")
    label, body = match.group(1), match.group(2)
    headers: dict[str, str] = {}
    lines = body.splitlines()
    while lines and ":" in lines[0]:
        name, _, value = lines.pop(0).partition(":")
        headers[name.strip()] = value.strip()
    while lines and not lines[0].strip():
        lines.pop(0)
    try:
        der = base64.b64decode("".join(lines), validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise KeyFileError("the node key file is damaged") from None
    return label, headers, der


def _pem(label: str, headers: dict[str, str], der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    lines = [f"-----BEGIN {label}-----"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if headers:
        lines.append("")
    lines += [b64[i:i + 64] for i in range(0, len(b64), 64)]
    lines.append(f"-----END {label}-----")
    return ("\n".join(lines) + "\n").encode()


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
        return _pem(PLAIN_LABEL, headers, der)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(kek))
    if node_key.dek is not None:
        headers["raft-dek"] = _seal_dek(node_key.dek, kek)
    if node_key.pending_dek is not None:
        headers["raft-dek-pending"] = _seal_dek(node_key.pending_dek, kek)
    return _pem(ENCRYPTED_LABEL, headers, der)


def decode(data: bytes, kek: bytes | None) -> NodeKey:
    """Read a key file; ``LockedError`` if it is encrypted and ``kek`` is None,
    ``WrongUnlockKey`` if ``kek`` does not open it."""
    label, headers, der = _split(data)
    dek_text = headers.pop("raft-dek", None)
    pending_text = headers.pop("raft-dek-pending", None)
    try:
        version = int(headers.pop("kek-version", "0") or 0)
    except ValueError:
        raise KeyFileError("the node key file has a bad kek-version header") from None
    if label == ENCRYPTED_LABEL:
        if kek is None:
            raise LockedError("the node key is encrypted")
        dek = _open_dek(dek_text, kek) if dek_text else None
        pending = _open_dek(pending_text, kek) if pending_text else None
        try:
            key = serialization.load_der_private_key(der, password=kek)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise WrongUnlockKey("invalid key provided") from None
    elif label == PLAIN_LABEL:
        try:
            dek = base64.b64decode(dek_text) if dek_text else None
            pending = base64.b64decode(pending_text) if pending_text else None
        except ValueError:
            raise KeyFileError("the node key file is damaged") from None
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyFileError("the node key file is damaged") from None
    else:
        raise KeyFileError(f"unexpected PEM block {label!r} in the node key file")
    plain = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    return NodeKey(key_pem=plain, dek=dek, kek_version=version, pending_dek=pending, extra=headers)
