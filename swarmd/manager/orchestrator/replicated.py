"""The replicated orchestrator's decisions (swarmkit manager/orchestrator/replicated).

``reconcile`` compares a service's slots with its replica count: missing slots get new tasks
(the lowest free slot numbers), extra slots are told to go (desired ``remove``; the node stops
them, the reaper deletes them), and dead slots (nothing left that runs or may still be updated)
are deleted, but for tasks still on a node that have not stopped yet. On a scale-down the slots that go are chosen to leave the service balanced: the
tasks on the nodes with the most of its tasks first, among equals those not running, then the
highest slot numbers (a stateful service's primary is usually in a low slot).

``to_restart`` picks the tasks the restart policy is asked about: stopped while desired
running, or on a node that is gone, down or drained.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from swarmd.ca import ids
from swarmd.manager.orchestrator.restart import Restarts
from swarmd.manager.orchestrator.tasks import (
    NewID, Plan, Slot, invalid_node, is_runnable, new_task, set_desired, slots_of,
)
from swarmd.store import taskstate
from swarmd.store.objects import Service, Task


def reconcile(service: Service, tasks: Iterable[Task], restarts: Restarts, new_id: NewID = ids.new_id) -> Plan:
    """The plan that brings the service's slots to its replica count."""
    live: dict[int, Slot] = {}
    dead: dict[int, Slot] = {}
    for number, slot in slots_of(tasks).items():
        updatable = restarts.updatable(slot, service)
        if updatable:
            live[number] = updatable
        else:
            dead[number] = slot
    wanted = service["spec"]["replicas"]
    plan = Plan()
    if wanted > len(live):
        plan.update = [live[n] for n in sorted(live)]
        number = 0
        for _ in range(wanted - len(live)):
            number += 1
            while number in live:
                number += 1
            dead.pop(number, None)   # its history stays with the new task
            plan.create.append(new_task(service, number, "", new_id))
    elif wanted < len(live):
        ordered = scale_down_order(list(live.values()))
        plan.update = ordered[:wanted]
        for slot in ordered[wanted:]:
            for task in slot:
                item = set_desired(task, taskstate.REMOVE)
                if item is not None:
                    plan.desired.append(item)
    else:
        plan.update = [live[n] for n in sorted(live)]
    plan.delete = [t["id"] for n in sorted(dead) for t in dead[n] if not _may_run(t)]
    return plan


def _may_run(task: Task) -> bool:
    """On a node and not stopped yet: kept until it stops (``service ps`` shows it going, as
    Docker's ``Remove / Running``), then deleted by a later pass or the reaper."""
    rank = taskstate.rank(task["status"]["state"])
    return taskstate.RANK[taskstate.ASSIGNED] <= rank <= taskstate.RANK[taskstate.RUNNING]


def scale_down_order(slots: list[Slot]) -> list[Slot]:
    """Slots to keep first, slots to remove last (swarmkit's slotsByRunningState, then the
    count of the service's tasks on each slot's node; sorted stably, so equal slots keep the
    first order)."""
    def running_first(slot: Slot) -> tuple[int, int]:
        running = any(t["status"]["state"] == taskstate.RUNNING for t in slot)
        return (0 if running else 1), slot[0]["slot"]
    ordered = sorted(slots, key=running_first)
    per_node: dict[str, int] = {}
    indexed: list[tuple[int, Slot]] = []
    for slot in ordered:
        if len(slot) == 1 and slot[0]["node_id"]:
            node = slot[0]["node_id"]
            per_node[node] = per_node.get(node, 0) + 1
            indexed.append((per_node[node], slot))
        else:
            indexed.append((-1, slot))
    # The n-th task of the service on its node sorts by n; slots with no single placed task last.
    indexed.sort(key=lambda pair: (pair[0] < 0, pair[0]))
    return [slot for _, slot in indexed]


def to_restart(tasks: Iterable[Task], nodes: Mapping[str, Mapping[str, Any]]) -> list[Task]:
    """Tasks to hand to ``Restarts.restart`` (swarmkit's handleTaskChange / node events)."""
    chosen = []
    for task in sorted(tasks, key=lambda t: t["id"]):
        if not is_runnable(task):
            continue
        stopped = taskstate.is_terminal(task["status"]["state"])
        if stopped or (task["node_id"] and invalid_node(nodes.get(task["node_id"]))):
            chosen.append(task)
    return chosen


def remove_all(tasks: Iterable[Task]) -> Plan:
    """A removed service's tasks, told to go (the store does this itself when it removes the
    service; this is for tasks left behind by an older store)."""
    plan = Plan()
    for task in sorted(tasks, key=lambda t: t["id"]):
        item = set_desired(task, taskstate.REMOVE)
        if item is not None:
            plan.desired.append(item)
    return plan
