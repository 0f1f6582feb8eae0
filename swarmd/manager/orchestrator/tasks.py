"""What the orchestrators share: slots, task times, the plan they return.

A slot is the tasks that fill one place of a service: a replicated service's slot number, a
global service's node. A task runs once; its replacement is a new task in the same slot, so a
slot holds the current task and its history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmd.store import taskstate
from swarmd.store.objects import Service, Task
from swarmd.timeutil import parse_rfc3339_ns

NewID = Callable[[], str]
Slot = list[Task]


@dataclass
class Plan:
    """An orchestrator's decisions as the ops that write them."""

    create: list[dict[str, Any]] = field(default_factory=list)   # create_tasks items
    desired: list[dict[str, Any]] = field(default_factory=list)  # update_tasks items (desired states)
    delete: list[str] = field(default_factory=list)              # remove_tasks IDs
    update: list[Slot] = field(default_factory=list)             # slots for the rolling updater

    def extend(self, other: Plan) -> None:
        self.create += other.create
        self.desired += other.desired
        self.delete += other.delete
        self.update += other.update

    def ops(self, now: str) -> list[tuple[str, dict[str, Any]]]:
        """The ops to propose, in one batch entry: old tasks told to stop before their
        replacements exist, so no slot ever has two tasks desired running by this plan."""
        ops: list[tuple[str, dict[str, Any]]] = []
        if self.desired:
            ops.append(("update_tasks", {"updates": self.desired, "now": now}))
        if self.delete:
            ops.append(("remove_tasks", {"ids": self.delete, "now": now}))
        if self.create:
            ops.append(("create_tasks", {"tasks": self.create, "now": now}))
        return ops


def new_task(service: Service, slot: int, node_id: str, new_id: NewID,
             desired_state: str = taskstate.RUNNING) -> dict[str, Any]:
    """A create_tasks item (swarmkit's NewTask: the store copies the service's spec in)."""
    return {"id": new_id(), "service_id": service["id"], "slot": slot, "node_id": node_id,
            "desired_state": desired_state}


def set_desired(task: Task, desired_state: str) -> dict[str, Any] | None:
    """An update_tasks item moving ``task`` to ``desired_state``, or None when it is there or
    past it already (time travel is not allowed)."""
    if taskstate.rank(task["desired_state"]) >= taskstate.rank(desired_state):
        return None
    return {"id": task["id"], "version": task["version"], "desired_state": desired_state}


def task_time_ns(task: Task) -> int | None:
    """When its status was last set: the manager's time when a node's report was written
    (managers' clocks are trusted more), else the status's own."""
    status = task["status"]
    return parse_rfc3339_ns(status.get("applied_at") or status["timestamp"])


def by_time(tasks: Iterable[Task]) -> list[Task]:
    """Oldest first; tasks without a readable time first of all (swarmkit's TasksByTimestamp)."""
    def key(task: Task) -> tuple[int, int, str]:
        at = task_time_ns(task)
        return (0, 0, task["id"]) if at is None else (1, at, task["id"])
    return sorted(tasks, key=key)


def created_ns(task: Task) -> int | None:
    return parse_rfc3339_ns(task["created_at"])


def slots_of(tasks: Iterable[Task]) -> dict[int, Slot]:
    slots: dict[int, Slot] = {}
    for task in sorted(tasks, key=lambda t: t["id"]):
        slots.setdefault(task["slot"], []).append(task)
    return slots


def by_node(tasks: Iterable[Task]) -> dict[str, Slot]:
    nodes: dict[str, Slot] = {}
    for task in sorted(tasks, key=lambda t: t["id"]):
        nodes.setdefault(task["node_id"], []).append(task)
    return nodes


def invalid_node(node: Mapping[str, Any] | None) -> bool:
    """A node its tasks must leave: gone, down or drained (swarmkit's InvalidNode)."""
    return node is None or node.get("state") == "down" or node.get("availability") == "drain"


def is_runnable(task: Task) -> bool:
    """Desired to run (or get ready to): the orchestrator still owns what happens to it."""
    return taskstate.rank(task["desired_state"]) <= taskstate.RANK[taskstate.RUNNING]


def is_dirty(service: Service, task: Task) -> bool:
    """The task was made from another spec than the service's (the updater replaces it)."""
    if task["spec_version"] == service["spec_version"]:
        return False
    return task["spec"] != service["spec"]["task_template"]
