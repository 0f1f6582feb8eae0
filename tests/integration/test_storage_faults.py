"""A manager's state dir on a damaged, full or small filesystem: it refuses to start with one line
naming the damaged file, never serves without what it acknowledged, rides out a full disk
without a traceback, and follows the cluster's snapshot settings."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import keyfile
from swarmd.store import hardening
from swarmd.store.crypto import DataCipher
from tests.harness import SWARMD, Daemon, join, leader_of, node_rows, wait_for

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


def write_entries(d: Daemon, count: int) -> None:
    """``count`` Raft entries: one node label change each, straight through the control API."""
    node_id = d.info().node_id
    with grpc.insecure_channel(f"unix:{d.socket}") as ch:
        stub = pb_grpc.ControlStub(ch)
        for i in range(count):
            stub.UpdateNode(pb.UpdateNodeRequest(ref=node_id, label_add=[f"seq={i}"]), timeout=10)


def raft_dir(d: Daemon) -> Path:
    return d.state_dir / "raft"


def old_snapshots(d: Daemon) -> list[str]:
    return sorted(p.name for p in raft_dir(d).glob("snapshot-*"))


def snapshot_doc(d: Daemon) -> dict[str, object]:
    """The manager's current snapshot, opened with its own data key."""
    dek = keyfile.decode((d.state_dir / "certificates" / "swarm-node.key").read_bytes(), None).dek
    assert dek is not None
    hardening.register_cipher(raft_dir(d), DataCipher(dek))
    path = raft_dir(d) / "snapshot"
    doc: dict[str, object] = json.loads(hardening.open_snapshot(str(path), path.read_bytes()))
    return doc


def start_refused(d: Daemon) -> str:
    """Start ``d`` on a damaged state dir: it must exit 1 without serving; its one error line."""
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1
    d.proc = None
    assert not d.socket.exists() or not _serves(d)
    lines = [line for line in d.log().splitlines() if "swarmd cannot start:" in line]
    assert len(lines) == 1, d.log()
    return lines[0].split("swarmd cannot start: ", 1)[1]


def _serves(d: Daemon) -> bool:
    try:
        d.info()
        return True
    except grpc.RpcError:
        return False


def with_snapshot(d: Daemon) -> None:
    d.ok("update", "--snapshot-interval", "50")
    d.ok("network", "create", "acknowledged")
    write_entries(d, 60)
    wait_for((raft_dir(d) / "snapshot").exists, 15, what="a snapshot")


# -- item: a damaged snapshot or journal is a start-up refusal --------------------------------------

def test_damaged_snapshot_refuses_to_start_naming_the_file(manager: Daemon) -> None:
    with_snapshot(manager)
    manager.stop()
    snapshot = raft_dir(manager) / "snapshot"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x01
    snapshot.write_bytes(bytes(data))
    reason = start_refused(manager)
    assert reason.startswith(f"raft snapshot {snapshot} does not authenticate")
    assert "failed to load full dump" not in manager.log()


def test_missing_snapshot_behind_a_compacted_journal_refuses_to_start(manager: Daemon) -> None:
    with_snapshot(manager)
    manager.stop()
    (raft_dir(manager) / "snapshot").unlink()
    reason = start_refused(manager)
    assert reason.startswith(f"raft journal {raft_dir(manager) / 'journal'} starts at index ")
    assert reason.endswith("but there is no snapshot: entries are missing")


