"""Nodes' task status reports, written to the store many at once.

``UpdateTaskStatus`` runs on the remote API's loop, which must never wait for Raft, and a node
that starts fifty tasks reports each of them several times within a second. Reports are queued
by task, the latest one per task kept (never one that would move its state back), and one writer
thread proposes everything queued in one go: one ``report_task_status`` op per node, all of them
in one ``propose_many`` (they share Raft entries). Unlike node status (``status``), a report is
answered only once its write committed, so a node whose report was lost to a leader change or a
failed write knows to send it again; a report the store refuses because it lost a race (the task
is gone, or its state is already later) is done, not failed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from swarmd.logs import LogLimiter
from swarmd.store import taskstate
from swarmd.store.machine import encode_op
from swarmd.store.services import MAX_TASKS_PER_OP
from swarmd.timeutil import now_rfc3339

log = logging.getLogger(__name__)

MAX_ROUND = 4096           # task reports proposed together
MAX_PENDING = 1 << 17      # reports queued at once, over all nodes: beyond it a report is refused


class Ticket:
    """One request's reports: resolved on its loop once every one of them is written (or not)."""

    __slots__ = ("future", "loop", "remaining", "error", "_lock")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self._lock = threading.Lock()  # the writer and a new term's clear() may both settle reports
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = count
        self.error: str | None = None

    def _settle(self) -> None:
        if not self.future.done():
            if self.error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(RuntimeError(self.error))

    def done_one(self, error: str | None) -> None:
        """From the writer thread (or a new term's ``clear``)."""
        with self._lock:
            if error is not None and self.error is None:
                self.error = error
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            try:
                self.loop.call_soon_threadsafe(self._settle)
            except RuntimeError:  # the loop is closed: nobody waits
                pass


class _Report:
    __slots__ = ("node_id", "status", "tickets")

    def __init__(self, node_id: str, status: dict[str, Any], tickets: list[Ticket]) -> None:
        self.node_id = node_id
        self.status = status
        self.tickets = tickets


class TaskStatusWriter:
    def __init__(self, manager_of: Callable[[], Any]) -> None:
        self._manager_of = manager_of
        self._lock = threading.Lock()
        self._pending: dict[str, _Report] = {}    # task ID -> its latest report, not yet proposed
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._warnings = LogLimiter(10, 60.0, log.warning)
        self._thread = threading.Thread(target=self._run, name="task-status-writer", daemon=True)
        self._started = False

    def start(self) -> TaskStatusWriter:
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()
        return self

    def queue(self, node_id: str, reports: dict[str, dict[str, Any]], ticket: Ticket) -> bool:
        """Queue a node's reports (task ID -> status); False when too many are queued already."""
        with self._lock:
            if len(self._pending) + len(reports) > MAX_PENDING:
                return False
            for task_id, status in reports.items():
                ahead = self._pending.get(task_id)
                if ahead is None:
                    self._pending[task_id] = _Report(node_id, status, [ticket])
                    continue
                # Coalesced: the later state wins; the same state, the later report.
                if not taskstate.moves_back(ahead.status["state"], status["state"]):
                    ahead.status = status
                ahead.tickets.append(ticket)
        self._wake.set()
        return True

    def clear(self) -> None:
        """A new term: what was queued is not written; its callers are told so and send again."""
        with self._lock:
            dropped, self._pending = self._pending, {}
        for report in dropped.values():
            for ticket in report.tickets:
                ticket.done_one("the leadership changed before the report was written")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.clear()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            while not self._stop.is_set():
                with self._lock:
                    if not self._pending:
                        break
                    ids = list(self._pending)[:MAX_ROUND]
                    batch = {i: self._pending.pop(i) for i in ids}
                failed = self._write(batch)
                for task_id, report in batch.items():
                    error = failed.get(report.node_id)
                    for ticket in report.tickets:
                        ticket.done_one(error)

    def _write(self, batch: dict[str, _Report]) -> dict[str, str]:
        """Propose the batch; why each node's write failed, by node ID."""
        manager = self._manager_of()
        by_node: dict[str, list[dict[str, Any]]] = {}
        for task_id, report in batch.items():
            by_node.setdefault(report.node_id, []).append({"id": task_id, "status": report.status})
        if manager is None:
            return {node_id: "this node is no longer a manager" for node_id in by_node}
        now = now_rfc3339()
        names: list[str] = []
        ops: list[bytes] = []
        for node_id, updates in by_node.items():
            for start in range(0, len(updates), MAX_TASKS_PER_OP):
                names.append(node_id)
                ops.append(encode_op("report_task_status", node_id=node_id, now=now,
                                     updates=updates[start:start + MAX_TASKS_PER_OP]))
        try:
            outcomes: list[Any] = manager.store.propose_many(ops)
        except Exception as e:  # noqa: BLE001 - the writer outlives any one failure
            outcomes = [e] * len(ops)
        failed: dict[str, str] = {}
        for node_id, outcome in zip(names, outcomes):
            if isinstance(outcome, Exception):
                failed[node_id] = str(outcome)
            elif not outcome.get("ok"):
                failed[node_id] = str(outcome.get("message"))
            elif outcome.get("refused"):
                log.debug("reports of %s refused: %s", node_id, outcome["refused"])
        if failed:
            node_id, why = next(iter(failed.items()))
            self._warnings.warn(f"could not record the task reports of {len(failed)} node(s), e.g. {node_id}: {why}",
                                time.monotonic())
        return failed
