"""Patches that make pysyncobj's own persistence safe to run (pysyncobj-notes.md §3–4).

* Restricted unpickling: pysyncobj pickles its log entries and journal meta. Only the few types
  it really writes may be loaded back, so a tampered journal cannot run code.
* Applying never raises: pysyncobj retries a committed entry whose apply raised on every tick,
  forever, on every member. An entry no member can apply (a forwarded write of a shape our
  ``apply`` never makes) is skipped everywhere alike, with a warning and a failed result.
* Durability and encryption at rest: pysyncobj's FileJournal writes through an mmap, never
  syncs, and keeps commands in clear. ``journal.EncryptedJournal`` replaces it (sealed, synced
  records); the meta file is stored with fsync; disk blocks are reserved with
  ``posix_fallocate`` so a full disk is an ``OSError``, not SIGBUS.
* Snapshots are sealed too, also while they travel to a new member (``SealedSerializer``).
* A term or vote that could not be saved is not kept in memory either (``durable_term``), so
  pysyncobj never votes or campaigns on a term a restart would forget.
* Every file read back at start is either loaded exactly or refused with one
  ``StateFileError`` line naming it.

Nothing outside ``swarmd.store`` imports pysyncobj; ``install()`` is called once by the wrapper.
"""

from __future__ import annotations

import _socket
import io
import json
import logging
import os
import pickle
import socket
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pysyncobj.journal as ps_journal
import pysyncobj.pickle as ps_pickle
import pysyncobj.serializer as ps_serializer
import pysyncobj.syncobj as ps_syncobj

from swarmd.errors import StateFileError
from swarmd.fsutil import atomic_write
from swarmd.store.crypto import DataCipher, DecryptError
from swarmd.store.journal import EncryptedJournal, JournalError, MetaNotDurable

log = logging.getLogger(__name__)

_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("_codecs", "encode"),          # protocol 2 pickles of bytes
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("pysyncobj.node", "Node"),
    ("pysyncobj.node", "TCPNode"),
})


META_MAGIC = b"SWMDMETA"


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def safe_loads(data: bytes | str) -> Any:
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    return RestrictedUnpickler(io.BytesIO(raw)).load()


def safe_load(file: Any) -> Any:
    return RestrictedUnpickler(file).load()


