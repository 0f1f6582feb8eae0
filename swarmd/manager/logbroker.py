"""The leader's log broker (swarmkit's ``manager/logbroker``): ``service logs`` meets the nodes.

A caller (``ServiceLogs``) opens a subscription for a set of tasks; the broker sends each node
that holds some of them a ``LogSubscription`` on that node's ``ListenLogSubscriptions`` stream;
the node sends the lines back on a ``PublishLogs`` stream of its own for that subscription, and
the broker hands them to the caller. Without ``follow`` the subscription ends once every node
said it is done (or is known to be unreachable: that becomes Docker's "incomplete log stream"
warning); with ``follow`` it lasts until the caller goes away.

Memory is bounded per subscription (``MAX_QUEUED_LINES``/``MAX_QUEUED_BYTES`` in flight between
the nodes and the caller): a node publishing into a full subscription waits, only on its own
stream; a reader that stays behind for ``STALL_SECONDS`` is cut. No caller ever blocks another.

Callers and the broker meet on threads (``threading``); the nodes' streams are coroutines on
the remote API's loop, reached with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.ca import ids
from swarmd.errors import SwarmError

log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 16          # open `service logs` calls at once (each holds a server thread)
MAX_QUEUED_LINES = 8192         # lines in flight per subscription
MAX_QUEUED_BYTES = 4 << 20      # bytes in flight per subscription
STALL_SECONDS = 15.0            # a reader that takes nothing for this long is cut
MAX_LISTENER_BACKLOG = 1024     # subscription messages waiting for a node's stream
MAX_TASKS = 10_000              # tasks named in one subscription
INCOMPLETE = "warning: incomplete log stream. some logs could not be retrieved for the following reasons: "


def unavailable(node_id: str) -> str:
    return f"node {node_id} is not available"


class Listener:
    """A node's open ``ListenLogSubscriptions`` stream: what the broker sends it waits here."""

    def __init__(self, node_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.node_id = node_id
        self.loop = loop
        self.queue: asyncio.Queue[spb.LogSubscription | None] = asyncio.Queue()
        self.backlog = 0  # approximate: counted on send, uncounted by the stream

    def send(self, message: spb.LogSubscription | None) -> bool:
        if self.backlog >= MAX_LISTENER_BACKLOG:
            return False
        self.backlog += 1
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)
        except RuntimeError:  # the loop is closed: so is the stream
            return False
        return True


@dataclass
class Subscription:
    id: str
    follow: bool
    tail: int
    since_ns: int
    tasks_on: dict[str, set[str]] = field(default_factory=dict)   # node ID -> its tasks here
    sent_to: dict[str, set[str]] = field(default_factory=dict)    # node ID -> tasks it was asked for
    pending: set[str] = field(default_factory=set)                # nodes not done yet (non-follow)
    problems: list[str] = field(default_factory=list)
    items: deque[spb.ServiceLogsMessage] = field(default_factory=deque)
    queued_lines: int = 0
    queued_bytes: int = 0
    taken_at: float = field(default_factory=time.monotonic)
    ended: str | None = None   # why it was cut (None: still open, or ended normally)
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def problem(self, text: str) -> None:
        if text not in self.problems and len(self.problems) < 64:
            self.problems.append(text)


