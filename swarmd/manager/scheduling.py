"""The scheduler on the leader (DESIGN §10): tasks waiting for a node get one.

A leader component (``WatchLoop``) that reacts to store events: a task that waits (new or
pending), a node that changed (it may take tasks now, or no longer), a task that stopped or
went away while tasks wait (it may have freed what they need). A pass reads the nodes and the
tasks that hold or want a place, asks ``scheduler.schedule`` and writes its decisions as one
batch: assignments, and for a task that fits nowhere, status pending with Docker's
explanation (``no suitable node (...)``), which ``service ps`` shows. Each decision names the
task's and the chosen node's versions: one that changed meanwhile is refused by the store and
decided again in the next pass. Failures of a service's tasks on a node are remembered for
this leader's term (``spread.FailureHistory``), so a task that keeps failing on one node is
tried elsewhere first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from swarmd.manager import planwriter
from swarmd.manager.leadership import Retry, WatchLoop
from swarmd.manager.scheduler import scheduler, spread
from swarmd.store import taskstate
from swarmd.store.objects import Service, Task
from swarmd.store.state import State
from swarmd.store.watch import Event
from swarmd.timeutil import now_rfc3339

if TYPE_CHECKING:
    from swarmd.manager.manager import Manager

log = logging.getLogger(__name__)

_WAITING = taskstate.RANK[taskstate.PENDING]
MAX_COUNTED = 100_000


def _relevant(event: Event) -> bool:
    return event.table in ("tasks", "nodes")


def waits(task: Mapping[str, Any]) -> bool:
    """Not placed yet (or placed on its node, a global task, but not confirmed), and wanted."""
    return taskstate.rank(task["status"]["state"]) <= _WAITING


class Scheduler(WatchLoop):
    name = "scheduler"

    def __init__(self, manager: Manager) -> None:
        super().__init__(manager.machine.events, _relevant)
        self._manager = manager
        self._waiting = 0   # tasks left unplaced by the last pass
        self._failures = spread.FailureHistory()
        self._counted: set[str] = set()   # failed tasks already recorded

    def start(self) -> None:
        self._failures = spread.FailureHistory()
        self._counted = set()
        super().start()

    def step(self, full: bool, events: list[Event]) -> float | None:
        now_ns = time.time_ns()
        self._record_failures(events, now_ns)
        if not full and not self._worth_a_pass(events):
            return None
        nodes, tasks, services = self._manager.machine.read(_read)
        if not any(waits(t) for t in tasks):
            self._waiting = 0
            return None
        self._failures.forget_before(now_ns)
        plan = scheduler.schedule(nodes, tasks, services, now_rfc3339(), now_ns, self._failures)
        self._waiting = len(plan.unschedulable)
        if plan.updates and not planwriter.write(self._manager, [("update_tasks", {"updates": plan.updates,
                                                                                   "now": now_rfc3339()})],
                                                 self.name):
            raise Retry("the scheduler's write did not commit")
        return None

    def _record_failures(self, events: list[Event], now_ns: int) -> None:
        """A task that failed or was rejected on its node: that node comes last for its
        service's next tasks once it happened ``spread.MAX_FAILURES`` times (swarmkit)."""
        for event in events:
            task = event.object
            if event.table == "tasks" and event.action == "update" and task["node_id"] and \
                    task["status"]["state"] in (taskstate.FAILED, taskstate.REJECTED) and \
                    task["id"] not in self._counted:
                if len(self._counted) >= MAX_COUNTED:
                    self._counted.clear()
                self._counted.add(task["id"])   # a task changed again after it failed counts once
                self._failures.record(task["node_id"], task["service_id"], task["spec_version"], now_ns)

    def _worth_a_pass(self, events: list[Event]) -> bool:
        for event in events:
            if event.table == "nodes":
                return True
            if event.action != "remove" and waits(event.object):
                return True
            if self._waiting and (event.action == "remove" or taskstate.is_terminal(event.object["status"]["state"])
                                  or not taskstate.is_active_desired(event.object["desired_state"])):
                return True
        return False


def _read(state: State) -> tuple[list[Any], list[Task], dict[str, Service]]:
    """The nodes, the tasks that hold or want a place (not past running), the services."""
    tasks = [t for t in state["tasks"].values() if not taskstate.is_terminal(t["status"]["state"])]
    return list(state["nodes"].values()), tasks, dict(state["services"].items())
