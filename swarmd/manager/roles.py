"""Role reconciliation on the leader: the Raft membership follows each node's desired role.

``node demote`` stores the desired role (after Docker's quorum checks) and this component does
the rest, as swarmkit's role manager does: a manager whose desired role is worker is taken out
of Raft and only then loses its manager status, which is what tells the node (through its
session) to stop its store. If that manager is this leader, leadership is handed to another
manager first, and the new leader finishes the demotion. A step that fails (no quorum for the
removal right now, a leader change) is retried with a growing delay until it succeeds or the
desired role changes back; no store state is left half-changed by a failure, because the
manager status is cleared only after the removal committed.

It reacts to store events that show a demotion waiting and runs only while this manager leads
(``LeaderSupervisor``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from swarmd.errors import SwarmError
from swarmd.store.raft import StoreError
from swarmd.store.watch import Event, Watch
from swarmd.timeutil import now_rfc3339

if TYPE_CHECKING:
    from swarmd.manager.manager import Manager

log = logging.getLogger(__name__)

MIN_RETRY, MAX_RETRY = 0.2, 5.0


def _demotion_waits(event: Event) -> bool:
    return event.table == "nodes" and event.object.get("role") == "worker" and bool(event.object.get("manager"))


class RoleManager:
    name = "role manager"

    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._stopping = threading.Event()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._watch = self._manager.machine.events.subscribe(accept=_demotion_waits)
        self._thread = threading.Thread(target=self._run, name="role-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        watch = self._watch
        if watch is not None:
            watch.close()  # wakes the thread
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def _run(self) -> None:
        """A full pass at the start (and whenever the watch had to be renewed), then one for
        each batch of store events that shows a demotion waiting; failures retry with a delay."""
        delay = MIN_RETRY
        pending = True
        while not self._stopping.is_set():
            watch = self._watch
            if watch is None or watch.closed:
                if watch is not None and not watch.overflowed:
                    return  # closed by stop()
                watch = self._watch = self._manager.machine.events.subscribe(accept=_demotion_waits)
                if self._stopping.is_set():  # stop() closed the old watch meanwhile
                    watch.close()
                    return
                pending = True
            if pending:
                try:
                    pending = not self.reconcile()
                except (SwarmError, StoreError) as e:
                    log.info("role change not complete yet: %s (retrying in %.1fs)", e, delay)
                    pending = True
                except Exception:  # noqa: BLE001 - retried like any other failure
                    log.exception("role reconciliation failed (retrying in %.1fs)", delay)
                    pending = True
                delay = min(delay * 2, MAX_RETRY) if pending else MIN_RETRY
            event = watch.get(timeout=delay if pending else None)
            if event is not None:
                pending = True
                while watch.get(timeout=0) is not None:  # one pass for a burst
                    pass

    def reconcile(self) -> bool:
        """One pass; True when every manager whose desired role is worker has been demoted."""
        m = self._manager
        if not m.is_leader():
            return True  # the supervisor stops this component; nothing to do meanwhile
        pending = m.machine.read(lambda s: sorted(
            n["id"] for n in s["nodes"].values() if n["role"] == "worker" and n.get("manager")))
        if not pending:
            return True
        members = set(m.store.members())
        for node_id in pending:
            if node_id == m.node_id:
                # The leader cannot remove itself: hand over; the next leader finishes.
                log.info("handing leadership over before this manager's own demotion")
                if not m.store.transfer_leadership(timeout=3.0):
                    raise SwarmError("no other manager is ready to take over the leadership")
                return True
            if node_id in members:
                if not m.removal_keeps_quorum(node_id):
                    raise SwarmError(f"removing {node_id} from raft now would lose the quorum")
                m.store.remove_member(node_id)
            m.propose("set_node_role", id=node_id, manager_addr="", now=now_rfc3339())
            log.info("manager %s demoted", node_id)
        return True
