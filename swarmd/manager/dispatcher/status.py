"""Nodes' status changes, written to the store many at once.

Sessions and heartbeats run on the remote API's loop, which must never wait for Raft. They
queue what changed; one writer thread proposes everything queued in one go (the proposals
share Raft entries), so the thousands of Ready marks after an election become a few entries.

A node's writes are budgeted (``STATUS_WRITES``): a burst, then one per default heartbeat
period. A change the budget refuses is not queued; the node's next heartbeat tries again, so
the store still ends up right. A change equal to one already queued or being written is not
queued twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from swarmd.logs import LogLimiter
from swarmd.ratelimit import Buckets, Limit

log = logging.getLogger(__name__)

# Store writes one node's reports may cause: 10 at once (a session, a renewal, a rotation, a
# leave and a return all fit), then one per 5 s (the default heartbeat period).
STATUS_WRITES = Limit(burst=10, per_second=0.2)
MAX_TRACKED_NODES = 1 << 17
MAX_ROUND = 2048        # node writes proposed together
_MISSING = object()


class StatusWriter:
    def __init__(self, manager_of: Callable[[], Any]) -> None:
        self._manager_of = manager_of
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}   # queued, not yet proposed
        self._writing: dict[str, dict[str, Any]] = {}   # proposed, not yet committed
        self._budget = Buckets(STATUS_WRITES, MAX_TRACKED_NODES)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._warnings = LogLimiter(10, 60.0, log.warning)
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)

    def start(self) -> StatusWriter:
        self._thread.start()
        return self

    def queue(self, node_id: str, changes: dict[str, Any], budgeted: bool = True) -> bool:
        """Queue ``changes`` (fields that differ from the store) for ``node_id``; False when
        nothing new was queued (already on its way, or over the node's budget)."""
        with self._lock:
            ahead = {**self._writing.get(node_id, {}), **self._pending.get(node_id, {})}
            changes = {k: v for k, v in changes.items() if ahead.get(k, _MISSING) != v}
            if not changes:
                return False
            if budgeted and not self._budget.take(node_id, time.monotonic()):
                log.debug("status change of %s deferred: it changed too often lately", node_id)
                return False
            self._pending.setdefault(node_id, {}).update(changes)
        self._wake.set()
        return True

    def clear(self) -> None:
        """A new term: what was queued for an earlier one is not written."""
        with self._lock:
            self._pending.clear()

    def forget(self, node_id: str) -> None:
        self._budget.forget(node_id)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

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
                    self._writing.update(batch)
                try:
                    self._write(batch)
                finally:
                    with self._lock:
                        for node_id in batch:
                            self._writing.pop(node_id, None)

    def _write(self, batch: dict[str, dict[str, Any]]) -> None:
        manager = self._manager_of()
        if manager is None:
            return
        try:
            failed = manager.set_node_statuses(batch)
        except Exception as e:  # noqa: BLE001 - the writer outlives any one failure
            failed = {node_id: str(e) for node_id in batch}
        if failed:
            node_id, why = next(iter(failed.items()))
            self._warnings.warn(f"could not record the status of {len(failed)} node(s), e.g. {node_id}: {why}",
                                time.monotonic())
