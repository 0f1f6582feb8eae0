"""Place a batch of tasks on nodes: swarmkit's scheduler tick, as a function over plain data.

``schedule(nodes, tasks, services, now)`` reads the store's objects and returns a ``Plan``:
which task goes where, which cannot go anywhere and why, and the ``update_tasks`` items that
write it (one entry for the whole batch; each item names the task version it was decided on,
so a task changed meanwhile is refused, not overwritten).

What swarmkit does, in its order:

1. Tasks created for a node (a global service's) are only checked against that node: the
   task is assigned ("scheduler confirmed task can run on preassigned node") or stays pending
   with the pipeline's explanation.
2. The other unassigned tasks are grouped by service and spec version (a group shares its
   spec, hence its filters). For a group of n tasks the n best fitting nodes are taken, best
   first (``spread.node_key``), and filled: a node gets tasks until the next one is better,
   then, once every node was visited, one task per node in turn, each node checked again
   before it gets another (its resources or the per-node limit may be used up).
3. What remains is unschedulable: ``no suitable node (<explanation>)``.

The tasks the scheduler looks at are those between new and running (this store has no
network allocator: new tasks are scheduled directly; one that cannot be placed becomes
pending). Tasks assigned to a node count there with their reservations. Unassigned tasks
whose desired state is past running will never run: they are moved to shutdown.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmd.manager.scheduler import spread
from swarmd.manager.scheduler.filters import NodeInfo, Pipeline
from swarmd.store import taskstate
from swarmd.store.objects import Service, Task, TaskStatus

ASSIGNED_MESSAGE = "scheduler assigned task to node"
CONFIRMED_MESSAGE = "scheduler confirmed task can run on preassigned node"
PENDING_MESSAGE = "pending task scheduling"   # swarmkit's allocator's, for a task it has not placed


@dataclass(frozen=True)
class _Worst:
    """A heap entry that sorts the worst node first."""
    key: spread.Key
    info: NodeInfo

    def __lt__(self, other: _Worst) -> bool:
        return self.key > other.key


@dataclass
class Plan:
    assigned: dict[str, str] = field(default_factory=dict)       # task ID -> node ID
    unschedulable: dict[str, str] = field(default_factory=dict)  # task ID -> why
    shutdown: list[str] = field(default_factory=list)            # unassigned, will never run
    updates: list[dict[str, Any]] = field(default_factory=list)  # update_tasks items


def schedule(nodes: Iterable[Mapping[str, Any]], tasks: Iterable[Task], services: Mapping[str, Service],
             now: str, now_ns: int = 0, failures: spread.FailureHistory | None = None) -> Plan:
    """The decisions for every task waiting to be placed (see the module docstring)."""
    return _Scheduler(nodes, tasks, services, now, now_ns, failures).run()


class _Scheduler:
    def __init__(self, nodes: Iterable[Mapping[str, Any]], tasks: Iterable[Task], services: Mapping[str, Service],
                 now: str, now_ns: int, failures: spread.FailureHistory | None) -> None:
        self.infos = {str(n["id"]): NodeInfo.of(n) for n in nodes}
        self.services = services
        self.now, self.now_ns, self.failures = now, now_ns, failures
        self.pipeline = Pipeline()
        self.plan = Plan()
        self.unassigned: list[Task] = []
        self.preassigned: list[Task] = []
        for task in sorted(tasks, key=lambda t: t["id"]):
            self._sort_in(task)

    def _sort_in(self, task: Task) -> None:
        """swarmkit's setupTasksList: what waits, what counts on its node, what is ignored."""
        rank = taskstate.rank(task["status"]["state"])
        if rank > taskstate.RANK[taskstate.RUNNING]:
            return   # done: holds nothing
        waiting = rank <= taskstate.RANK[taskstate.PENDING]
        if waiting and not taskstate.is_active_desired(task["desired_state"]):
            if not task["node_id"]:
                self._decide(task, None, {"state": taskstate.SHUTDOWN, "err": ""})
                self.plan.shutdown.append(task["id"])
            return
        if not task["node_id"]:
            self.unassigned.append(task)
        elif waiting:
            self.preassigned.append(task)
        elif task["node_id"] in self.infos:
            self.infos[task["node_id"]].add_task(task)

    def run(self) -> Plan:
        for task in sorted(self.preassigned, key=lambda t: (t["node_id"], t["service_id"], t["id"])):
            self._fit_preassigned(task)
        groups: dict[tuple[str, int], list[Task]] = {}
        for task in self.unassigned:
            groups.setdefault((task["service_id"], task["spec_version"]), []).append(task)
        for key in sorted(groups):
            self._schedule_group(sorted(groups[key], key=lambda t: (t["slot"], t["id"])))
        return self.plan

    # -- preassigned tasks (global services) -------------------------------------------------------
    def _fit_preassigned(self, task: Task) -> None:
        info = self.infos.get(task["node_id"])
        if info is None:
            return   # its node is gone: the global orchestrator shuts the task down
        self.pipeline.set_task(task)
        if not self.pipeline.process(info):
            self._decide(task, None, {"state": self._waiting_state(task), "err": self.pipeline.explain()})
            self.plan.unschedulable[task["id"]] = self.pipeline.explain()
            return
        placed = self._decide(task, info.id, {"state": taskstate.ASSIGNED, "message": CONFIRMED_MESSAGE, "err": ""})
        info.add_task(placed)
        self.plan.assigned[task["id"]] = info.id

    # -- a group of tasks with one spec ------------------------------------------------------------
    def _schedule_group(self, group: list[Task]) -> None:
        first = group[0]
        self.pipeline.set_task(first)
        candidates = self._best_fitting(first, len(group))
        left = self._fill(group, candidates) if candidates else group
        if left:
            self._no_suitable_node(left)

    def _key(self, info: NodeInfo, task: Task) -> spread.Key:
        failed = 0
        if self.failures is not None:
            failed = self.failures.recent(info.id, task["service_id"], task["spec_version"], self.now_ns)
        return spread.node_key(info, task["service_id"], failed)

    def _best_fitting(self, task: Task, count: int) -> list[NodeInfo]:
        """The ``count`` best nodes that pass the filters, best first (swarmkit's bounded heap:
        once it is full, a node no better than the worst kept is not even checked)."""
        kept: list[_Worst] = []   # a heap, worst first
        for node_id in sorted(self.infos):
            info = self.infos[node_id]
            key = self._key(info, task)
            if len(kept) < count:
                if self.pipeline.process(info):
                    heapq.heappush(kept, _Worst(key, info))
            elif key < kept[0].key and self.pipeline.process(info):
                heapq.heapreplace(kept, _Worst(key, info))
        return [entry.info for entry in sorted(kept, reverse=True)]

    def _fill(self, group: list[Task], nodes: list[NodeInfo]) -> list[Task]:
        """swarmkit's scheduleNTasksOnNodes; returns the tasks left unplaced."""
        count = len(nodes)
        failed: set[int] = set()
        at = 0
        for done, task in enumerate(group, start=1):
            info = nodes[at % count]
            placed = self._decide(task, info.id, {"state": taskstate.ASSIGNED, "message": ASSIGNED_MESSAGE, "err": ""})
            info.add_task(placed)
            self.plan.assigned[task["id"]] = info.id
            if done == len(group):
                return []
            if at + 1 < count:
                # First pass: fill a node until the next one is better.
                if self._key(nodes[(at + 1) % count], task) < self._key(info, task):
                    at += 1
            else:
                at += 1   # then one task per node in turn
            start = at
            while at % count in failed or not self.pipeline.process(nodes[at % count]):
                failed.add(at % count)
                at += 1
                if at - start == count:
                    return group[done:]   # no node fits any more
        return []

    def _no_suitable_node(self, tasks: list[Task]) -> None:
        explanation = self.pipeline.explain()
        err = f"no suitable node ({explanation})" if explanation else "no suitable node"
        for task in tasks:
            service = self.services.get(task["service_id"])
            if service is None:
                continue   # being removed: nothing to tell
            self._decide(task, None, {"state": self._waiting_state(task), "err": err})
            self.plan.unschedulable[task["id"]] = err

    # -- decisions ---------------------------------------------------------------------------------
    @staticmethod
    def _waiting_state(task: Task) -> str:
        return taskstate.PENDING if task["status"]["state"] == taskstate.NEW else task["status"]["state"]

    def _decide(self, task: Task, node_id: str | None, change: dict[str, str]) -> Task:
        """Record the new status (unless state, message and error are as they were: swarmkit
        writes nothing then) and return the task as decided."""
        old = task["status"]
        state = change["state"]
        message = change.get("message", old["message"])
        if state == taskstate.PENDING and old["state"] == taskstate.NEW:
            message = PENDING_MESSAGE
        status: TaskStatus = {"state": state, "timestamp": self.now, "message": message, "err": change["err"],
                              "exit_code": 0, "pid": 0, "container_id": ""}
        decided: Task = {**task, "status": status}
        if node_id is not None:
            decided["node_id"] = node_id
        if (old["state"], old["message"], old["err"]) != (state, message, status["err"]):
            item: dict[str, Any] = {"id": task["id"], "version": task["version"], "status": status}
            if node_id is not None and node_id != task["node_id"]:
                item["node_id"] = node_id
            if node_id is not None and node_id in self.infos:
                item["node_version"] = self.infos[node_id].node.get("version")
            self.plan.updates.append(item)
        return decided
