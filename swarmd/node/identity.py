"""The node's identity on disk and in memory: root CA, node certificate, node key and Raft data key.

One object owns ``<state>/certificates`` so that every write keeps the key file's protection
in step with the cluster's autolock setting: plain without autolock, sealed under the unlock
key (the KEK) with it. The clear key and data key exist only in memory.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

from swarmd.ca import keyfile, pki
from swarmd.ca.keyfile import LockedError, NodeKey, WrongUnlockKey
from swarmd.ca.store import KEY_MODE, CertificateStore
from swarmd.fsutil import atomic_write

__all__ = ["LockedError", "Material", "NodeIdentity", "WrongUnlockKey"]


@dataclass(frozen=True)
class Material:
    root_pem: bytes
    cert_pem: bytes
    key_pem: bytes


class NodeIdentity:
    def __init__(self, store: CertificateStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._root = b""
        self._cert = b""
        self._key: NodeKey | None = None
        self._kek: bytes | None = None

    # -- reading -------------------------------------------------------------------------------
    def is_locked_on_disk(self) -> bool:
        """True when the key file is sealed: an autolocked manager after a restart."""
        return keyfile.is_encrypted(self.store.key_path.read_bytes())

    def load(self, kek: bytes | None = None) -> Material:
        """Read the files; ``LockedError`` / ``WrongUnlockKey`` when the key is sealed."""
        with self._lock:
            root, cert, raw = self.store.load()
            node_key = keyfile.decode(raw, kek)
            self._root, self._cert, self._key = root, cert, node_key
            self._kek = kek if keyfile.is_encrypted(raw) else None
            return self.material()

    def material(self) -> Material:
        with self._lock:
            if self._key is None:
                raise RuntimeError("the node identity is not loaded")
            return Material(self._root, self._cert, self._key.key_pem)

    @property
    def kek(self) -> bytes | None:
        return self._kek

    def ensure_data_key(self) -> bytes:
        """The Raft data key; made and stored if this node has none yet (a promoted worker)."""
        with self._lock:
            if self._key is None:
                raise RuntimeError("the node identity is not loaded")
            if self._key.dek is None:
                self._key.dek = keyfile.new_data_key()
                self._write_key()
            return self._key.dek

    @property
    def pending_data_key(self) -> bytes | None:
        """The next data key while the Raft files move to it (a rotation a crash interrupted)."""
        with self._lock:
            return self._key.pending_dek if self._key is not None else None

    def begin_data_key_rotation(self, kek: bytes | None) -> bytes:
        """Record a new data key beside the current one (sealed under ``kek``), before any Raft
        file is sealed under it, so a crash at any point leaves keys that open every file."""
        with self._lock:
            if self._key is None:
                raise RuntimeError("the node identity is not loaded")
            if self._key.pending_dek is None:
                self._key.pending_dek = keyfile.new_data_key()
            if kek != self._kek:
                self._kek = kek
                self._key.kek_version += 1
            self._write_key()
            return self._key.pending_dek

    def finish_data_key_rotation(self) -> None:
        """Every Raft file is sealed under the pending key: it becomes the data key."""
        with self._lock:
            if self._key is None or self._key.pending_dek is None:
                return
            self._key.dek, self._key.pending_dek = self._key.pending_dek, None
            self._write_key()

    def not_after(self) -> dt.datetime:
        return pki.cert_not_after(self.material().cert_pem)

    def not_before(self) -> dt.datetime:
        return pki.cert_not_before(self.material().cert_pem)

    # -- writing -------------------------------------------------------------------------------
    def create(self, root: bytes, cert: bytes, key_pem: bytes, kek: bytes | None = None,
               with_data_key: bool = False) -> None:
        """A new identity (init, join, rejoin): key file first, then certificate, then root."""
        with self._lock:
            dek = keyfile.new_data_key() if with_data_key else None
            self._root, self._cert, self._key, self._kek = root, cert, NodeKey(key_pem, dek, 0), kek
            self.store.save(root, cert, keyfile.encode(self._key, kek))

    def replace_certificate(self, root: bytes, cert: bytes, key_pem: bytes) -> None:
        """A renewed certificate and its new key; the data key and protection stay as they are."""
        with self._lock:
            if self._key is None:
                raise RuntimeError("the node identity is not loaded")
            self._key = NodeKey(key_pem, self._key.dek, self._key.kek_version, self._key.pending_dek,
                                self._key.extra)
            self._root, self._cert = root, cert
            self.store.save(root, cert, keyfile.encode(self._key, self._kek))

    def replace_root(self, root: bytes) -> None:
        with self._lock:
            self._root = root
            self.store.save_root(root)

    def set_kek(self, kek: bytes | None) -> bool:
        """Seal the key file under ``kek`` (None: store it plain). True if anything changed."""
        with self._lock:
            if self._key is None or kek == self._kek:
                return False
            self._kek = kek
            self._key.kek_version += 1
            self._write_key()
            return True

    def drop_manager_secrets(self) -> bool:
        """A worker keeps no manager secret: the key file loses its data keys and is stored
        plain (workers are never locked). True if the file changed."""
        with self._lock:
            if self._key is None:
                raise RuntimeError("the node identity is not loaded")
            key = self._key
            if key.dek is None and key.pending_dek is None and self._kek is None:
                return False
            key.dek = key.pending_dek = None
            if self._kek is not None:
                self._kek = None
                key.kek_version += 1
            self._write_key()
            return True

    def certified_role(self) -> str:
        """"manager" or "worker": the role the current certificate names."""
        role = pki.identity_from_cert(self.material().cert_pem).role
        return "manager" if role == pki.MANAGER_ROLE else "worker"

    def _write_key(self) -> None:
        assert self._key is not None
        atomic_write(self.store.key_path, keyfile.encode(self._key, self._kek), KEY_MODE)

    def forget(self) -> None:
        with self._lock:
            self._root, self._cert, self._key, self._kek = b"", b"", None, None
