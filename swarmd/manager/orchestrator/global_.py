"""The global orchestrator's decisions: one task per eligible node (swarmkit
manager/orchestrator/global).

A node is eligible while it is neither down nor drained and satisfies the service's placement
constraints. An eligible node without a task of the service gets one (created for that node:
the scheduler only checks it fits); a paused node keeps what it has and gets nothing new;
tasks on nodes that are not eligible are shut down.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from swarmd.ca import ids
from swarmd.manager.orchestrator.restart import Restarts
from swarmd.manager.orchestrator.tasks import (
    NewID, Plan, Slot, by_node, invalid_node, is_runnable, new_task, set_desired,
)
from swarmd.manager.scheduler import constraints
from swarmd.store import taskstate
from swarmd.store.objects import Service, Task


def service_constraints(service: Service) -> list[constraints.Constraint]:
    """The service's constraints; ones that do not parse constrain nothing (as swarmkit: the
    control API refuses them before they reach the store)."""
    try:
        return constraints.parse(service["spec"]["task_template"]["placement"]["constraints"])
    except constraints.ConstraintError:
        return []


def eligible(node: Mapping[str, Any]) -> bool:
    return not invalid_node(node)


def reconcile(service: Service, nodes: Iterable[Mapping[str, Any]], tasks: Iterable[Task], restarts: Restarts,
              new_id: NewID = ids.new_id) -> Plan:
    """The plan that gives every eligible node one task of the service (swarmkit's
    reconcileServices)."""
    wanted = service_constraints(service)
    slots: dict[str, Slot] = {}
    for node_id, slot in by_node(tasks).items():
        updatable = restarts.updatable(slot, service)
        if updatable:
            slots[node_id] = updatable
    plan = Plan()
    for node in sorted((n for n in nodes if eligible(n)), key=lambda n: str(n["id"])):
        node_id = str(node["id"])
        slot = slots.pop(node_id, [])
        if not constraints.node_matches(wanted, node):
            _shutdown(plan, slot)
        elif node.get("availability") == "pause":
            continue
        elif not slot:
            plan.create.append(new_task(service, 0, node_id, new_id))
        else:
            plan.update.append(slot)
    for node_id in sorted(slots):   # nodes gone, down or drained
        _shutdown(plan, slots[node_id])
    return plan


def restart_or_shutdown(task: Task, service: Service, node: Mapping[str, Any] | None, restarts: Restarts,
                        now_ns: int, new_id: NewID = ids.new_id) -> Plan:
    """A stopped task of a global service (swarmkit's tickTasks): replaced by its restart
    policy on a node that still takes it, shut down on a paused or no longer matching one;
    a task whose node is not eligible is left to ``reconcile``."""
    if not is_runnable(task) or node is None or not eligible(node):
        return Plan()
    if node.get("availability") == "pause" or not constraints.node_matches(service_constraints(service), node):
        plan = Plan()
        _shutdown(plan, [task])
        return plan
    return restarts.restart(task, service, node, now_ns, new_id)


def to_restart(tasks: Iterable[Task]) -> list[Task]:
    """Tasks that stopped while desired running (handleTaskChange)."""
    return [t for t in sorted(tasks, key=lambda t: t["id"])
            if is_runnable(t) and taskstate.is_terminal(t["status"]["state"])]


def _shutdown(plan: Plan, tasks: Slot) -> None:
    for task in tasks:
        item = set_desired(task, taskstate.SHUTDOWN)
        if item is not None:
            plan.desired.append(item)
