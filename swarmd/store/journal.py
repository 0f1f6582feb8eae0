"""The Raft journal on disk: encrypted, authenticated and durable (DESIGN §5).

Replaces pysyncobj's ``FileJournal`` (same interface) with our own record format:

    header (32 bytes): b"SWMDJRNL" | u32 format | u32 end-of-last-record offset
                       | u32 CRC-32 of the bytes before it | zero padding
    record:            u32 n | u64 idx | u64 term | nonce + AES-GCM(command, aad=idx|term) | u32 n

Each command is sealed with the node's data key, so no token, key or other secret of the store
is ever in clear under ``raft/``; the tag authenticates each record, so corruption anywhere in
the file is a clear start-up error. A record counts only once the header's end offset covers
it, so a torn append is simply not there after a crash; the header's checksum makes a damaged
end offset an error rather than a shorter journal. (Format 1 had no checksum; such a journal
is read and its header rewritten in format 2.)

Durability (``defer_sync``, set on every member): appended entries are fdatasync'ed together
before anything vouches for them. A leader may ship an entry before its own fsync as long as it
syncs before counting itself towards a commit (RaftStore's tick loop calls ``sync_if_dirty``
before every tick); a follower syncs before it sends an acknowledgement or a vote message (the
transport calls ``sync_if_dirty`` before those), so one fsync covers all the entries of an
append, however many.

Storage faults: the commit index is saved once a second and may wait; on a full or read-only
disk that save is retried every second with one warning a minute, until it works again. Term
and vote are different: Raft's safety needs them on disk before any message that reflects
them, so a failed save raises ``MetaNotDurable`` and changes nothing (see
``hardening.durable_term``, which also rolls pysyncobj's copy back): no vote, no campaign.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from swarmd.errors import StateFileError
from swarmd.fsutil import fsync_dir
from swarmd.logs import LogLimiter
from swarmd.store.crypto import DataCipher, DecryptError

log = logging.getLogger(__name__)

MAGIC = b"SWMDJRNL"
FORMAT = 2
_UNCHECKED_FORMAT = 1
HEADER_SIZE = 32
_END_AT = 12
_U32 = struct.Struct("<I")
_IDX_TERM = struct.Struct("<QQ")

# pysyncobj's own (plaintext) journal, read once to migrate it.
_LEGACY_NAME = b"PYSYNCOBJ"
_LEGACY_FIRST = 40
_LEGACY_END_AT = 36


# One warning a minute about a meta file that cannot be saved (it is retried every second).
META_WARNING_PERIOD = 60.0


class JournalError(StateFileError):
    """The journal cannot be read back: damaged, tampered with, or sealed under another key."""


class MetaNotDurable(Exception):
    """Term and vote could not be saved; nothing that reflects them may be sent. Reported (rate
    limited) where it happened, so callers drop it without logging it again."""


def _end_field(end: int) -> bytes:
    """The end offset and the checksum of the header up to it, written together."""
    packed = _U32.pack(end)
    return packed + _U32.pack(zlib.crc32(MAGIC + _U32.pack(FORMAT) + packed))


def _header(end: int) -> bytes:
    return (MAGIC + _U32.pack(FORMAT) + _end_field(end)).ljust(HEADER_SIZE, b"\0")


class EncryptedJournal:
    """pysyncobj's Journal interface over an encrypted record file."""

    def __init__(self, path: str, ciphers: Sequence[DataCipher], file_factory: Any, meta_storer: Any) -> None:
        """``ciphers``: the data key first; any others may have sealed an existing file (a
        data-key rotation that a crash interrupted)."""
        self._path = path
        self._ciphers = list(ciphers)
        self._cipher = self._ciphers[0]
        self._new_file = file_factory
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []       # start offset of each entry's record
        self.defer_sync = False
        self._dirty = False
        self._legacy_path = ""
        self._unchecked_header = False
        legacy = self._read_legacy()
        self._check_size(meta_storer.getPath())
        self._file = file_factory(path, defaultContent=_header(HEADER_SIZE))
        self._end = HEADER_SIZE
        if legacy is not None:
            self._rewrite(legacy)
        else:
            self._load()
        self._meta_storer = meta_storer
        self._meta: dict[str, Any] = meta_storer.getMeta()
        self._meta_saved = True
        self._meta_failing = False
        self._meta_warnings = LogLimiter(1, META_WARNING_PERIOD, lambda m: log.warning("%s", m))

    # -- reading back ------------------------------------------------------------------------
    def _read_legacy(self) -> list[tuple[bytes, int, int]] | None:
        """Entries of a journal written by pysyncobj's own FileJournal, or None."""
        # Set aside first, so a crash during the migration leaves it to be read again.
        legacy = self._path + ".legacy"
        try:
            with open(self._path, "rb") as f:
                if f.read(len(_LEGACY_NAME)) == _LEGACY_NAME:
                    os.replace(self._path, legacy)
        except FileNotFoundError:
            pass
        try:
            with open(legacy, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        self._legacy_path = legacy
        entries: list[tuple[bytes, int, int]] = []
        try:
            end = _U32.unpack_from(data, _LEGACY_END_AT)[0]
            offset = _LEGACY_FIRST
            while offset < end:
                size = _U32.unpack_from(data, offset)[0]
                record = data[offset + 4:offset + 4 + size]
                idx, term = _IDX_TERM.unpack_from(record)
                entries.append((record[16:], idx, term))
                offset += size + 8
        except struct.error:
            raise JournalError(f"raft journal {legacy} (pysyncobj's format) is truncated or damaged") from None
        if os.path.exists(self._path):
            os.unlink(self._path)  # a half-written migration from an earlier attempt
        return entries

    def _check_size(self, meta_path: str) -> None:
        """A journal too short to hold its header cannot be mapped. Empty and alone, it is the
        trace of a crash while it was being created (nothing was ever written to it); anything
        else lost its content."""
        try:
            size = os.path.getsize(self._path)
        except FileNotFoundError:
            return
        if size >= HEADER_SIZE:
            return
        if size == 0 and not os.path.exists(meta_path):
            os.unlink(self._path)
            return
        raise JournalError(f"raft journal {self._path} is truncated: {size} bytes, shorter than its header")

    def _read_exactly(self, offset: int, size: int) -> bytes:
        data = bytes(self._file.read(offset, size))
        if len(data) != size:
            raise JournalError(f"raft journal {self._path} is truncated at offset {offset + len(data)}")
        return data

    def _records(self) -> Iterator[tuple[int, bytes]]:
        head = self._read_exactly(0, HEADER_SIZE)
        if head[:8] != MAGIC:
            raise JournalError(f"{self._path} is not a swarmd raft journal")
        version = _U32.unpack_from(head, 8)[0]
        if version not in (FORMAT, _UNCHECKED_FORMAT):
            raise JournalError(f"{self._path} has an unsupported journal format")
        end = _U32.unpack_from(head, _END_AT)[0]
        if version == FORMAT and head[_END_AT:_END_AT + 8] != _end_field(end):
            raise JournalError(f"raft journal {self._path} is damaged: its header does not match its checksum")
        self._unchecked_header = version == _UNCHECKED_FORMAT
        if end < HEADER_SIZE:
            raise JournalError(f"raft journal {self._path} is damaged: its header ends the records at {end}")
        offset = HEADER_SIZE
        while offset < end:
            if offset + 8 > end:
                raise JournalError(f"raft journal {self._path} is damaged at offset {offset}")
            size = _U32.unpack(self._read_exactly(offset, 4))[0]
            if size < _IDX_TERM.size or offset + size + 8 > end:
                raise JournalError(f"raft journal {self._path} is damaged at offset {offset}")
            record = self._read_exactly(offset + 4, size)
            if _U32.unpack(self._read_exactly(offset + 4 + size, 4))[0] != size:
                raise JournalError(f"raft journal {self._path} is damaged at offset {offset}")
            yield offset, record
            offset += size + 8
        self._end = offset

    def _load(self) -> None:
        for n, (offset, record) in enumerate(self._records()):
            head = record[:_IDX_TERM.size]
            idx, term = _IDX_TERM.unpack(head)
            try:
                if n == 0:
                    # Which key sealed this file: the whole file is always under one key.
                    command, self._cipher = self._open_first(record[_IDX_TERM.size:], head)
                else:
                    command = self._cipher.open(record[_IDX_TERM.size:], head)
            except DecryptError:
                raise JournalError(
                    f"raft journal {self._path}: record {n} (index {idx}) does not authenticate; the journal "
                    "is damaged or was written under another data key") from None
            self._entries.append((command, idx, term))
            self._offsets.append(offset)
        if self._unchecked_header:
            self._file.write(8, _U32.pack(FORMAT) + _end_field(self._end))
            self._file.sync()

    def _open_first(self, sealed: bytes, head: bytes) -> tuple[bytes, DataCipher]:
        for cipher in self._ciphers:
            try:
                return cipher.open(sealed, head), cipher
            except DecryptError:
                continue
        raise DecryptError("no data key opens the journal")

    def rekey(self, cipher: DataCipher) -> None:
        """Seal every entry under ``cipher`` (a crash leaves one whole file under one of the
        two keys)."""
        self._replace_file(self._entries, cipher)

    def _replace_file(self, entries: list[tuple[bytes, int, int]], cipher: DataCipher) -> None:
        """Write ``entries`` to a new file, sync it, rename it over the journal: a crash or a
        full disk at any point leaves the old journal or the new one, whole. On a failure the
        journal stays as it was and the error is raised."""
        fresh = self._path + ".new"
        if os.path.exists(fresh):
            os.unlink(fresh)
        old = self._file, self._end, self._entries, self._offsets, self._cipher
        self._entries, self._offsets = [], []
        self._end, self._cipher = HEADER_SIZE, cipher
        try:
            self._file = self._new_file(fresh, defaultContent=_header(HEADER_SIZE))
            for entry in entries:
                self._append(*entry)
            self._file.sync()
            os.replace(fresh, self._path)
            self._file.renamed(self._path)
        except BaseException:
            if self._file is not old[0]:
                self._file._destroy()
            if os.path.exists(fresh):
                os.unlink(fresh)
            self._file, self._end, self._entries, self._offsets, self._cipher = old
            raise
        fsync_dir(Path(self._path).parent)
        old[0]._destroy()
        self._dirty = False

    def _rewrite(self, entries: list[tuple[bytes, int, int]]) -> None:
        for entry in entries:
            self._append(*entry)
        self._file.sync()
        os.unlink(self._legacy_path)

    # -- writing -----------------------------------------------------------------------------
    def _append(self, command: bytes, idx: int, term: int) -> None:
        head = _IDX_TERM.pack(idx, term)
        body = head + self._cipher.seal(bytes(command), head)
        size = _U32.pack(len(body))
        start = self._end
        self._file.write(start, size + body + size)
        self._end = start + len(body) + 8
        self._file.write(_END_AT, _end_field(self._end))
        self._entries.append((command, idx, term))
        self._offsets.append(start)

    def add(self, command: bytes, idx: int, term: int) -> None:
        self._append(command, idx, term)
        if self.defer_sync:
            self._dirty = True
        else:
            self._file.sync()

    def sync_if_dirty(self) -> None:
        if self._dirty:
            self._dirty = False
            self._file.sync()

    def flush(self) -> None:
        self._file.sync()

    def clear(self) -> None:
        self._entries, self._offsets = [], []
        self._end = HEADER_SIZE
        self._file.write(_END_AT, _end_field(self._end))
        self._dirty = False
        self._file.sync()

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        self._end = self._offsets[entryFrom] if entryFrom >= 0 else HEADER_SIZE
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        self._file.write(_END_AT, _end_field(self._end))
        self._dirty = False
        self._file.sync()

    def deleteEntriesTo(self, entryTo: int) -> None:
        """After a snapshot: keep the entries from ``entryTo`` on, in a new file (rewriting the
        journal in place would lose entries the snapshot does not hold, on a crash half-way)."""
        self._replace_file(self._entries[entryTo:], self._cipher)

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self._file._destroy()

    # -- meta (term, vote, commit index: not secret) -----------------------------------------
    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self._meta["raftCommitIndex"] = raftCommitIndex
        self._meta_saved = False

    def getRaftCommitIndex(self) -> int:
        return int(self._meta.get("raftCommitIndex", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        """Term and vote must be durable before any message that reflects them is sent: on a
        failed save nothing changes and ``MetaNotDurable`` tells pysyncobj to go no further."""
        meta = {**self._meta, "currentTerm": term, "votedForNodeId": votedForNodeId}
        if not self._store_meta(meta, f"cannot save term {term} and vote; this manager will not "
                                      "vote or campaign until it can"):
            raise MetaNotDurable(f"raft term {term} not saved")
        self._meta = meta
        self._meta_saved = True

    def getCurrentTerm(self) -> int:
        return int(self._meta.get("currentTerm", 0))

    def getVotedForNodeId(self) -> Any:
        return self._meta.get("votedForNodeId")

    def onOneSecondTimer(self) -> None:
        if not self._meta_saved and self._store_meta(self._meta, "cannot save the commit index; "
                                                                 "retrying every second"):
            self._meta_saved = True

    def _store_meta(self, meta: dict[str, Any], consequence: str) -> bool:
        """Save ``meta``; on a storage fault, one rate-limited warning line and False."""
        try:
            self._meta_storer.storeMeta(meta)
        except OSError as e:
            self._meta_failing = True
            self._meta_warnings.warn(f"raft: {consequence}: {self._meta_storer.getPath()}: "
                                     f"{e.strerror or e}", time.monotonic())
            return False
        if self._meta_failing:
            self._meta_failing = False
            log.info("raft: %s is saved again", self._meta_storer.getPath())
        return True

