"""The scheduler on the leader (DESIGN §10): tasks waiting for a node get one.

A leader component (``WatchLoop``) that reacts to store events: a task that waits (new or
pending), a node that changed (it may take tasks now, or no longer), a task that stopped or
went away while tasks wait (it may have freed what they need). A pass reads the nodes and the
tasks that hold or want a place, asks ``scheduler.schedule`` and writes its decisions as one
batch: assignments, and for a task that fits nowhere, status pending with Docker's
explanation (``no suitable node (...)``), which ``service ps`` shows. Each decision names the
task's and the chosen node's versions: one that changed meanwhile is refused by the store and
decided again in the next pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from swarmd.manager import planwriter
from swarmd.manager.leadership import Retry, WatchLoop
from swarmd.manager.scheduler import scheduler
from swarmd.store import taskstate
from swarmd.store.objects import Service, Task
from swarmd.store.state import State
from swarmd.store.watch import Event
from swarmd.timeutil import now_rfc3339

if TYPE_CHECKING:
    from swarmd.manager.manager import Manager

log = logging.getLogger(__name__)

_WAITING = taskstate.RANK[taskstate.PENDING]


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

    def step(self, full: bool, events: list[Event]) -> float | None:
        if not full and not self._worth_a_pass(events):
            return None
        nodes, tasks, services = self._manager.machine.read(_read)
        if not any(waits(t) for t in tasks):
            self._waiting = 0
            return None
        plan = scheduler.schedule(nodes, tasks, services, now_rfc3339(), time.time_ns())
        self._waiting = len(plan.unschedulable)
        if plan.updates and not planwriter.write(self._manager, [("update_tasks", {"updates": plan.updates,
                                                                                   "now": now_rfc3339()})],
                                                 self.name):
            raise Retry("the scheduler's write did not commit")
        return None

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
