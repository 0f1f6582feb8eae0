"""The pysyncobj wrapper: the only module that builds a SyncObj (DESIGN §5).

One ``RaftStore`` per manager. Writes are JSON ops proposed through one replicated ``apply``;
the journal and snapshot live under ``<state>/raft/`` (0700), made durable and safe to reload
by ``hardening``. Raft identity is the swarm node ID; messages to the other members travel
through a ``PeerNetwork`` (``transport``).

pysyncobj keeps its state on our tick thread without locks. Other threads only read single
attributes (leader, state) or hand work to the tick thread (``_on_tick_thread``): membership
changes, leadership transfer, member lists and status are all computed there.
"""

from __future__ import annotations

import base64
import json
import queue
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.node import Node
from pysyncobj.transport import Transport

from swarmd.fsutil import ensure_dir, fsync_dir
from swarmd.store import hardening
from swarmd.store.crypto import DataCipher
from swarmd.store.machine import Result, StateMachine
from swarmd.store.reads import NotLeader, ReadBarrier
from swarmd.store.transport import LoneTransport, PeerNetwork, transport_class

log = logging.getLogger(__name__)

T = TypeVar("T")

SNAPSHOT_FORMAT = 1
TICK_PERIOD = 0.05
MIN_FREE_BYTES = 4 << 20
READ_TIMEOUT = 3.0  # a leader that cannot confirm itself this long has lost its majority
# One write's limit (swarmkit's MaxTransactionBytes): keeps every Raft message well inside the
# transport's frame limit, whatever a caller packs into labels or descriptions.
MAX_OP_BYTES = 1536 << 10

_FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: "the write queue is full",
    FAIL_REASON.MISSING_LEADER: "no leader",
    FAIL_REASON.DISCARDED: "the write was discarded by a new leader",
    FAIL_REASON.NOT_LEADER: "this manager is not the leader",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the write committed",
    FAIL_REASON.REQUEST_DENIED: "the request was denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "the outcome of the write is unknown",
}
_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER


class StoreError(Exception):
    """A write that did not commit. ``no_leader`` distinguishes quorum loss from other faults."""

    def __init__(self, message: str, no_leader: bool = False) -> None:
        super().__init__(message)
        self.no_leader = no_leader


