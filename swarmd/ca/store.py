"""The node's certificate directory (``<state>/certificates``), laid out like Docker's.

Each file is replaced atomically so a crash never leaves a torn certificate or key; the key
is private (0600), certificates are public (0644) as in Docker, and the directory is private
(0700) per the project's state rules (Docker itself uses 0755 here).

``load`` checks what it reads: a damaged certificate or key file is one ``StateFileError``
line naming the file, not a parser's message about some unnamed input.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from swarmd.ca import keyfile
from swarmd.errors import StateFileError
from swarmd.fsutil import atomic_write, ensure_dir, remove_tree

ROOT_CA_FILE = "swarm-root-ca.crt"
NODE_CERT_FILE = "swarm-node.crt"
NODE_KEY_FILE = "swarm-node.key"
DIR_MODE = 0o700
CERT_MODE = 0o644
KEY_MODE = 0o600


class CertificateStore:
    """Reads and writes the root CA, node certificate and node key of one node."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def root_path(self) -> Path:
        return self.path / ROOT_CA_FILE

    @property
    def cert_path(self) -> Path:
        return self.path / NODE_CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.path / NODE_KEY_FILE

    def save_root(self, root_pem: bytes) -> None:
        """Pin the root CA alone: a joiner stores it (TOFU, digest-checked) before it has
        a node certificate."""
        ensure_dir(self.path, DIR_MODE)
        atomic_write(self.root_path, root_pem, CERT_MODE)

    def load_root(self) -> bytes:
        return self.root_path.read_bytes()

    def save(self, root_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        """Write all three files, each atomically (key first, then certificate, then root)."""
        ensure_dir(self.path, DIR_MODE)
        atomic_write(self.key_path, key_pem, KEY_MODE)
        atomic_write(self.cert_path, cert_pem, CERT_MODE)
        atomic_write(self.root_path, root_pem, CERT_MODE)

    def load(self) -> tuple[bytes, bytes, bytes]:
        """Return (root PEM, node cert PEM, node key file); FileNotFoundError if any is missing,
        ``StateFileError`` if any is damaged (a sealed key is checked when it is unsealed)."""
        root, cert, key = self.load_root(), self.cert_path.read_bytes(), self.key_path.read_bytes()
        for path, pem in ((self.root_path, root), (self.cert_path, cert)):
            _check_certificates(path, pem)
        try:
            keyfile.decode(key, None)
        except keyfile.LockedError:
            pass
        except keyfile.KeyFileError as e:
            raise StateFileError(f"{self.key_path}: {e}") from None
        return root, cert, key

    def exists(self) -> bool:
        """True only when a complete identity (all three files) is present."""
        return all(p.is_file() for p in (self.root_path, self.cert_path, self.key_path))

    def wipe(self) -> None:
        """Forget this node's identity (swarm leave, failed init)."""
        remove_tree(self.path)


def _check_certificates(path: Path, pem: bytes) -> None:
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise StateFileError(f"{path} is damaged: not a PEM certificate") from None