class LogBroker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, Listener] = {}
        self._subs: dict[str, Subscription] = {}

    # -- the nodes' side (the remote API's loop) ------------------------------------------------
    def listen(self, listener: Listener) -> None:
        """A node's stream opened: it replaces an older one, and is sent what it still owes
        for open follow subscriptions (a node that reconnected)."""
        with self._lock:
            old = self._listeners.get(listener.node_id)
            self._listeners[listener.node_id] = listener
            subs = list(self._subs.values())
        if old is not None:
            old.send(None)
        for sub in subs:
            with sub.cond:
                owed = set()
                if sub.follow and not sub.closed:
                    owed = sub.tasks_on.get(listener.node_id, set())
                    sub.sent_to[listener.node_id] = set()
                elif listener.node_id in sub.pending and old is not None:
                    # A new stream of the same node: the old one's subscriptions may never end.
                    sub.pending.discard(listener.node_id)
                    sub.problem(unavailable(listener.node_id))
                    sub.cond.notify_all()
            if owed:
                self._ask(sub, listener.node_id, owed)

    def unlisten(self, listener: Listener) -> None:
        with self._lock:
            if self._listeners.get(listener.node_id) is not listener:
                return
            del self._listeners[listener.node_id]
            subs = list(self._subs.values())
        for sub in subs:
            with sub.cond:
                if listener.node_id in sub.pending:
                    sub.pending.discard(listener.node_id)
                    sub.problem(unavailable(listener.node_id))
                    sub.cond.notify_all()

    def publish_check(self, node_id: str, sub_id: str) -> Subscription:
        """The subscription a node publishes for; refused when it is not asked for one."""
        with self._lock:
            sub = self._subs.get(sub_id)
        if sub is None or node_id not in sub.tasks_on:
            raise SwarmError("no such log subscription for this node", grpc.StatusCode.NOT_FOUND)
        return sub

    def offer(self, sub: Subscription, node_id: str, messages: Iterable[spb.LogMessage]) -> bool | None:
        """Queue a node's lines for the reader: True when queued, False when the subscription
        is full (the node waits and offers again), None when it is gone. Lines of tasks the
        node was not asked for are dropped (a node speaks for its own tasks only)."""
        allowed = sub.tasks_on.get(node_id, set())
        kept = [m for m in messages if m.task_id in allowed]
        size = sum(len(m.data) for m in kept)
        with sub.cond:
            if sub.closed:
                return None
            if sub.queued_lines and (sub.queued_lines + len(kept) > MAX_QUEUED_LINES
                                     or sub.queued_bytes + size > MAX_QUEUED_BYTES):
                if time.monotonic() - sub.taken_at > STALL_SECONDS:
                    self._cut(sub, "the log stream was cut: its reader fell behind")
                    return None
                return False
            if kept:
                sub.items.append(spb.ServiceLogsMessage(messages=kept))
                sub.queued_lines += len(kept)
                sub.queued_bytes += size
                sub.cond.notify_all()
        return True

    def done(self, sub: Subscription, node_id: str, error: str = "") -> None:
        """A node sent all it will for this subscription (``error``: what it could not read)."""
        with sub.cond:
            sub.pending.discard(node_id)
            if error:
                sub.problem(error[:512])
            sub.cond.notify_all()

    # -- the caller's side (threads) ------------------------------------------------------------
    def subscribe(self, tasks: list[spb.LogTask], follow: bool, tail: int, since_ns: int,
                  first: spb.ServiceLogsMessage) -> Subscription:
        with self._lock:
            if len(self._subs) >= MAX_SUBSCRIPTIONS:
                raise SwarmError(f"too many log streams open (at most {MAX_SUBSCRIPTIONS}); retry later",
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)
            sub = Subscription(ids.new_id(), follow, tail, since_ns)
            self._subs[sub.id] = sub
        sub.items.append(first)
        self.extend(sub, tasks, announce=False)
        log.debug("log subscription %s opened for %d tasks", sub.id, len(tasks))
        return sub

    def extend(self, sub: Subscription, tasks: list[spb.LogTask], announce: bool = True) -> None:
        """Add tasks (new tasks of a followed service): their nodes are asked for them."""
        fresh: dict[str, set[str]] = {}
        named: list[spb.LogTask] = []
        with sub.cond:
            known = sum(len(t) for t in sub.tasks_on.values())
            for task in tasks:
                if not task.node_id or task.task_id in sub.tasks_on.get(task.node_id, set()):
                    continue
                if known >= MAX_TASKS:
                    break
                known += 1
                sub.tasks_on.setdefault(task.node_id, set()).add(task.task_id)
                fresh.setdefault(task.node_id, set()).add(task.task_id)
                named.append(task)
            if named and announce:
                sub.items.append(spb.ServiceLogsMessage(tasks=named))
                sub.cond.notify_all()
        for node_id, task_ids in fresh.items():
            self._ask(sub, node_id, task_ids)

    def _ask(self, sub: Subscription, node_id: str, task_ids: set[str]) -> None:
        with self._lock:
            listener = self._listeners.get(node_id)
        with sub.cond:
            asked = sub.sent_to.setdefault(node_id, set())
            wanted = task_ids - asked
            if not wanted or sub.closed:
                return
            message = spb.LogSubscription(id=sub.id, task_ids=sorted(wanted), follow=sub.follow,
                                          tail=sub.tail, since_ns=sub.since_ns)
            if listener is not None and listener.send(message):
                asked |= wanted
                if not sub.follow:
                    sub.pending.add(node_id)
            elif not sub.follow:
                sub.problem(unavailable(node_id))

    def take(self, sub: Subscription, timeout: float) -> list[spb.ServiceLogsMessage] | None:
        """What is queued for the reader (waiting up to ``timeout``); None once the subscription
        has ended (``finish`` says how)."""
        with sub.cond:
            if not sub.items and sub.ended is None and (sub.follow or sub.pending):
                sub.cond.wait(timeout)
            sub.taken_at = time.monotonic()
            if sub.items:
                items = list(sub.items)
                sub.items.clear()
                sub.queued_lines = sub.queued_bytes = 0
                sub.cond.notify_all()
                return items
            if sub.ended is not None or not (sub.follow or sub.pending):
                return None
            return []

    def finish(self, sub: Subscription) -> str | None:
        """The reader is done (it read the end, or went away): the nodes stop publishing it.
        Returns what cut it, or Docker's warning for the logs it could not have."""
        with self._lock:
            self._subs.pop(sub.id, None)
            listeners = {n: self._listeners.get(n) for n in sub.sent_to}
        with sub.cond:
            sub.closed = True
            sub.items.clear()
            sub.cond.notify_all()
            ended, problems = sub.ended, list(sub.problems)
        for listener in listeners.values():
            if listener is not None:
                listener.send(spb.LogSubscription(id=sub.id, close=True))
        log.debug("log subscription %s ended", sub.id)
        if ended is not None:
            return ended
        return INCOMPLETE + ", ".join(problems) if problems else None

    def reader_gone(self, sub: Subscription) -> None:
        """The caller's call ended (it went away): its reader stops waiting."""
        with sub.cond:
            self._cut(sub, "the reader went away")

    def cut_all(self, why: str) -> None:
        """Leadership lost: every subscription ends; the nodes find the new leader."""
        with self._lock:
            subs = list(self._subs.values())
            listeners = list(self._listeners.values())
        for sub in subs:
            with sub.cond:
                self._cut(sub, why)
        for listener in listeners:
            listener.send(None)

    @staticmethod
    def _cut(sub: Subscription, why: str) -> None:
        sub.ended = sub.ended or why
        sub.cond.notify_all()

    def open_subscriptions(self) -> int:
        with self._lock:
            return len(self._subs)