class OpTooLarge(StoreError):
    """A write refused before it reached Raft because of its size."""


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
    """One manager's member of the Raft cluster.

    ``peers`` are the other members to start with (ignored when the journal or snapshot already
    knows the membership). Without ``network`` the member is alone and sends nothing (tests of a
    single manager); with one, it talks to its peers through it.
    """

    def __init__(self, node_id: str, raft_dir: Path, machine: StateMachine,
                 peers: Sequence[str] = (),
                 on_leader_change: Callable[[bool], None] | None = None,
                 network: PeerNetwork | None = None, *, data_key: bytes,
                 other_keys: Sequence[bytes] = ()) -> None:
        hardening.install()
        if network is not None and network.self_id != node_id:
            raise ValueError(f"the raft network belongs to {network.self_id}, not {node_id}")
        self.node_id = node_id
        self.raft_dir = ensure_dir(raft_dir)
        hardening.register_cipher(self.raft_dir, DataCipher(data_key), *(DataCipher(k) for k in other_keys))
        self.machine = machine
        self._peers = [p for p in peers if p != node_id]
        self._network = network
        self._tick_calls: queue.SimpleQueue[tuple[Callable[[SyncObj], Any], Future[Any]]] = queue.SimpleQueue()
        self._membership_lock = threading.Lock()
        self._ready = threading.Event()
        self._on_leader_change = on_leader_change
        self._consumer = _Replicated(machine)
        self._syncobj: SyncObj | None = None
        self._stopping = threading.Event()
        self._tick_thread: threading.Thread | None = None
        self._reads = ReadBarrier()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        conf = SyncObjConf(
            autoTick=False,                   # our own tick thread: no 100 ms start-up sleep, bounded stop
            appendEntriesUseBatch=False,      # ~0.5 ms commits instead of one tick (50 ms)
            appendEntriesPeriod=0.05,         # Raft heartbeat; also paces a new member's catch-up
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
        built: list[Transport] = []

        def transport(syncObj: Any, selfNode: Any, otherNodes: Any) -> Transport:  # noqa: N803
            factory = LoneTransport if self._network is None else transport_class(self._network)
            built.append(factory(syncObj, selfNode, otherNodes))
            return built[-1]

        try:
            self._syncobj = SyncObj(Node(self.node_id), [Node(p) for p in self._peers], conf,
                                    consumers=[self._consumer], nodeClass=Node,
                                    transportClass=transport)
        except BaseException:
            for t in built:  # let go of the network, so a later start can attach again
                t.destroy()
            raise
        self._syncobj.addOnTickCallback(self._commit_alone)
        self._syncobj.addOnTickCallback(self._run_tick_calls)
        wire = built[-1]
        if hasattr(wire, "read_handler"):
            wire.read_handler = self._reads.on_message
        obj_for_reads = self._syncobj
        self._syncobj.addOnTickCallback(lambda: self._reads.tick(obj_for_reads, wire.send))
        if not self._peers:
            # A lone member need not wait out a random election timeout (0.4–1.4 s).
            self._syncobj._SyncObj__raftElectionDeadline = 0
        self._stopping.clear()
        self._tick_thread = threading.Thread(target=self._tick_loop, args=(self._syncobj,),
                                             name="raft-tick", daemon=True)
        self._tick_thread.start()

    def _tick_loop(self, obj: SyncObj) -> None:
        """All Raft state lives on this thread (pysyncobj has no locks)."""
        journal = obj._SyncObj__raftLog
        sync = getattr(journal, "sync_if_dirty", None)
        while not self._stopping.is_set():
            try:
                if sync is not None:
                    sync()  # before commits are computed (see EncryptedJournal.defer_sync)
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
        self._fail_tick_calls()
        self._reads.fail_all("the store is not running")

    def rekey(self, new_key: bytes, timeout: float = 30.0) -> None:
        """Seal the journal and the snapshot under ``new_key`` (a data-key rotation): each file is
        rewritten whole and renamed over the old one, on the tick thread, so no entry is appended
        meanwhile; the old key keeps opening whatever a crash left under it."""
        self._not_on_tick_thread("rekey")
        new = DataCipher(new_key)

        def run(obj: SyncObj) -> None:
            journal = obj._SyncObj__raftLog
            previous = hardening.ciphers_for(str(self.raft_dir / "journal"))
            hardening.register_cipher(self.raft_dir, new, *previous)
            journal.sync_if_dirty()
            journal.rekey(new)
            hardening.reseal_snapshot(str(self.raft_dir / "snapshot"))
            hardening.register_cipher(self.raft_dir, new)
        self._on_tick_thread(run, timeout)
        log.info("raft journal and snapshot sealed under a new data key")

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

    def confirm_leadership(self, timeout: float = READ_TIMEOUT) -> None:
        """Return once this member has confirmed, after the call, that a majority still follows
        it and it has applied everything committed before (see ``store.reads``); then a read of
        the state machine is linearizable. ``StoreError`` (no_leader) otherwise."""
        obj = self._obj()
        future = self._reads.request()
        obj._SyncObj__pipeNotifier.notify()
        try:
            future.result(timeout)
        except NotLeader as e:
            raise StoreError(str(e), no_leader=True) from None
        except FutureTimeout:
            future.cancel()
            raise StoreError("a majority of managers did not confirm this leader in time", no_leader=True) from None

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
        return self._on_tick_thread(lambda obj: dict(obj.getStatus()))

    def members(self) -> list[str]:
        """The Raft membership as this member sees it (itself included), sorted."""
        return self._on_tick_thread(
            lambda obj: sorted({self.node_id, *(str(n.id) for n in obj.otherNodes)}))

    def is_connected(self, node_id: str) -> bool:
        """Whether this member has a live stream to ``node_id`` (always True for itself)."""
        if node_id == self.node_id:
            return True
        return self._network is not None and self._network.is_connected(node_id)

    # -- the tick thread -------------------------------------------------------------------------
    def _on_tick_thread(self, fn: Callable[[SyncObj], T], timeout: float = 5.0) -> T:
        """Run ``fn(syncobj)`` on the tick thread, where pysyncobj's state may be touched."""
        obj = self._obj()
        if threading.current_thread() is self._tick_thread:
            return fn(obj)  # called from a pysyncobj callback: already on the tick thread
        future: Future[T] = Future()
        self._tick_calls.put((fn, future))
        obj._SyncObj__pipeNotifier.notify()
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise StoreError("the raft tick thread did not answer in time") from None
        except CancelledError:
            raise StoreError("the store is not running") from None

    def _run_tick_calls(self) -> None:
        obj = self._syncobj
        while True:
            try:
                fn, future = self._tick_calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(obj))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)

    def _fail_tick_calls(self) -> None:
        while True:
            try:
                _, future = self._tick_calls.get_nowait()
            except queue.Empty:
                return
            future.cancel()

    # -- membership ------------------------------------------------------------------------------
    def add_member(self, node_id: str, timeout: float = 10.0) -> None:
        """Add ``node_id`` to the Raft membership; on the leader only, one change at a time.

        Returns once the change is committed. The new member should then be started with the
        member list (``members()``). Raises ``StoreError`` if this member is not the leader,
        ``node_id`` is already a member, or the change did not commit within ``timeout``.
        """
        self._change_membership("add", node_id, timeout)

    def remove_member(self, node_id: str, timeout: float = 10.0) -> None:
        """Remove ``node_id`` from the Raft membership; on the leader only, one change at a time.

        The leader cannot remove itself (a member never sees the commit of its own removal):
        for ``node_id == self.node_id`` this raises ``StoreError`` without changing anything;
        call ``transfer_leadership()`` and have the new leader remove this member.
        """
        if node_id == self.node_id:
            raise StoreError(f"{node_id} is the leader and cannot remove itself from the raft cluster; "
                             "transfer leadership first and remove it from the new leader")
        self._change_membership("rem", node_id, timeout)

    def _not_on_tick_thread(self, what: str) -> None:
        if threading.current_thread() is self._tick_thread:
            raise StoreError(f"{what} waits for the raft tick thread and cannot run on it")

    def _change_membership(self, kind: str, node_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        what = "add" if kind == "add" else "remove"
        self._not_on_tick_thread(f"{what} member")
        if not self._membership_lock.acquire(timeout=timeout):
            raise StoreError(f"cannot {what} {node_id}: another membership change is in progress")
        try:
            while True:
                done = threading.Event()
                outcome: list[int] = []

                def callback(result: Any, error: int) -> None:
                    outcome.append(error)
                    done.set()

                def submit(obj: SyncObj) -> str | None:
                    if obj._SyncObj__raftState != _LEADER:
                        return "this manager is not the raft leader"
                    present = node_id == self.node_id or any(str(n.id) == node_id for n in obj.otherNodes)
                    if kind == "add" and present:
                        return f"{node_id} is already a member of the raft cluster"
                    if kind == "rem" and not present:
                        return f"{node_id} is not a member of the raft cluster"
                    if kind == "add":
                        obj.addNodeToCluster(Node(node_id), callback=callback)
                    else:
                        obj.removeNodeFromCluster(Node(node_id), callback=callback)
                    return None

                refused = self._on_tick_thread(submit, max(0.1, deadline - time.monotonic()))
                if refused is not None:
                    raise StoreError(f"cannot {what} {node_id}: {refused}",
                                     no_leader="not the raft leader" in refused)
                if not done.wait(max(0.0, deadline - time.monotonic())):
                    raise StoreError(f"cannot {what} {node_id}: the change did not commit within {timeout:.0f}s")
                error = outcome[0]
                if error == FAIL_REASON.SUCCESS:
                    log.info("raft: %s %s", "added" if kind == "add" else "removed", node_id)
                    return
                # REQUEST_DENIED right after an election (the leader's no-op is not applied yet)
                # or while a previous change is still being applied: retry until the deadline.
                if error != FAIL_REASON.REQUEST_DENIED or time.monotonic() >= deadline:
                    raise StoreError(f"cannot {what} {node_id}: {_FAIL_TEXT.get(error, f'error {error}')}",
                                     no_leader=error in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER))
                time.sleep(0.02)
        finally:
            self._membership_lock.release()

    def transfer_leadership(self, timeout: float = 5.0) -> bool:
        """Hand leadership to the most up-to-date connected member.

        True once another member is the leader (also when this one was not the leader to begin
        with); False if that did not happen within ``timeout``.
        """
        self._not_on_tick_thread("transfer_leadership")
        deadline = time.monotonic() + timeout
        last_try = 0.0
        while True:
            leader = self.leader_id()
            if leader is not None and leader != self.node_id:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            if self.is_leader() and now - last_try >= 0.25:
                last_try = now
                # Denied while no follower has caught up yet; a later attempt may succeed.
                self._on_tick_thread(lambda obj: obj.transferLeadership(), max(0.1, deadline - now))
            time.sleep(0.01)

    def _state_changed(self, old: int, new: int) -> None:
        # On the tick thread. Only a leader may defer its fsync; anyone else acknowledges
        # entries right after appending them, so those must be on disk first.
        journal = self._syncobj._SyncObj__raftLog if self._syncobj is not None else None
        if journal is not None and hasattr(journal, "defer_sync"):
            if new != 2:
                journal.sync_if_dirty()
            journal.defer_sync = new == 2
        if self._on_leader_change is not None:
            self._on_leader_change(new == 2)

    # -- writes ------------------------------------------------------------------------------
    def propose(self, op: bytes, timeout: float = 5.0, max_bytes: int | None = MAX_OP_BYTES) -> Result:
        """Replicate ``op`` and return the state machine's result once it is committed here.

        ``max_bytes`` None lifts the size limit, for the one write that carries a whole state
        (force-new-cluster); pysyncobj ships a large entry to followers in small chunks.
        """
        if max_bytes is not None and len(op) > max_bytes:
            raise OpTooLarge(f"the change takes {len(op)} bytes, more than the {max_bytes} byte limit of one write")
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
        sealed = hardening.seal_snapshot(filename, json.dumps(doc).encode())
        fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(sealed)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(Path(filename).parent)

    def _read_snapshot(self, filename: str) -> tuple[Any, Any, Any]:
        doc = json.loads(hardening.open_snapshot(filename, Path(filename).read_bytes()))
        if doc.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format in {filename}")
        self.machine.load(doc["state"])
        members = {Node(m) for m in doc["members"]}
        return _entry_from_json(doc["last"]), _entry_from_json(doc["before_last"]), members
