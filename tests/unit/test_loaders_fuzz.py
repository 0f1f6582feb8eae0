"""Every loader of the state dir, fed truncated and bit-flipped files: it loads the file exactly
or raises ``StateFileError`` (one line naming the file), never anything else.

The Raft files (journal, its meta file, the snapshot) are checksummed or authenticated, so a
damaged one never loads as something else. ``state.json``, the certificates and the key file
carry no checksum of their own: a flip may still leave valid content, but never an error of
another type (and the TLS handshake refuses a certificate whose signature was damaged).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.ca import keyfile, pki
from swarmd.ca.store import CertificateStore
from swarmd.errors import StateFileError
from swarmd.node.localstate import STATE_FILE, LocalState
from swarmd.store import hardening
from swarmd.store.crypto import DataCipher
from swarmd.store.journal import EncryptedJournal, JournalError, MetaNotDurable
from swarmd.store.machine import StateMachine, encode_op
from swarmd.store.raft import RaftStore, StoreError
from tests.harness import wait_for

DATA_KEY = bytes(range(32))
ENTRIES = [(b"\x01" + bytes([i]) * (5 + i), i + 1, 1 + i // 2) for i in range(5)]


def flips(data: bytes) -> Iterator[tuple[int, bytes]]:
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        yield offset, bytes(damaged)


def truncations(data: bytes) -> Iterator[tuple[int, bytes]]:
    for size in range(len(data)):
        yield size, data[:size]


# -- the journal ---------------------------------------------------------------------------------

def _open_journal(path: Path) -> EncryptedJournal:
    hardening.register_cipher(path.parent, DataCipher(DATA_KEY))
    journal = hardening._create_journal(str(path))
    assert isinstance(journal, EncryptedJournal)
    return journal


def _entries_or_error(path: Path) -> list[tuple[bytes, int, int]] | None:
    """The journal's entries, or None when it is refused with a JournalError."""
    try:
        journal = _open_journal(path)
    except JournalError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return None
    try:
        return [(bytes(c), i, t) for c, i, t in journal]
    finally:
        journal._destroy()


@pytest.fixture
def small_journal(tmp_path: Path) -> tuple[Path, bytes, int]:
    """A journal of five entries: (path, its bytes, the end offset of its records)."""
    raft = tmp_path / "raft"
    raft.mkdir()
    journal = _open_journal(raft / "journal")
    for entry in ENTRIES:
        journal.add(*entry)
    journal.setCurrentTerm(3, None)
    end = journal._end
    journal._destroy()
    path = raft / "journal"
    return path, path.read_bytes(), end


def test_journal_truncated_anywhere_is_refused_and_whole_loads(small_journal: tuple[Path, bytes, int]) -> None:
    path, data, end = small_journal
    assert _entries_or_error(path) == ENTRIES
    for size, cut in truncations(data[:end + 1]):
        path.write_bytes(cut)
        got = _entries_or_error(path)
        assert got is None or got == ENTRIES, f"truncated to {size} bytes and loaded {got}"
        if size < end - 3:
            # Only the zero high bytes of the last record's trailing length may go unnoticed (the
            # file is mapped zero-filled up to its size): nothing it held is missing then.
            assert got is None, f"truncated to {size} bytes and loaded {got}"


def test_journal_byte_flips_are_refused_or_harmless(small_journal: tuple[Path, bytes, int]) -> None:
    path, data, end = small_journal
    refused = 0
    for offset, damaged in flips(data[:end + 64]):
        path.write_bytes(damaged + data[end + 64:])
        got = _entries_or_error(path)
        assert got is None or got == ENTRIES, f"a flip at {offset} loaded {got}"
        refused += got is None
        if 32 <= offset < end:
            assert got is None, f"a flip at {offset}, inside a record, was not noticed"
    assert refused >= end - 32


def test_journal_of_the_format_without_header_checksum_is_read_and_upgraded(
        small_journal: tuple[Path, bytes, int]) -> None:
    path, data, _ = small_journal
    old = bytearray(data)
    old[8:12] = (1).to_bytes(4, "little")
    old[16:20] = bytes(4)
    path.write_bytes(bytes(old))
    assert _entries_or_error(path) == ENTRIES
    assert path.read_bytes()[8:20] == data[8:20]  # rewritten with the checksum


# -- the journal's meta file ------------------------------------------------------------------

