"""Which nodes can take a task, and why not: swarmkit's filter pipeline (manager/scheduler).

Each filter is enabled for a task or not (a task without reservations skips the resource
filter) and checks one node. The pipeline runs a node through the enabled filters in a fixed
order and stops at the first that fails, counting the failures per filter; its explanation
names the filters that failed, most failures first, ties in pipeline order, joined by "; ":
``scheduling constraints not satisfied on 3 nodes; insufficient resources on 1 node``.

As in swarmkit, a node that passes resets the counts: an explanation tells about the nodes
that failed since the last one that fitted (the only ones still worth telling about once the
fitting ones are full).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmd.manager.scheduler import constraints
from swarmd.store import taskstate
from swarmd.store.objects import Task


@dataclass
class NodeInfo:
    """A node as the scheduler sees it: the tasks it runs and what they leave free."""

    node: Mapping[str, Any]
    tasks: dict[str, Task] = field(default_factory=dict)
    active_tasks: int = 0                       # tasks whose desired state lets them run
    active_by_service: dict[str, int] = field(default_factory=dict)
    free_nano_cpus: int = 0
    free_memory_bytes: int = 0

    @classmethod
    def of(cls, node: Mapping[str, Any], tasks: list[Task] | None = None) -> NodeInfo:
        info = cls(node, free_nano_cpus=int(node.get("nano_cpus") or 0),
                   free_memory_bytes=int(node.get("memory_bytes") or 0))
        for task in tasks or ():
            info.add_task(task)
        return info

    @property
    def id(self) -> str:
        return str(self.node.get("id", ""))

    def add_task(self, task: Task) -> bool:
        """Count a task here (swarmkit's ``addTask``): its reservations are taken whatever its
        desired state; it counts as active while its desired state lets it run. Seen again,
        only a change of that matters."""
        old = self.tasks.get(task["id"])
        active = taskstate.is_active_desired(task["desired_state"])
        service = task["service_id"]
        if old is not None:
            was_active = taskstate.is_active_desired(old["desired_state"])
            if active == was_active:
                return False
            self.tasks[task["id"]] = task
            step = 1 if active else -1
            self.active_tasks += step
            self.active_by_service[service] = self.active_by_service.get(service, 0) + step
            return True
        self.tasks[task["id"]] = task
        cpus, memory = reservations(task)
        self.free_nano_cpus -= cpus
        self.free_memory_bytes -= memory
        if active:
            self.active_tasks += 1
            self.active_by_service[service] = self.active_by_service.get(service, 0) + 1
        return True

    def remove_task(self, task: Task) -> bool:
        old = self.tasks.pop(task["id"], None)
        if old is None:
            return False
        if taskstate.is_active_desired(old["desired_state"]):
            self.active_tasks -= 1
            self.active_by_service[old["service_id"]] = self.active_by_service.get(old["service_id"], 0) - 1
        cpus, memory = reservations(task)
        self.free_nano_cpus += cpus
        self.free_memory_bytes += memory
        return True


def reservations(task: Task) -> tuple[int, int]:
    reserved = task["spec"]["resources"]["reservations"]
    return reserved["nano_cpus"], reserved["memory_bytes"]


class Filter:
    def set_task(self, task: Task) -> bool:
        """Whether this filter applies to ``task`` (and remember it)."""
        raise NotImplementedError

    def check(self, info: NodeInfo) -> bool:
        raise NotImplementedError

    def explain(self, nodes: int) -> str:
        raise NotImplementedError


def _nodes(count: int) -> str:
    return "1 node" if count == 1 else f"{count} nodes"


class ReadyFilter(Filter):
    """The node is up and takes new tasks (status ready, availability active)."""

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        return info.node.get("state") == "ready" and info.node.get("availability") == "active"

    def explain(self, nodes: int) -> str:
        return f"{_nodes(nodes)} not available for new tasks"


class ResourceFilter(Filter):
    """The node has what the task reserves, after what its tasks reserve."""

    def __init__(self) -> None:
        self._cpus = self._memory = 0

    def set_task(self, task: Task) -> bool:
        self._cpus, self._memory = reservations(task)
        return bool(self._cpus or self._memory)

    def check(self, info: NodeInfo) -> bool:
        return self._cpus <= info.free_nano_cpus and self._memory <= info.free_memory_bytes

    def explain(self, nodes: int) -> str:
        return f"insufficient resources on {_nodes(nodes)}"


class ConstraintFilter(Filter):
    """The node satisfies the placement constraints."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, ...], list[constraints.Constraint] | None] = {}
        self._constraints: list[constraints.Constraint] = []

    def set_task(self, task: Task) -> bool:
        exprs = tuple(task["spec"]["placement"]["constraints"])
        if not exprs:
            return False
        if exprs not in self._parsed:
            try:
                self._parsed[exprs] = constraints.parse(exprs)
            except constraints.ConstraintError:
                self._parsed[exprs] = None  # checked by the control API; as swarmkit, ignored
        parsed = self._parsed[exprs]
        if parsed is None:
            return False
        self._constraints = parsed
        return True

    def check(self, info: NodeInfo) -> bool:
        return constraints.node_matches(self._constraints, info.node)

    def explain(self, nodes: int) -> str:
        return f"scheduling constraints not satisfied on {_nodes(nodes)}"


class MaxReplicasFilter(Filter):
    """The node runs fewer of the service's tasks than the per-node limit."""

    def __init__(self) -> None:
        self._service, self._limit = "", 0

    def set_task(self, task: Task) -> bool:
        self._service, self._limit = task["service_id"], task["spec"]["placement"]["max_replicas"]
        return self._limit > 0

    def check(self, info: NodeInfo) -> bool:
        return info.active_by_service.get(self._service, 0) < self._limit

    def explain(self, nodes: int) -> str:
        return "max replicas per node limit exceed"  # swarmkit's words, whatever the count


def default_filters() -> list[Filter]:
    """swarmkit's order (its plugin, platform, host-port and volume filters have nothing to
    check here: tasks have no networks, images, published ports or volumes)."""
    return [ReadyFilter(), ResourceFilter(), ConstraintFilter(), MaxReplicasFilter()]


@dataclass
class _Entry:
    filter: Filter
    enabled: bool = False
    failures: int = 0


class Pipeline:
    """The filters one task at a time: ``set_task``, then ``process`` nodes, then ``explain``."""

    def __init__(self, filters: list[Filter] | None = None) -> None:
        self._entries = [_Entry(f) for f in (filters if filters is not None else default_filters())]

    def set_task(self, task: Task) -> None:
        for entry in self._entries:
            entry.enabled = entry.filter.set_task(task)
            entry.failures = 0

    def process(self, info: NodeInfo) -> bool:
        for entry in self._entries:
            if entry.enabled and not entry.filter.check(info):
                entry.failures += 1
                return False
        for entry in self._entries:
            entry.failures = 0
        return True

    def explain(self) -> str:
        failed = sorted((e for e in self._entries if e.failures), key=lambda e: -e.failures)  # stable
        return "; ".join(e.filter.explain(e.failures) for e in failed)
