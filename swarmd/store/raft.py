"""The pysyncobj wrapper: the only module that builds a SyncObj (DESIGN §5).

One ``RaftStore`` per manager. Writes are JSON ops proposed through one replicated ``apply``;
the journal and snapshot live under ``<state>/raft/`` (0700), made durable and safe to reload
by ``hardening``. Raft identity is the swarm node ID; messages to the other members travel
through a ``PeerNetwork`` (``transport``).

pysyncobj keeps its state on our tick thread without locks. Other threads only read single
attributes (leader, state) or hand work to the tick thread (``_on_tick_thread``): membership
changes, leadership transfer, member lists and status are all computed there.

Snapshots follow the cluster spec on every manager: ``snapshot_interval`` entries between two
(Docker's SnapshotInterval) and ``keep_old_snapshots`` older ones kept beside the current one
as ``snapshot-<index>`` (KeepOldSnapshots). A snapshot, journal or meta file that cannot be
read back stops ``start()`` with one line naming it: a manager never serves without the state
it acknowledged.
"""

from __future__ import annotations

import base64
import collections
import json
import queue
import re
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
from swarmd.logs import LogLimiter
from swarmd.store import hardening
from swarmd.store.crypto import DataCipher
from swarmd.store.hardening import SnapshotError
from swarmd.store.journal import JournalError, MetaNotDurable
from swarmd.store.machine import Result, State, StateMachine, encode_batch
from swarmd.store.objects import ClusterSpec
from swarmd.store.reads import NotLeader, ReadBarrier
from swarmd.store.transport import LoneTransport, PeerNetwork, transport_class

log = logging.getLogger(__name__)

T = TypeVar("T")

SNAPSHOT_FORMAT = 1
TICK_PERIOD = 0.05
# Docker's default SnapshotInterval, used until the cluster object says otherwise.
DEFAULT_SNAPSHOT_INTERVAL = 10000
OLD_SNAPSHOT = re.compile(r"snapshot-(\d+)")
# At most one storage-fault warning a minute out of the tick (it retries every tick).
TICK_WARNING_PERIOD = 60.0
# After a snapshot could not be written, the next try (the journal keeps everything meanwhile).
SNAPSHOT_RETRY = 60.0
MIN_FREE_BYTES = 4 << 20
READ_TIMEOUT = 3.0  # a leader that cannot confirm itself this long has lost its majority
# One write's limit (swarmkit's MaxTransactionBytes): keeps every Raft message well inside the
# transport's frame limit, whatever a caller packs into labels or descriptions.
MAX_OP_BYTES = 1536 << 10
MAX_BATCH_OPS = 256          # proposals in one entry
MAX_BATCH_BYTES = 1 << 20    # ... and their bytes (a larger proposal goes alone)

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


class _Proposal:
    """One write waiting for its entry to commit (``RaftStore.propose``)."""

    __slots__ = ("op", "done", "result", "error")

    def __init__(self, op: bytes) -> None:
        self.op = op
        self.done = threading.Event()
        self.result: Result = {}
        self.error = FAIL_REASON.SUCCESS

    def complete(self, result: Result | None, error: int) -> None:
        self.result, self.error = result or {}, error
        self.done.set()