def test_meta_truncated_or_flipped_is_refused_or_exact(tmp_path: Path) -> None:
    path = tmp_path / "journal.meta"
    storer = hardening._DurableMetaStorer(str(path))
    meta = {"raftCommitIndex": 1234, "currentTerm": 7, "votedForNodeId": "n" * 25}
    storer.storeMeta(meta)
    data = path.read_bytes()
    for what, damaged in [*truncations(data), *flips(data)]:
        path.write_bytes(damaged)
        try:
            assert storer.getMeta() == meta, f"damage at {what} loaded other meta"
        except JournalError as e:
            assert str(path) in str(e)


def test_meta_in_pysyncobj_pickle_format_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "journal.meta"
    meta = {"raftCommitIndex": 3, "currentTerm": 2, "votedForNodeId": None}
    path.write_bytes(pickle.dumps(meta, protocol=2))
    assert hardening._DurableMetaStorer(str(path)).getMeta() == meta
    path.write_bytes(pickle.dumps(meta, protocol=2)[:-3])
    with pytest.raises(JournalError, match="corrupt raft meta file"):
        hardening._DurableMetaStorer(str(path)).getMeta()


# -- the snapshot --------------------------------------------------------------------------------

def test_snapshot_truncated_or_flipped_is_refused(tmp_path: Path) -> None:
    raft = tmp_path / "raft"
    raft.mkdir()
    hardening.register_cipher(raft, DataCipher(DATA_KEY))
    path = raft / "snapshot"
    doc = {"format": 1, "state": {"index": 3, "cluster": None, "nodes": {}, "networks": {}},
           "last": ["AQ==", 3, 1], "before_last": ["AQ==", 2, 1], "members": ["n" * 25]}
    data = hardening.seal_snapshot(str(path), json.dumps(doc).encode())
    path.write_bytes(data)
    store = RaftStore("n" * 25, raft, StateMachine(), data_key=DATA_KEY)
    store._check_snapshot()
    assert store._snapshot_index == 3
    for what, damaged in [*truncations(data), *flips(data)]:
        path.write_bytes(damaged)
        with pytest.raises(StateFileError) as e:
            store._check_snapshot()
        assert str(path) in str(e.value), what


# -- state.json, certificates, key file ----------------------------------------------------------

def _loads_or_state_error(load: Callable[[], Any], path: Path) -> None:
    try:
        load()
    except StateFileError as e:
        assert str(path) in str(e) and "\n" not in str(e)


def test_state_json_damage_is_one_clear_error(tmp_path: Path) -> None:
    local = LocalState(node_id="n" * 25, cluster_id="c" * 25, role="manager", listen_addr="0.0.0.0:2377",
                       advertise_addr="10.0.0.5:2377", local_addr="10.0.0.5",
                       remote_managers=[{"node_id": "n" * 25, "addr": "10.0.0.5:2377"}])
    local.save(tmp_path)
    path = tmp_path / STATE_FILE
    data = path.read_bytes()
    assert LocalState.load(tmp_path) == local
    for _, damaged in [*truncations(data), *flips(data)]:
        path.write_bytes(damaged)
        _loads_or_state_error(lambda: LocalState.load(tmp_path), path)
    for bad in (b'{"node_id": ', b"[]", b'{"node_id": 5}', b"\xff\xfe",
                json.dumps({**json.loads(data), "data_path_port": "x"}).encode(),
                json.dumps({**json.loads(data), "role": "admin"}).encode()):
        path.write_bytes(bad)
        with pytest.raises(StateFileError, match=str(path)):
            LocalState.load(tmp_path)


@pytest.fixture
def cert_store(tmp_path: Path) -> CertificateStore:
    root, root_key = pki.create_root_ca()
    key = pki.generate_key()
    cert = pki.sign_node_certificate(root, root_key, pki.make_csr(key), "n" * 25, "c" * 25, pki.MANAGER_ROLE,
                                     pki.DEFAULT_NODE_CERT_EXPIRATION)
    store = CertificateStore(tmp_path / "certificates")
    store.save(root, cert, keyfile.encode(keyfile.NodeKey(key_pem=pki.key_to_pem(key), dek=DATA_KEY), None))
    return store