class _DurableMetaStorer:
    """Replaces pysyncobj's MetaStorer: same content, atomic write with fsync, and a checksum.

    File: ``META_MAGIC | u32 CRC-32 of the rest | JSON``. A meta file of pysyncobj's own
    format (a pickle) is still read, through the restricted unpickler, and replaced on the next
    save."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def getMeta(self) -> dict[str, Any]:  # noqa: N802 - pysyncobj's interface
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        meta = self._decode(data)
        if not _valid_meta(meta):
            raise JournalError(f"corrupt raft meta file {self._path}: unexpected content")
        return meta  # type: ignore[no-any-return]

    def _decode(self, data: bytes) -> Any:
        if data.startswith(META_MAGIC):
            body = data[len(META_MAGIC) + 4:]
            if data[len(META_MAGIC):len(META_MAGIC) + 4] != zlib.crc32(body).to_bytes(4, "little"):
                raise JournalError(f"corrupt raft meta file {self._path}: it does not match its checksum")
            try:
                return json.loads(body)
            except ValueError:
                raise JournalError(f"corrupt raft meta file {self._path}: not valid JSON") from None
        try:
            return safe_loads(data)
        except pickle.UnpicklingError as e:
            raise JournalError(f"corrupt raft meta file {self._path}: {e}") from None
        except Exception:  # noqa: BLE001 - a damaged pickle raises anything: one clear error
            raise JournalError(f"corrupt raft meta file {self._path}: truncated or damaged") from None

    def storeMeta(self, meta: dict[str, Any]) -> None:  # noqa: N802
        body = json.dumps(meta, sort_keys=True).encode()
        atomic_write(self._path, META_MAGIC + zlib.crc32(body).to_bytes(4, "little") + body, 0o600)

    def getPath(self) -> str:  # noqa: N802
        return str(self._path)


def _valid_meta(meta: Any) -> bool:
    """The keys and types EncryptedJournal stores (term, vote, commit index)."""
    if not isinstance(meta, dict):
        return False
    for key in ("raftCommitIndex", "currentTerm"):
        value = meta.get(key, 0)
        if type(value) is not int or value < 0:
            return False
    vote = meta.get("votedForNodeId")
    return vote is None or isinstance(vote, str)


class _AllocatedFile(ps_journal.ResizableFile):  # type: ignore[misc]
    """Reserve real blocks before the mmap grows, so a full disk fails the write cleanly."""

    def __init__(self, fileName: str, initialSize: int = 1024, resizeFactor: float = 2.0,  # noqa: N803
                 defaultContent: bytes | None = None) -> None:  # noqa: N803
        self._fd_path = fileName
        if not os.path.exists(fileName):
            # Private from the first byte (the journal holds the cluster's secrets).
            fd = os.open(fileName, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, defaultContent or b"")
                os.fsync(fd)
            finally:
                os.close(fd)
        super().__init__(fileName, initialSize, resizeFactor, defaultContent)
        self._reserve(os.path.getsize(fileName))

    def _reserve(self, size: int) -> None:
        fd = os.open(self._fd_path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)

    def write(self, offset: int, values: bytes) -> None:
        mm = self._ResizableFile__mm
        if offset + len(values) > len(mm):
            new_size = max(len(mm) * 2, offset + len(values))
            self._reserve(new_size)   # ENOSPC surfaces here as OSError
            mm.resize(new_size)
        super().write(offset, values)

    def renamed(self, path: str) -> None:
        """The open file was renamed to ``path`` (growing it reopens it by name)."""
        self._fd_path = path
        self._ResizableFile__fileName = path

    def sync(self) -> None:
        # On Linux a shared file mapping dirties the page cache itself, so fdatasync on the file
        # writes the mapped changes (msync(MS_SYNC) is the same operation, but holds the GIL).
        os.fdatasync(self._ResizableFile__f.fileno())


_ciphers: dict[str, tuple[DataCipher, ...]] = {}
_ciphers_lock = threading.Lock()


def register_cipher(raft_dir: Path, cipher: DataCipher, *others: DataCipher) -> None:
    """The data key for the journal and snapshots under ``raft_dir`` (pysyncobj builds them from
    a file name only). ``others`` may also open existing files: the other key of a data-key
    rotation that a crash interrupted."""
    with _ciphers_lock:
        _ciphers[str(raft_dir.resolve())] = (cipher, *others)


def ciphers_for(path: str) -> tuple[DataCipher, ...]:
    """The keys for the file at ``path``: the one to write with first."""
    with _ciphers_lock:
        ciphers = _ciphers.get(str(Path(path).resolve().parent))
    if not ciphers:
        raise RuntimeError(f"no data key registered for {path}")
    return ciphers


def cipher_for(path: str) -> DataCipher:
    return ciphers_for(path)[0]


SNAPSHOT_MAGIC = b"SWMDSNP1"


class SnapshotError(StateFileError):
    """The raft snapshot cannot be read back: damaged, truncated, or sealed under another key."""


def seal_snapshot(path: str, data: bytes) -> bytes:
    return SNAPSHOT_MAGIC + cipher_for(path).seal(data, SNAPSHOT_MAGIC)


def open_snapshot(path: str, blob: bytes) -> bytes:
    if not blob.startswith(SNAPSHOT_MAGIC):
        raise SnapshotError(f"{path} is not a swarmd raft snapshot")
    for cipher in ciphers_for(path):
        try:
            return cipher.open(blob[len(SNAPSHOT_MAGIC):], SNAPSHOT_MAGIC)
        except DecryptError:
            continue
    raise SnapshotError(f"raft snapshot {path} does not authenticate: damaged, or sealed under "
                        "another data key")


def reseal_snapshot(path: str) -> None:
    """Seal an existing snapshot under the first registered key (a data-key rotation)."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        return
    atomic_write(Path(path), seal_snapshot(path, open_snapshot(path, blob)), 0o600)


