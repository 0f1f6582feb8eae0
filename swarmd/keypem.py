"""The node key file's container (``swarm-node.key``): one PEM block whose headers carry
``kek-version`` and the Raft data keys, laid out like Docker's.

Standard library only. ``swarmd.ca.keyfile`` adds the cryptography (the PKCS#8 key, the data
keys sealed under autolock); swarmctl reads a node's key file through this module alone when it
talks to a manager with that node's certificate, so the CLI never imports the daemon's CA code.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

PLAIN_LABEL = "PRIVATE KEY"
ENCRYPTED_LABEL = "ENCRYPTED PRIVATE KEY"
DAMAGED = "the node key file is damaged"
_PEM_RE = re.compile(r"-----BEGIN ([A-Z ]+)-----\n(.*?)-----END \1-----", re.DOTALL)


class KeyFileError(Exception):
    """The key file is unreadable or damaged."""


class LockedError(KeyFileError):
    """The key file is encrypted and no unlock key was given."""


@dataclass
class Block:
    """A key file's PEM block, parsed but not decrypted: the data keys are the header texts
    as stored (base64, sealed under the unlock key when the label is ``ENCRYPTED_LABEL``)."""

    label: str
    der: bytes
    kek_version: int = 0
    dek: str | None = None
    pending_dek: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def is_encrypted(data: bytes) -> bool:
    return f"-----BEGIN {ENCRYPTED_LABEL}-----".encode() in data


def split(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """The first PEM block's label, headers and DER body."""
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
        raise KeyFileError(DAMAGED) from None
    return label, headers, der


def read(data: bytes) -> Block:
    """Parse a key file; ``KeyFileError`` for a damaged one or a block that is not a key."""
    label, headers, der = split(data)
    dek = headers.pop("raft-dek", None)
    pending = headers.pop("raft-dek-pending", None)
    try:
        version = int(headers.pop("kek-version", "0") or 0)
    except ValueError:
        raise KeyFileError("the node key file has a bad kek-version header") from None
    if label not in (PLAIN_LABEL, ENCRYPTED_LABEL):
        raise KeyFileError(f"unexpected PEM block {label!r} in the node key file")
    return Block(label, der, version, dek, pending, headers)


def plain_data_keys(block: Block) -> tuple[bytes | None, bytes | None]:
    """The data key and the pending one of a plain (not autolocked) block."""
    try:
        return (base64.b64decode(block.dek) if block.dek else None,
                base64.b64decode(block.pending_dek) if block.pending_dek else None)
    except ValueError:
        raise KeyFileError(DAMAGED) from None


def pem(label: str, headers: dict[str, str], der: bytes) -> bytes:
    """A PEM block with ``headers`` (none: the bare key TLS wants)."""
    b64 = base64.b64encode(der).decode()
    lines = [f"-----BEGIN {label}-----"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if headers:
        lines.append("")
    lines += [b64[i:i + 64] for i in range(0, len(b64), 64)]
    lines.append(f"-----END {label}-----")
    return ("\n".join(lines) + "\n").encode()