@pytest.mark.parametrize("which", ["root_path", "cert_path", "key_path"])
def test_certificate_and_key_damage_is_one_clear_error(cert_store: CertificateStore, which: str) -> None:
    path: Path = getattr(cert_store, which)
    data = path.read_bytes()
    whole = cert_store.load()
    step = max(1, len(data) // 150)  # a PEM file is long: every step-th offset, ends included
    cases = [*list(truncations(data))[::step], *list(flips(data))[::step], (len(data) - 1, data[:-1])]
    for _, damaged in cases:
        path.write_bytes(damaged)
        _loads_or_state_error(cert_store.load, path)
    for bad in (b"", b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", b"\x00" * 64):
        path.write_bytes(bad)
        with pytest.raises(StateFileError, match=str(path)):
            cert_store.load()
    path.write_bytes(data)
    assert cert_store.load() == whole


def test_a_sealed_key_is_left_for_unlock_to_check(cert_store: CertificateStore, tmp_path: Path) -> None:
    kek = keyfile.parse_unlock_key(keyfile.generate_unlock_key())
    node_key = keyfile.decode(cert_store.key_path.read_bytes(), None)
    sealed = keyfile.encode(node_key, kek)
    cert_store.key_path.write_bytes(sealed)
    assert cert_store.load()[2] == sealed
    shutil.rmtree(tmp_path / "certificates")


# -- saving the meta file on a full disk ---------------------------------------------------------

@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A tiny tmpfs (root only): (its mount point, the file that fills it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount, mount / "filler"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(filler: Path) -> None:
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_meta_saves_on_a_full_or_read_only_disk_warn_once_retry_and_keep_the_term(
        full_disk: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: str) -> None:
    mount, filler = full_disk
    meta_path = mount / "journal.meta"
    hardening.register_cipher(tmp_path, DataCipher(DATA_KEY))
    journal = EncryptedJournal(str(tmp_path / "journal"), [DataCipher(DATA_KEY)], hardening._AllocatedFile,
                               hardening._DurableMetaStorer(str(meta_path)))
    try:
        journal.add(b"\x01", 1, 1)
        journal.setCurrentTerm(4, "n" * 25)
        if fault == "full":
            _fill(filler)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        journal.setRaftCommitIndex(9)
        with caplog.at_level(logging.WARNING, logger="swarmd.store.journal"):
            for _ in range(5):
                journal.onOneSecondTimer()  # no exception out of the Raft tick
            with pytest.raises(MetaNotDurable):
                journal.setCurrentTerm(5, None)
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "cannot save the commit index" in warnings[0], warnings
        reason = "No space left on device" if fault == "full" else "Read-only file system"
        assert f"{meta_path}: {reason}" in warnings[0] and "\n" not in warnings[0]
        assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (4, "n" * 25)
        if fault == "full":
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        journal.onOneSecondTimer()
        saved = hardening._DurableMetaStorer(str(meta_path)).getMeta()
        assert saved == {"raftCommitIndex": 9, "currentTerm": 4, "votedForNodeId": "n" * 25}
    finally:
        journal._destroy()


def test_a_term_that_cannot_be_saved_is_not_kept_in_memory() -> None:
    """pysyncobj sets its own copy of term and vote before the journal saves them."""
    class Member:
        _SyncObj__raftCurrentTerm = 4
        _SyncObj__votedForNodeId = "a"

    def failing_save(self: Member, term: int, voted_for: object) -> None:
        self._SyncObj__raftCurrentTerm, self._SyncObj__votedForNodeId = term, voted_for
        raise MetaNotDurable("not saved")

    member = Member()
    with pytest.raises(MetaNotDurable):
        hardening.durable_term(failing_save)(member, 5, "b")
    assert (member._SyncObj__raftCurrentTerm, member._SyncObj__votedForNodeId) == (4, "a")


def test_a_snapshot_that_cannot_be_written_is_tried_again_later_not_every_tick(
        full_disk: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    mount, filler = full_disk
    machine = StateMachine()
    store = RaftStore("n" * 25, mount / "raft", machine, data_key=DATA_KEY)
    store.start()
    try:
        assert store.wait_leader(10) and store.wait_ready(10)
        for i in range(5):
            store.propose(encode_op("rotate_join_token", role="worker", token=f"t{i}", now="x"))
        _fill(filler)
        with caplog.at_level(logging.WARNING):
            store._obj().forceLogCompaction()
            for _ in range(40):  # each status is answered on a later tick: 40 ticks at least
                store.status()
        ours = [r.getMessage() for r in caplog.records if "cannot write a snapshot" in r.getMessage()]
        theirs = [r for r in caplog.records if r.getMessage() == "Failed to store full dump"]
        assert len(ours) == 1 and "No space left on device" in ours[0], ours
        assert len(theirs) <= 1
        assert not (mount / "raft" / "snapshot").exists() and not (mount / "raft" / "snapshot.tmp").exists()
        filler.unlink()
        store._obj().compaction_paused_until = 0.0  # as if the retry delay had passed
        store._obj().forceLogCompaction()
        wait_for((mount / "raft" / "snapshot").exists, 10, what="the snapshot once space returned")
    finally:
        store.stop()


def test_an_older_copy_of_the_journal_is_refused(tmp_path: Path) -> None:
    """Whole and authentic, but without entries this manager already counted as committed."""
    raft = tmp_path / "raft"
    store = RaftStore("n" * 25, raft, StateMachine(), data_key=DATA_KEY)
    store.start()
    try:
        assert store.wait_leader(10) and store.wait_ready(10)
        store.propose(encode_op("rotate_join_token", role="worker", token="t0", now="x"))
        older = (raft / "journal").read_bytes()
        for i in range(1, 4):
            store.propose(encode_op("rotate_join_token", role="worker", token=f"t{i}", now="x"))
        meta = hardening._DurableMetaStorer(str(raft / "journal.meta"))
        wait_for(lambda: meta.getMeta().get("raftCommitIndex", 0) >= 5, 10, what="the commit index saved")
    finally:
        store.stop()
    (raft / "journal").write_bytes(older)
    again = RaftStore("n" * 25, raft, StateMachine(), data_key=DATA_KEY)
    with pytest.raises(JournalError, match=r"ends at index \d+ but index \d+ was committed: entries are missing"):
        again.start()
    again.stop()


def test_trimming_the_journal_on_a_full_disk_keeps_it_whole(full_disk: tuple[Path, Path]) -> None:
    """After a snapshot the journal is trimmed into a new file; when that file cannot be
    written, the journal stays exactly as it was, in memory and on disk."""
    mount, filler = full_disk
    path = mount / "journal"
    journal = _open_journal(path)
    try:
        for entry in ENTRIES:
            journal.add(*entry)
        before = path.read_bytes()
        _fill(filler)
        with pytest.raises(OSError):
            journal.deleteEntriesTo(3)
        assert list(journal) == ENTRIES and path.read_bytes() == before
        assert not (mount / "journal.new").exists()
        filler.unlink()
        journal.deleteEntriesTo(3)
        journal.add(b"\x01after", 6, 3)
    finally:
        journal._destroy()
    assert _entries_or_error(path) == [*ENTRIES[3:], (b"\x01after", 6, 3)]


def test_a_snapshot_that_cannot_be_loaded_at_run_time_halts_the_member(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot from the leader that cannot be read back: pysyncobj would log it and answer the
    leader as if it had been installed; the member stops taking part instead."""
    raft = tmp_path / "raft"
    store = RaftStore("n" * 25, raft, StateMachine(), data_key=DATA_KEY)
    store.start()
    try:
        assert store.wait_leader(10) and store.wait_ready(10)
        store.propose(encode_op("rotate_join_token", role="worker", token="t0", now="x"))
        store._obj().forceLogCompaction()
        wait_for((raft / "snapshot").exists, 10, what="a snapshot")
        (raft / "snapshot").write_bytes(b"SWMDSNP1" + bytes(64))
        with caplog.at_level(logging.ERROR, logger="swarmd.store.raft"):
            with pytest.raises(StateFileError, match="does not authenticate"):
                store._on_tick_thread(lambda obj: store._read_snapshot(str(raft / "snapshot")))
            thread = store._tick_thread
            assert thread is not None
            thread.join(5)
            assert not thread.is_alive()
        assert store.halted is not None and "does not authenticate" in store.halted
        assert any("stopped taking part in the raft cluster" in r.getMessage() for r in caplog.records)
        with pytest.raises(StoreError, match="stopped taking part in the raft cluster"):
            store.propose(encode_op("rotate_join_token", role="worker", token="t1", now="x"))
    finally:
        store.stop()