class _BatchCallback:
    """Hands each proposal of a batch its own result (or the batch's failure)."""

    def __init__(self, batch: list[_Proposal]) -> None:
        self._batch = batch

    def __call__(self, result: Result | None, error: int) -> None:
        results = (result or {}).get("batch") if error == FAIL_REASON.SUCCESS else None
        if not isinstance(results, list) or len(results) != len(self._batch):
            results = None
            if error == FAIL_REASON.SUCCESS:
                error = FAIL_REASON.UNKNOWN_OUTCOME
        for n, proposal in enumerate(self._batch):
            proposal.complete(results[n] if results is not None else None, error)


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
    if not isinstance(item, list) or len(item) != 3:
        raise ValueError("a log entry is not [command, index, term]")
    return base64.b64decode(item[0], validate=True), int(item[1]), int(item[2])


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
        self._proposals: collections.deque[_Proposal] = collections.deque()
        self._conf: SyncObjConf | None = None
        self._snapshot_interval = DEFAULT_SNAPSHOT_INTERVAL
        self._keep_old_snapshots = 0
        self._snapshot_index = 0             # Raft index the current snapshot ends at (0: none)
        self._checked_snapshot: tuple[dict[str, Any], bytes] | None = None  # (doc, file) read by start()
        self.halted: str | None = None       # why this member stopped taking part, if it did
        self._tick_warnings = LogLimiter(1, TICK_WARNING_PERIOD, lambda m: log.warning("%s", m))
        self._snapshot_warnings = LogLimiter(1, TICK_WARNING_PERIOD, lambda m: log.warning("%s", m))
        machine.add_listener(self._follow_cluster_settings)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start this member; ``SnapshotError`` / ``JournalError`` (one line naming the file)
        when what is on disk cannot be read back whole."""
        self._check_snapshot()
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
            logCompactionMinEntries=max(2, self._snapshot_interval),
            logCompactionMinTime=300,
        )
        built: list[Transport] = []

        def transport(syncObj: Any, selfNode: Any, otherNodes: Any) -> Transport:  # noqa: N803
            factory = LoneTransport if self._network is None else transport_class(self._network)
            built.append(factory(syncObj, selfNode, otherNodes))
            return built[-1]

        try:
            obj = SyncObj(Node(self.node_id), [Node(p) for p in self._peers], conf,
                          consumers=[self._consumer], nodeClass=Node, transportClass=transport)
        except BaseException:
            for t in built:  # let go of the network, so a later start can attach again
                t.destroy()
            raise
        try:
            self._check_continuity(obj._SyncObj__raftLog)
        except BaseException:
            obj._doDestroy()
            raise
        self._syncobj, self._conf, self.halted = obj, conf, None
        journal = self._syncobj._SyncObj__raftLog
        if hasattr(journal, "defer_sync"):
            journal.defer_sync = True  # synced before anything vouches for it (_state_changed)
        self._syncobj.addOnTickCallback(self._submit_proposals)
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
            except MetaNotDurable:
                self._stopping.wait(TICK_PERIOD)  # reported by the journal; no vote, no campaign
            except OSError as e:
                # A full or read-only disk: one line a minute, and the next tick tries again.
                self._tick_warnings.warn(f"raft: storage fault in {self.raft_dir}: {e.strerror or e}",
                                         time.monotonic())
                self._stopping.wait(TICK_PERIOD)
            except Exception:  # noqa: BLE001 - pysyncobj's own policy: log and tick again
                log.exception("raft tick failed")
                self._stopping.wait(TICK_PERIOD)
            if self.halted is not None:
                log.error("raft: this manager stopped taking part in the raft cluster: %s", self.halted)
                return

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
        while self._proposals:  # never handed to Raft: certainly not committed
            self._proposals.popleft().complete(None, FAIL_REASON.NOT_LEADER)
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
            for snapshot in [self.raft_dir / "snapshot", *self._old_snapshots()]:
                hardening.reseal_snapshot(str(snapshot))
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

    def applied_own_term(self) -> bool:
        """Whether this leader has applied its term's first entry, and so everything committed
        before it became leader (a read of its state then misses no acknowledged write, if it
        still leads: ``confirm_leadership`` proves that)."""
        obj = self._syncobj
        if obj is None:
            return False
        noop = obj._SyncObj__noopIDx
        return noop is not None and obj._SyncObj__raftLastApplied >= noop

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
        if self.halted is not None:
            raise StoreError(f"this manager stopped taking part in the raft cluster: {self.halted}")
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
        # On the tick thread. Every member defers its fsync (see EncryptedJournal.defer_sync): a
        # leader syncs before it counts itself towards a commit (the tick loop), a follower
        # before it acknowledges entries or asks for votes (the transport, before it sends).
        journal = self._syncobj._SyncObj__raftLog if self._syncobj is not None else None
        if journal is not None and hasattr(journal, "defer_sync"):
            journal.sync_if_dirty()
            journal.defer_sync = True
        if self._on_leader_change is not None:
            self._on_leader_change(new == 2)

    # -- writes ------------------------------------------------------------------------------
    def propose(self, op: bytes, timeout: float = 5.0, max_bytes: int | None = MAX_OP_BYTES) -> Result:
        """Replicate ``op`` and return the state machine's result once it is committed here.

        Proposals made while earlier ones are being handed to Raft share one entry (group
        commit: one append, one replication round and one fsync per member for all of them);
        a lone proposal goes alone, with no added wait. ``max_bytes`` None lifts the size
        limit, for the one write that carries a whole state (force-new-cluster); pysyncobj
        ships a large entry to followers in small chunks.
        """
        outcome = self.propose_many([op], timeout, max_bytes)[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def propose_many(self, ops: list[bytes], timeout: float = 5.0,
                     max_bytes: int | None = MAX_OP_BYTES) -> list[Result | StoreError]:
        """Replicate several independent ops at once (they share entries, up to the batch
        limits) and return each one's result or error, in order."""
        for op in ops:
            if max_bytes is not None and len(op) > max_bytes:
                raise OpTooLarge(f"the change takes {len(op)} bytes, more than the {max_bytes} byte limit of one write")
        self._check_disk()
        obj = self._obj()
        proposals = [_Proposal(op) for op in ops]
        self._proposals.extend(proposals)
        obj._SyncObj__pipeNotifier.notify()  # the tick thread hands them to Raft (_submit_proposals)
        deadline = time.monotonic() + timeout
        outcomes: list[Result | StoreError] = []
        for proposal in proposals:
            if not proposal.done.wait(max(0.0, deadline - time.monotonic())):
                outcomes.append(StoreError("no leader", no_leader=True) if obj._getLeader() is None
                                else StoreError("timed out waiting for the write to commit"))
                continue
            error = proposal.error
            if error != FAIL_REASON.SUCCESS:
                outcomes.append(StoreError(_FAIL_TEXT.get(error, f"write failed ({error})"),
                                           no_leader=error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER)))
            else:
                outcomes.append(proposal.result)
        return outcomes

    def _submit_proposals(self) -> None:
        """On the tick thread: every waiting proposal into as few entries as the limits allow."""
        submitted = False
        while self._proposals:
            batch: list[_Proposal] = []
            size = 0
            while self._proposals and len(batch) < MAX_BATCH_OPS:
                nxt = self._proposals[0]
                if batch and size + len(nxt.op) > MAX_BATCH_BYTES:
                    break
                batch.append(self._proposals.popleft())
                size += len(nxt.op)
            if len(batch) == 1:
                self._consumer.apply(batch[0].op, callback=batch[0].complete)
            else:
                self._consumer.apply(encode_batch([p.op for p in batch]), callback=_BatchCallback(batch))
            submitted = True
        if submitted and self._syncobj is not None:
            self._syncobj._SyncObj__pipeNotifier.notify()  # taken from pysyncobj's queue at once

    def _check_disk(self) -> None:
        st = os.statvfs(self.raft_dir)
        if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
            raise StoreError(f"no space left on device for the raft journal in {self.raft_dir}")

    # -- snapshots (JSON, never pickle) ----------------------------------------------------------
    def _follow_cluster_settings(self) -> None:
        """A store listener (on the tick thread, where pysyncobj reads its conf each tick; or in
        ``start()`` before there is one): the snapshot settings of the cluster spec."""
        def settings(state: State) -> tuple[int, int]:
            cluster = state["cluster"]
            spec: ClusterSpec = (cluster.get("spec") or {}) if cluster else {}
            return (int(spec.get("snapshot_interval") or DEFAULT_SNAPSHOT_INTERVAL),
                    int(spec.get("keep_old_snapshots") or 0))
        interval, keep = self.machine.read(settings)
        if (interval, keep) == (self._snapshot_interval, self._keep_old_snapshots):
            return
        self._snapshot_interval, self._keep_old_snapshots = interval, keep
        if self._conf is not None:
            self._conf.logCompactionMinEntries = max(2, interval)
        log.debug("raft: a snapshot every %d entries, %d old ones kept", interval, keep)

    def _check_snapshot(self) -> None:
        """Read and check the snapshot before pysyncobj does: pysyncobj logs a failure to load
        it and goes on with the journal alone, i.e. without the state the snapshot held."""
        path = self.raft_dir / "snapshot"
        self._checked_snapshot = None
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            self._snapshot_index = 0
            return
        doc = self._decode_snapshot(str(path), blob)
        self._checked_snapshot = doc, blob
        self._snapshot_index = int(doc["last"][1])

    @staticmethod
    def _decode_snapshot(filename: str, blob: bytes) -> dict[str, Any]:
        """The snapshot's document, or ``SnapshotError`` naming the file and what is wrong."""
        clear = hardening.open_snapshot(filename, blob)
        try:
            doc = json.loads(clear)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("format") != SNAPSHOT_FORMAT:
                raise SnapshotError(f"unsupported snapshot format in {filename}")
            if not isinstance(doc.get("state"), dict) or not isinstance(doc.get("members"), list):
                raise ValueError("no state or members")
            for key in ("last", "before_last"):
                _entry_from_json(doc[key])
            for member in doc["members"]:
                if not isinstance(member, str):
                    raise ValueError("a member is not a node ID")
        except SnapshotError:
            raise
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise SnapshotError(f"raft snapshot {filename} is damaged: {e}") from None
        return doc

    def _check_continuity(self, journal: Any) -> None:
        """The journal must carry on where the snapshot ends and reach the saved commit index:
        otherwise acknowledged entries are missing (a snapshot or journal removed or truncated)."""
        if not len(journal):
            return
        first, last = int(journal[0][1]), int(journal[-1][1])
        path = self.raft_dir / "journal"
        if first > self._snapshot_index + 1:
            where = (f"the snapshot ends at index {self._snapshot_index}" if self._snapshot_index
                     else "there is no snapshot")
            raise JournalError(f"raft journal {path} starts at index {first} but {where}: entries are missing")
        commit = int(journal.getRaftCommitIndex())
        if max(last, self._snapshot_index) < commit:
            raise JournalError(f"raft journal {path} ends at index {max(last, self._snapshot_index)} but index "
                               f"{commit} was committed: entries are missing")

    def _old_snapshots(self) -> list[Path]:
        """The snapshots kept beside the current one, oldest first."""
        found = []
        for path in self.raft_dir.iterdir():
            match = OLD_SNAPSHOT.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def _keep_current_snapshot(self) -> None:
        """Before a new snapshot replaces the current one: keep the current one (a hard link,
        no copy) if the spec asks for old ones, and drop those beyond the count."""
        current = self.raft_dir / "snapshot"
        if self._keep_old_snapshots and self._snapshot_index and current.exists():
            kept = self.raft_dir / f"snapshot-{self._snapshot_index}"
            if not kept.exists():
                os.link(current, kept)
        old = self._old_snapshots()
        for path in old[:max(0, len(old) - self._keep_old_snapshots)]:
            path.unlink(missing_ok=True)
        fsync_dir(self.raft_dir)

    def _write_snapshot(self, filename: str, data: tuple[Any, Any, Any]) -> None:
        last, before_last, members = data
        doc = {
            "format": SNAPSHOT_FORMAT,
            "state": self.machine.snapshot_doc(),
            "last": _entry_to_json(last),
            "before_last": _entry_to_json(before_last),
            "members": sorted(str(n.id) for n in members),
        }
        sealed = hardening.seal_snapshot(filename, json.dumps(doc).encode())
        try:
            self._keep_current_snapshot()
            fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(sealed)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(Path(filename).parent)
        except OSError as e:
            Path(filename).unlink(missing_ok=True)
            if self._syncobj is not None:
                self._syncobj.compaction_paused_until = time.monotonic() + SNAPSHOT_RETRY
            self._snapshot_warnings.warn(
                f"raft: cannot write a snapshot in {self.raft_dir}: {e.strerror or e}; "
                f"the journal keeps every entry, next try in {SNAPSHOT_RETRY:.0f}s", time.monotonic())
            raise
        self._snapshot_index = int(last[1])  # pysyncobj renames it over the current one next

    def _read_snapshot(self, filename: str) -> tuple[Any, Any, Any]:
        """pysyncobj's deserializer: at start the snapshot ``start()`` checked; later one sent by
        the leader. One that cannot be loaded then halts this member: it must not vote or serve
        with a state it does not have (repair: docs/operations.md, "A damaged member")."""
        checked, self._checked_snapshot = self._checked_snapshot, None
        try:
            blob = Path(filename).read_bytes()
            if checked is not None and checked[1] == blob:
                doc = checked[0]
            else:
                doc = self._decode_snapshot(filename, blob)
        except (OSError, SnapshotError) as e:
            self.halted = str(e)
            raise
        self.machine.load(doc["state"])
        self._snapshot_index = int(doc["last"][1])
        members = {Node(m) for m in doc["members"]}
        return _entry_from_json(doc["last"]), _entry_from_json(doc["before_last"]), members
