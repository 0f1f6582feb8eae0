"""Which tasks the task reaper deletes (swarmkit manager/orchestrator/taskreaper).

Two kinds: tasks told to go (desired ``remove``, from a scale-down or a removed service) once
they stopped or if they never reached a node; and a slot's history beyond the cluster's
``task-history-limit`` (a replicated service's slot, a global service's node), oldest first,
never a task that may still run. A service whose restart policy has ``max_attempts`` keeps
that many tasks and one more per slot, whatever the limit (the restart count is rebuilt from
them by a new leader). Otherwise a negative limit keeps every task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from swarmd.manager.orchestrator.tasks import by_time
from swarmd.store import taskstate
from swarmd.store.objects import Service, Task

DEFAULT_TASK_HISTORY_LIMIT = 5   # Docker's `swarm init --task-history-limit`


def removable(task: Task) -> bool:
    """Desired ``remove`` and stopped, or never assigned: deleted at once."""
    if task["desired_state"] != taskstate.REMOVE:
        return False
    rank = taskstate.rank(task["status"]["state"])
    return rank < taskstate.RANK[taskstate.ASSIGNED] or rank >= taskstate.RANK[taskstate.COMPLETE]


def _finished(task: Task) -> bool:
    """History that may go: stopped, or will never run (not assigned, desired past running)."""
    rank = taskstate.rank(task["status"]["state"])
    if rank > taskstate.RANK[taskstate.RUNNING]:
        return True
    return rank < taskstate.RANK[taskstate.ASSIGNED] and \
        taskstate.rank(task["desired_state"]) > taskstate.RANK[taskstate.RUNNING]


def reap(services: Mapping[str, Service], tasks: Iterable[Task], task_history_limit: int) -> list[str]:
    """The IDs of the tasks to delete (for ``remove_tasks``), sorted."""
    doomed: set[str] = set()
    slots: dict[tuple[str, int, str], list[Task]] = {}
    for task in tasks:
        if removable(task):
            doomed.add(task["id"])
        service = services.get(task["service_id"])
        if service is None:
            continue   # a removed service's tasks are all desired remove: see removable()
        global_ = service["spec"]["mode"] == "global"
        key = (task["service_id"], 0, task["node_id"]) if global_ else (task["service_id"], task["slot"], "")
        slots.setdefault(key, []).append(task)
    for (service_id, _, _), history in slots.items():
        keep = _history_to_keep(services[service_id], task_history_limit)
        if keep < 0 or len(history) <= keep:
            continue
        excess = len(history) - keep
        for task in by_time(history):
            if excess == 0:
                break
            if _finished(task):
                doomed.add(task["id"])
                excess -= 1
    return sorted(doomed)


def _history_to_keep(service: Service, limit: int) -> int:
    attempts = service["spec"]["task_template"]["restart_policy"]["max_attempts"]
    return attempts + 1 if attempts > 0 else limit