class SealedSerializer(ps_serializer.Serializer):  # type: ignore[misc]
    """Snapshot transfer between managers whose snapshots are sealed under different data keys.

    The sender opens its sealed file and streams the clear snapshot (over the managers' mutual
    TLS stream); the receiver keeps the chunks in memory and seals the whole snapshot under its
    own key before it touches the disk, so no clear copy is ever written."""

    def getTransmissionData(self, transmissionID: Any) -> Any:  # noqa: N802, N803 - pysyncobj's interface
        path = self._Serializer__fileName
        if path is None or self._Serializer__pid != 0:
            return super().getTransmissionData(transmissionID)
        transmissions = self._Serializer__transmissions
        transmission = transmissions.get(transmissionID)
        if transmission is None:
            try:
                with open(path, "rb") as f:
                    clear = open_snapshot(path, f.read())
            except (OSError, SnapshotError):
                ps_serializer.logger.exception("could not read the snapshot to send")
                return None
            transmissions[transmissionID] = transmission = {"transmitted": 0, "data": clear}
        first = transmission["transmitted"] == 0
        start = transmission["transmitted"]
        chunk = transmission["data"][start:start + self._Serializer__transmissionBatchSize]
        transmission["transmitted"] += len(chunk)
        last = not chunk
        if last:
            transmissions.pop(transmissionID, None)
        return chunk, first, last

    def setTransmissionData(self, data: Any) -> bool:  # noqa: N802
        path = self._Serializer__fileName
        if path is None or data is None:
            return bool(super().setTransmissionData(data))
        chunk, first, last = data
        if first:
            self._incoming: list[bytes] | None = []
        incoming = getattr(self, "_incoming", None)
        if incoming is None:
            return False
        incoming.append(bytes(chunk))
        if not last:
            return False
        self._incoming = None
        try:
            atomic_write(Path(path), seal_snapshot(path, b"".join(incoming)), 0o600)
        except OSError:
            ps_serializer.logger.exception("could not store the snapshot received")
            return False
        return True


def _create_journal(journalFile: str | None = None) -> Any:  # noqa: N803
    if journalFile is None:
        return ps_journal.MemoryJournal()
    return EncryptedJournal(journalFile, ciphers_for(journalFile), _AllocatedFile,
                            _DurableMetaStorer(journalFile + ".meta"))


def _never_raising(apply: Any) -> Any:
    def apply_command(self: Any, command: bytes) -> Any:
        try:
            return apply(self, command)
        except ps_syncobj.SyncObjExceptionWrongVer:
            raise  # pysyncobj's own, handled by its caller
        except Exception as e:  # noqa: BLE001 - see the module docstring
            log.warning("raft: skipping a log entry that cannot be applied: %s: %s", type(e).__name__, e)
            return {"ok": False, "code": "INVALID_ARGUMENT",
                    "message": f"the write cannot be applied: {type(e).__name__}"}
    return apply_command


def durable_term(set_term: Any) -> Any:
    """pysyncobj sets its term and vote in memory, then asks the journal to save them. When the
    save fails (``MetaNotDurable``), put the old ones back: the exception then stops the caller
    before it sends the vote, the vote request or the reply that would reflect them."""
    def set_current_term(self: Any, term: int, voted_for: Any) -> None:
        before = self._SyncObj__raftCurrentTerm, self._SyncObj__votedForNodeId
        try:
            set_term(self, term, voted_for)
        except MetaNotDurable:
            self._SyncObj__raftCurrentTerm, self._SyncObj__votedForNodeId = before
            raise
    return set_current_term


def paced_compaction(try_compaction: Any) -> Any:
    """pysyncobj tries a snapshot again on the very next tick after one failed to be written
    (a full disk), 20 times a second with a warning each time. ``RaftStore`` sets
    ``compaction_paused_until`` on its SyncObj after such a failure; until then, no new try."""
    def try_log_compaction(self: Any) -> None:
        if getattr(self, "compaction_paused_until", 0.0) > time.monotonic():
            return
        try_compaction(self)
    return try_log_compaction


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Apply the patches once per process, before the first SyncObj is built."""
    global _installed
    with _install_lock:
        if _installed:
            return
        ps_pickle.loads = safe_loads
        ps_pickle.load = safe_load
        # pysyncobj's win_inet_pton replaces socket.inet_ntop/inet_pton for the whole process
        # with a Windows-only version: put the real ones back.
        socket.inet_ntop, socket.inet_pton = _socket.inet_ntop, _socket.inet_pton
        ps_journal.loads = safe_loads
        ps_syncobj.createJournal = _create_journal
        ps_syncobj.Serializer = SealedSerializer
        ps_syncobj.SyncObj._SyncObj__doApplyCommand = _never_raising(ps_syncobj.SyncObj._SyncObj__doApplyCommand)
        ps_syncobj.SyncObj._SyncObj__setCurrentTerm = durable_term(ps_syncobj.SyncObj._SyncObj__setCurrentTerm)
        ps_syncobj.SyncObj._SyncObj__tryLogCompaction = paced_compaction(ps_syncobj.SyncObj._SyncObj__tryLogCompaction)
        _installed = True