def test_truncated_journal_and_damaged_state_files_name_the_file(manager: Daemon) -> None:
    manager.ok("network", "create", "acknowledged")
    write_entries(manager, 30)  # a journal longer than the 1 KiB its file is mapped with at least
    manager.stop()
    journal = raft_dir(manager) / "journal"
    whole = journal.read_bytes()
    end, offset, last = int.from_bytes(whole[12:16], "little"), 32, 32
    while offset < end:
        last, offset = offset, offset + int.from_bytes(whole[offset:offset + 4], "little") + 8
    cut = last + 4 + 10  # inside the last record's index and term
    journal.write_bytes(whole[:cut])
    assert start_refused(manager) == f"raft journal {journal} is truncated at offset {cut}"
    journal.write_bytes(whole)

    state = manager.state_dir / "state.json"
    good = state.read_bytes()
    state.write_bytes(b'{"node_id": "x", ')
    manager.log_path.unlink()
    assert start_refused(manager).startswith(f"{state} is damaged: not valid JSON")
    state.write_bytes(good)

    cert = manager.state_dir / "certificates" / "swarm-node.crt"
    good = cert.read_bytes()
    cert.write_bytes(good[:len(good) // 2])
    manager.log_path.unlink()
    assert start_refused(manager) == f"{cert} is damaged: not a PEM certificate"
    cert.write_bytes(good)

    manager.log_path.unlink()
    manager.start()
    assert "acknowledged" in manager.ok("network", "ls")


# -- item: a full disk -----------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Mount a 32 MiB tmpfs at a path; every one is unmounted (lazily, after the daemons)."""
    mounted: list[Path] = []

    def mount(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Take every free block of the filesystem; the file to remove to give them back."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 20, 4096):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return filler


@needs_root
def test_full_disk_warns_once_votes_on_no_unsaved_term_and_recovers(small_fs: Callable[[Path], Path],
                                                                    daemons: Callable[..., Daemon]) -> None:
    m = daemons("m", start=False)
    small_fs(m.state_dir)
    m.start()
    m.init()
    m.ok("network", "create", "before-the-disk-filled")
    m.stop()
    filler = fill(m.state_dir)
    m.start()
    # No term could be saved: the manager must not campaign on one, so there is no leader.
    wait_for(lambda: "raft: cannot save term" in m.log(), 20, what="the term-save warning")
    r = m.ctl("network", "ls")
    assert r.returncode == 1 and "does not have a leader" in r.stderr
    filler.unlink()
    wait_for(lambda: m.ctl("network", "ls").returncode == 0, 30, step=0.2, what="a leader once space returned")
    m.ok("network", "create", "after-the-disk-filled")
    assert "before-the-disk-filled" in m.ok("network", "ls")
    log = m.log()
    assert "raft tick failed" not in log and "Traceback" not in log, log
    assert len([line for line in log.splitlines() if "raft: cannot save" in line]) <= 2
    assert "journal.meta is saved again" in log


# -- item: --snapshot-interval and --max-snapshots --------------------------------------------------

def test_snapshot_interval_and_old_snapshots_follow_the_cluster_spec(daemons: Callable[..., Daemon]) -> None:
    a = daemons("a")
    a.init()
    b = daemons("b")
    join(b, a, "manager")
    write_entries(a, 60)
    assert not (raft_dir(a) / "snapshot").exists()  # Docker's default: every 10000 entries
    assert a.ok("update", "--snapshot-interval", "50", "--max-snapshots", "2") == "Swarm updated.\n"
    write_entries(a, 60)
    for d in (a, b):
        wait_for((raft_dir(d) / "snapshot").exists, 15, what=f"a snapshot on {d.hostname}")
    last = snapshot_doc(a)["last"]
    assert isinstance(last, list) and last[1] <= 200  # after ~50 entries, not 10000
    write_entries(a, 200)
    for d in (a, b):
        wait_for(lambda: len(old_snapshots(d)) == 2, 15, what="two old snapshots kept")
    a.ok("update", "--max-snapshots", "0")
    write_entries(a, 60)
    for d in (a, b):
        wait_for(lambda: not old_snapshots(d), 15, what="old snapshots dropped")
    # Restarts come back from the snapshot and the journal behind it.
    labels = json.loads(a.ok("node", "inspect", "self"))[0]["Spec"]["Labels"]
    b.restart()
    a.restart()
    leader_of([a, b])
    assert json.loads(a.ok("node", "inspect", "self"))[0]["Spec"]["Labels"] == labels


# -- item: the recovery of a member that cannot start ------------------------------------------------

def test_damaged_manager_is_removed_reset_and_joined_again(daemons: Callable[..., Daemon]) -> None:
    a = daemons("a")
    a.init()
    b, c = daemons("b"), daemons("c")
    join(b, a, "manager")
    join(c, a, "manager")
    a.ok("network", "create", "survives")
    damaged_id = c.info().node_id
    c.stop()
    journal = raft_dir(c) / "journal"
    data = bytearray(journal.read_bytes())
    data[40] ^= 0x01
    journal.write_bytes(bytes(data))
    assert "does not authenticate" in start_refused(c)
    # From a healthy manager: demote the damaged one, then remove it.
    leader = leader_of([a, b])
    leader.ok("node", "demote", damaged_id)
    leader.ok("node", "rm", "--force", damaged_id)
    assert damaged_id not in leader.ok("node", "ls", "-q")
    # On the damaged host: reset its state dir (refused while a daemon holds it), start, join.
    r = subprocess.run([SWARMD, "--state-dir", str(a.state_dir), "--reset-state"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "another swarmd is already using the state dir" in r.stderr
    r = subprocess.run([SWARMD, "--state-dir", str(c.state_dir), "--reset-state"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"swarmd: removed state.json, certificates, raft, executor from {c.state_dir}\n"
    assert sorted(os.listdir(c.state_dir)) == []
    c.start()
    assert c.info().local_node_state == "inactive"
    join(c, leader, "manager")
    wait_for(lambda: sorted(r[2] for r in node_rows(leader).values()) == ["Leader", "Reachable", "Reachable"],
             30, step=0.2, what="three healthy managers")
    assert "survives" in c.ok("network", "ls")
