"""Patches that make pysyncobj's own persistence safe to run (pysyncobj-notes.md §3–4).

* Restricted unpickling: pysyncobj pickles its log entries and journal meta. Only the few types
  it really writes may be loaded back, so a tampered journal cannot run code.
* Applying never raises: pysyncobj retries a committed entry whose apply raised on every tick,
  forever, on every member. An entry no member can apply (a forwarded write of a shape our
  ``apply`` never makes) is skipped everywhere alike, with a warning and a failed result.
* Durability: the journal is written through an mmap and never synced. ``DurableJournal`` syncs
  every appended entry before pysyncobj can acknowledge it, stores the meta file with fsync, and
  reserves disk blocks with ``posix_fallocate`` so a full disk is an ``OSError``, not SIGBUS.

Nothing outside ``swarmd.store`` imports pysyncobj; ``install()`` is called once by the wrapper.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import pysyncobj.journal as ps_journal
import pysyncobj.pickle as ps_pickle
import pysyncobj.syncobj as ps_syncobj

from swarmd.fsutil import atomic_write

log = logging.getLogger(__name__)

_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("_codecs", "encode"),          # protocol 2 pickles of bytes
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("pysyncobj.node", "Node"),
    ("pysyncobj.node", "TCPNode"),
})


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
    """Replaces pysyncobj's MetaStorer: same content, atomic write with fsync."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def getMeta(self) -> dict[str, Any]:  # noqa: N802 - pysyncobj's interface
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        meta = safe_loads(data)
        if not isinstance(meta, dict):
            raise ValueError(f"corrupt raft meta file {self._path}")
        return meta

    def storeMeta(self, meta: dict[str, Any]) -> None:  # noqa: N802
        atomic_write(self._path, ps_pickle.dumps(meta), 0o600)

    def getPath(self) -> str:  # noqa: N802
        return str(self._path)


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

    def sync(self) -> None:
        # On Linux a shared file mapping dirties the page cache itself, so fdatasync on the file
        # writes the mapped changes (msync(MS_SYNC) is the same operation, but holds the GIL).
        os.fdatasync(self._ResizableFile__f.fileno())


class DurableJournal(ps_journal.FileJournal):  # type: ignore[misc]
    """FileJournal whose entries are on disk before ``add`` returns."""

    def __init__(self, journalFile: str) -> None:  # noqa: N803
        self._bulk = False
        # A leader may append before its own fsync (it ships the entry to followers meanwhile)
        # as long as the fsync happens before it counts itself towards a commit: RaftStore's
        # tick loop calls sync_if_dirty() before every tick, where commits are computed.
        self.defer_sync = False
        self._dirty = False
        super().__init__(journalFile)
        storer = _DurableMetaStorer(journalFile + ".meta")
        self._FileJournal__metaStorer = storer
        # pysyncobj reads the meta swallowing every error (a silent double-vote risk): read it
        # again so a corrupt file is a clear start-up error instead.
        self._FileJournal__meta = storer.getMeta()

    def _file(self) -> _AllocatedFile:
        return self._FileJournal__journalFile  # type: ignore[no-any-return]

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        if self._bulk or self.defer_sync:
            self._dirty = True
        else:
            self._file().sync()

    def sync_if_dirty(self) -> None:
        if self._dirty:
            self._dirty = False
            self._file().sync()

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802, N803
        super().deleteEntriesFrom(entryFrom)
        self._dirty = False
        self._file().sync()

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802, N803
        self._bulk = True
        try:
            super().deleteEntriesTo(entryTo)
        finally:
            self._bulk = False
        self._dirty = False
        self._file().sync()

    def flush(self) -> None:
        self._file().sync()


def _create_journal(journalFile: str | None = None) -> Any:  # noqa: N803
    if journalFile is None:
        return ps_journal.MemoryJournal()
    return DurableJournal(journalFile)


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
        ps_journal.loads = safe_loads
        ps_journal.ResizableFile = _AllocatedFile
        ps_syncobj.createJournal = _create_journal
        ps_syncobj.SyncObj._SyncObj__doApplyCommand = _never_raising(ps_syncobj.SyncObj._SyncObj__doApplyCommand)
        _installed = True
