"""The files behind ``-H tcp://…``: the swarm's root CA, a manager's certificate and its node key.

A node's key file carries PEM headers (and is sealed under autolock); TLS wants the bare key. The
container is read with ``swarmd.keypem`` and the key checked with ``cryptography``, imported only
here, so commands on the local socket never load it.
"""

from __future__ import annotations

from pathlib import Path

from swarmctl.errors import CLIError
from swarmd import keypem


def read(path: Path | None, flag: str) -> bytes:
    if path is None:
        raise CLIError(f"-H tcp://… needs --tlscacert, --tlscert and --tlskey (missing {flag})")
    try:
        return path.read_bytes()
    except OSError as e:
        raise CLIError(f"could not read {flag} {path}: {e.strerror}") from None


def read_key(path: Path | None) -> bytes:
    """The bare PKCS#8 PEM of the key in a node key file (or in a plain key file)."""
    data = read(path, "--tlskey")
    try:
        return _bare_key(data)
    except keypem.LockedError:
        raise CLIError(f"the key in {path} is encrypted (autolock); use a key file without a passphrase") from None
    except keypem.KeyFileError as e:
        raise CLIError(f"could not read --tlskey {path}: {e}") from None


def _bare_key(data: bytes) -> bytes:
    """What ``swarmd.ca.keyfile.decode(data, None).key_pem`` gives, with the same failures."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    block = keypem.read(data)
    if block.label == keypem.ENCRYPTED_LABEL:
        raise keypem.LockedError("the node key is encrypted")
    keypem.plain_data_keys(block)  # a damaged header fails here as the daemon's reader does
    try:
        key = serialization.load_der_private_key(block.der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise keypem.KeyFileError(keypem.DAMAGED) from None
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
