"""Linearizable reads: Raft's ReadIndex, confirmed by a probe round (DESIGN §5).

A leader cut off in a minority keeps believing it leads until its fallback timeout, so "this
member is the leader" is not enough to answer a read: the majority may have elected another
leader and committed writes meanwhile. Before a read is answered, the leader therefore

1. waits until it has committed an entry of its own term (its no-op), so that its commit index
   covers everything any earlier leader committed;
2. takes its commit index as the read index and sends every other member a ``read_probe`` that
   names its term and a round number, on the same ordered stream as its appends;
3. waits for ``read_ack``s of that round from enough members to make a majority with itself: a
   member acks only while its own term is the leader's and it follows the sender, so a leader of
   a later term can only have been elected after the read arrived;
4. waits until it has applied the read index, then lets the read run on its state.

Reads that arrive while a round is out wait for the next one (started after they arrived);
all reads waiting for a round share it, so a burst of reads costs one probe per member.

Everything here runs on the Raft tick thread, where pysyncobj's state may be read; other
threads only queue a request and wait for its future.
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PROBE, ACK = "read_probe", "read_ack"
_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER


class NotLeader(Exception):
    """This member cannot confirm it leads: the read must be refused (or sent elsewhere)."""


@dataclass
class _Round:
    term: int
    read_index: int


class ReadBarrier:
    """The leader's side and the follower's side of the probe rounds, for one SyncObj."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[Future[None]] = queue.SimpleQueue()
        self._waiting: list[tuple[Future[None], int]] = []  # (read, the round it needs)
        self._rounds: dict[int, _Round] = {}
        self._sent = 0                    # the last round sent
        self._acked: dict[str, tuple[int, int]] = {}  # member -> (term, highest round acked)
        self._term = -1

    # -- any thread ------------------------------------------------------------------------------
    def request(self) -> Future[None]:
        """A read that may run once the future is done (``NotLeader`` if it may not)."""
        future: Future[None] = Future()
        self._requests.put(future)
        return future

    # -- tick thread -----------------------------------------------------------------------------
    def on_message(self, obj: Any, send: Any, peer: str, node: Any, message: dict[str, Any]) -> None:
        """A probe or an ack from ``peer``; ``send(node, message)`` answers on the same stream."""
        term = obj._SyncObj__raftCurrentTerm
        if message["type"] == PROBE:
            leader = obj._SyncObj__raftLeader
            if message["term"] == term and leader is not None and str(leader.id) == peer:
                send(node, {"type": ACK, "term": term, "round": message["round"]})
        elif message["type"] == ACK and message["term"] == term:
            _, best = self._acked.get(peer, (term, 0))
            self._acked[peer] = (term, max(best, int(message["round"])))

    def tick(self, obj: Any, send: Any) -> None:
        """Start a round when a read needs one, and release the reads whose round is confirmed."""
        while True:
            try:
                future = self._requests.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                self._waiting.append((future, self._sent + 1))
        term = obj._SyncObj__raftCurrentTerm
        if term != self._term:  # a new term: earlier rounds and acks prove nothing now
            self._term, self._rounds, self._acked = term, {}, {}
        if obj._SyncObj__raftState != _LEADER:
            self.fail_all("this manager is not the raft leader")
            return
        if not self._waiting:
            return
        if obj._SyncObj__raftCommitIndex < (obj._SyncObj__noopIDx or 0):
            return  # the no-op of this term is not committed: the commit index may lag
        if max(need for _, need in self._waiting) > self._sent:
            self._sent += 1
            self._rounds[self._sent] = _Round(term, obj._SyncObj__raftCommitIndex)
            for node in obj._SyncObj__otherNodes:
                send(node, {"type": PROBE, "term": term, "round": self._sent})
        confirmed = self._confirmed(obj, term)
        applied = obj._SyncObj__raftLastApplied
        still: list[tuple[Future[None], int]] = []
        for future, need in self._waiting:
            done = need <= confirmed and self._rounds[need].read_index <= applied
            if done:
                future.set_result(None)
            else:
                still.append((future, need))
        self._waiting = still
        for old in [r for r in self._rounds if r < min((n for _, n in still), default=self._sent)]:
            del self._rounds[old]

    def _confirmed(self, obj: Any, term: int) -> int:
        """The highest round a majority (this member included) has acked in ``term``."""
        members = [str(n.id) for n in obj._SyncObj__otherNodes]
        rounds = sorted((r for t, r in (self._acked.get(m, (term, 0)) for m in members) if t == term),
                        reverse=True)
        needed = (len(members) + 1) // 2  # other members that, with this one, are a majority
        if needed == 0:
            return self._sent
        return rounds[needed - 1] if len(rounds) >= needed else 0

    def fail_all(self, why: str) -> None:
        waiting, self._waiting = self._waiting, []
        for future, _ in waiting:
            future.set_exception(NotLeader(why))
        while True:
            try:
                future = self._requests.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(NotLeader(why))
