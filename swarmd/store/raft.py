"""The pysyncobj wrapper: the only module that builds a SyncObj (DESIGN §5).

One ``RaftStore`` per manager. Writes are JSON ops proposed through one replicated ``apply``;
the journal and snapshot live under ``<state>/raft/`` (0700), made durable and safe to reload
by ``hardening``. Raft identity is the swarm node ID.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.node import Node

from swarmd.fsutil import ensure_dir, fsync_dir
from swarmd.store import hardening
from swarmd.store.machine import Result, StateMachine
from swarmd.store.transport import ClusterTransport

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
TICK_PERIOD = 0.05
MIN_FREE_BYTES = 4 << 20

_FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: "the write queue is full",
    FAIL_REASON.MISSING_LEADER: "no leader",
    FAIL_REASON.DISCARDED: "the write was discarded by a new leader",
    FAIL_REASON.NOT_LEADER: "this manager is not the leader",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the write committed",
    FAIL_REASON.REQUEST_DENIED: "the request was denied",
}


class StoreError(Exception):
    """A write that did not commit. ``no_leader`` distinguishes quorum loss from other faults."""

    def __init__(self, message: str, no_leader: bool = False) -> None:
        super().__init__(message)
        self.no_leader = no_leader


class _Replicated(SyncObjConsumer):  # type: ignore[misc]
    """The single replicated entry point; everything else is JSON inside ``op``."""

    def __init__(self, machine: StateMachine) -> None:
        super().__init__()
        self._machine = machine

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, op: bytes) -> Result:
        return self._machine.apply(op)

    # pysyncobj would pickle the consumer's attributes into its own snapshot; ours is JSON
    # (see RaftStore._write_snapshot), so the consumer contributes nothing.
    def _serialize(self) -> dict[str, Any]:
        return {}

    def _deserialize(self, data: dict[str, Any]) -> None:
        pass


def _entry_to_json(entry: tuple[bytes, int, int]) -> list[Any]:
    command, idx, term = entry
    return [base64.b64encode(command).decode(), idx, term]


def _entry_from_json(item: list[Any]) -> tuple[bytes, int, int]:
    return base64.b64decode(item[0]), int(item[1]), int(item[2])


class RaftStore:
    def __init__(self, node_id: str, raft_dir: Path, machine: StateMachine,
                 peers: Sequence[str] = (),
                 on_leader_change: Callable[[bool], None] | None = None) -> None:
        hardening.install()
        self.node_id = node_id
        self.raft_dir = ensure_dir(raft_dir)
        self.machine = machine
        self._peers = list(peers)
        self._ready = threading.Event()
        self._on_leader_change = on_leader_change
        self._consumer = _Replicated(machine)
        self._syncobj: SyncObj | None = None
        self._stopping = threading.Event()
        self._tick_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        conf = SyncObjConf(
            autoTick=False,                   # our own tick thread: no 100 ms start-up sleep, bounded stop
            appendEntriesUseBatch=False,      # ~0.5 ms commits instead of one tick (50 ms)
            dynamicMembershipChange=True,
            useFork=False,                    # never fork a process that runs gRPC threads
            leaderFallbackTimeout=3.0,
            commandsWaitLeader=False,
            journalFile=str(self.raft_dir / "journal"),
            fullDumpFile=str(self.raft_dir / "snapshot"),
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            onReady=self._ready.set,
            onStateChanged=self._state_changed,
            logCompactionMinEntries=5000,
            logCompactionMinTime=300,
        )
        self._syncobj = SyncObj(Node(self.node_id), [Node(p) for p in self._peers], conf,
                                consumers=[self._consumer], nodeClass=Node,
                                transportClass=ClusterTransport)
        self._syncobj.addOnTickCallback(self._commit_alone)
        if not self._peers:
            # A lone member need not wait out a random election timeout (0.4–1.4 s).
            self._syncobj._SyncObj__raftElectionDeadline = 0
        self._stopping.clear()
        self._tick_thread = threading.Thread(target=self._tick_loop, args=(self._syncobj,),
                                             name="raft-tick", daemon=True)
        self._tick_thread.start()

    def _tick_loop(self, obj: SyncObj) -> None:
        """All Raft state lives on this thread (pysyncobj has no locks)."""
        while not self._stopping.is_set():
            try:
                obj.doTick(TICK_PERIOD)
            except Exception:  # noqa: BLE001 - pysyncobj's own policy: log and tick again
                log.exception("raft tick failed")
                self._stopping.wait(TICK_PERIOD)

    def _commit_alone(self) -> None:
        """Runs on the tick thread. A lone leader commits an entry on the tick after appending
        it, and nothing wakes that tick early (no follower ack arrives): without this nudge
        every write of a one-manager swarm would wait a whole tick period (50 ms)."""
        obj = self._syncobj
        if obj is None or obj._SyncObj__otherNodes or obj._SyncObj__raftState != 2:
            return
        if obj._SyncObj__raftCommitIndex < obj._SyncObj__getCurrentLogIndex():
            obj._SyncObj__pipeNotifier.notify()

    def stop(self, timeout: float = 5.0) -> None:
        obj, self._syncobj = self._syncobj, None
        if obj is None:
            return
        self._stopping.set()
        obj._SyncObj__pipeNotifier.notify()
        thread = self._tick_thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("the raft tick thread did not stop within %.0fs", timeout)
                return
        obj._doDestroy()

    def wait_ready(self, timeout: float) -> bool:
        """True once this member applied everything the leader had committed when it started."""
        return self._ready.wait(timeout)

    def wait_leader(self, timeout: float) -> bool:
        """Poll (the tick thread offers no event for it) until some leader is known."""
        deadline = time.monotonic() + timeout
        while self.leader_id() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # -- status ------------------------------------------------------------------------------
    def _obj(self) -> SyncObj:
        if self._syncobj is None:
            raise StoreError("the store is not running")
        return self._syncobj

    def is_leader(self) -> bool:
        return bool(self._syncobj is not None and self._syncobj._isLeader())

    def leader_id(self) -> str | None:
        if self._syncobj is None:
            return None
        leader = self._syncobj._getLeader()
        return None if leader is None else str(leader.id)

    def status(self) -> dict[str, Any]:
        return dict(self._obj().getStatus())

    def _state_changed(self, old: int, new: int) -> None:
        if self._on_leader_change is not None:
            self._on_leader_change(new == 2)

    # -- writes ------------------------------------------------------------------------------
    def propose(self, op: bytes, timeout: float = 5.0) -> Result:
        """Replicate ``op`` and return the state machine's result once it is committed here."""
        self._check_disk()
        obj = self._obj()
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def callback(result: Result, error: int) -> None:
            outcome["result"], outcome["error"] = result, error
            done.set()

        self._consumer.apply(op, callback=callback)
        if not done.wait(timeout):
            if obj._getLeader() is None:
                raise StoreError("no leader", no_leader=True)
            raise StoreError("timed out waiting for the write to commit")
        error = outcome["error"]
        if error != FAIL_REASON.SUCCESS:
            raise StoreError(_FAIL_TEXT.get(error, f"write failed ({error})"),
                             no_leader=error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER))
        return outcome["result"]  # type: ignore[no-any-return]

    def _check_disk(self) -> None:
        st = os.statvfs(self.raft_dir)
        if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
            raise StoreError(f"no space left on device for the raft journal in {self.raft_dir}")

    # -- snapshots (JSON, never pickle) ----------------------------------------------------------
    def _write_snapshot(self, filename: str, data: tuple[Any, Any, Any]) -> None:
        last, before_last, members = data
        doc = {
            "format": SNAPSHOT_FORMAT,
            "state": self.machine.dump(),
            "last": _entry_to_json(last),
            "before_last": _entry_to_json(before_last),
            "members": sorted(str(n.id) for n in members),
        }
        fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(doc).encode())
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(Path(filename).parent)

    def _read_snapshot(self, filename: str) -> tuple[Any, Any, Any]:
        doc = json.loads(Path(filename).read_bytes())
        if doc.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format in {filename}")
        self.machine.load(doc["state"])
        members = {Node(m) for m in doc["members"]}
        return _entry_from_json(doc["last"]), _entry_from_json(doc["before_last"]), members
