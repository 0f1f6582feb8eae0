"""The restart policy: whether a stopped task is replaced, and when the replacement starts
(swarmkit's restart supervisor, as data: time is always given, nothing waits).

A task that stopped (or whose node went down or was drained) is told to shut down and, if its
restart policy says so, replaced by a new task in the same slot, desired ``ready``: the node
prepares it and waits. ``Restarts.due`` tells when it may start (desired ``running``): once
the restart delay has passed (none on a drained node) and the old task has stopped, its node
is down, or ``OLD_TASK_TIMEOUT_NS`` has passed.

The condition: ``none`` never, ``on-failure`` unless the task completed (exit 0), ``any``
always; ``max_attempts`` (0: no limit) counts the restarts of the slot at its current spec
version, within the last ``window`` before the task stopped when a window is set.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from swarmd.ca import ids
from swarmd.manager.orchestrator.tasks import (
    NewID, Plan, Slot, by_time, created_ns, new_task, set_desired, task_time_ns,
)
from swarmd.store import taskstate
from swarmd.store.objects import Service, Task

OLD_TASK_TIMEOUT_NS: Final = 60 * 1_000_000_000   # swarmkit's defaultOldTaskTimeout
MAX_RESTART_TIMES: Final = 10_000                # restart times kept per slot (they age out)

SlotKey = tuple[str, int, str]   # (service ID, slot, node ID): node ID "" for replicated services


def slot_key(task: Task, service: Service) -> SlotKey:
    if service["spec"]["mode"] == "global":
        return task["service_id"], task["slot"], task["node_id"]
    return task["service_id"], task["slot"], ""


@dataclass
class _History:
    spec_version: int
    total: int = 0
    times: deque[int] | None = None   # restart times, when the policy has a window


@dataclass
class DelayedStart:
    task_id: str                # the replacement, desired ready
    not_before_ns: int          # the restart delay ends
    wait_for: str | None        # the task it replaces, while that one may still run
    since_ns: int


@dataclass
class Due:
    start: list[dict[str, Any]] = field(default_factory=list)   # update_tasks items: desired running
    restart: list[str] = field(default_factory=list)            # tasks to restart again (see ``restart``)


class Restarts:
    """Restart history per slot and the delayed starts in flight, for one leader's term (a new
    leader rebuilds both from the store: ``rebuild``)."""

    def __init__(self) -> None:
        self._history: dict[SlotKey, _History] = {}
        self._delays: dict[str, DelayedStart] = {}
        self._waiting: set[str] = set()   # failed while their own delayed start was pending

    # -- the decision --------------------------------------------------------------------------
    def restart(self, task: Task, service: Service, node: Mapping[str, Any] | None, now_ns: int,
                new_id: NewID = ids.new_id) -> Plan:
        """The plan for a task that stopped or lost its node: shut it down and, by its policy,
        replace it. A task still waiting for its own delayed start is restarted once that is
        over (``due`` says when): no tight loop when a task fails at once every time."""
        if task["id"] in self._delays:
            self._waiting.add(task["id"])
            return Plan()
        shutdown = set_desired(task, taskstate.SHUTDOWN)
        if shutdown is None or not taskstate.is_active_desired(task["desired_state"]):
            return Plan()   # already shut down by another restart
        plan = Plan(desired=[shutdown])
        if not self.should_restart(task, service):
            return plan
        global_ = service["spec"]["mode"] == "global"
        replacement = new_task(service, 0 if global_ else task["slot"], task["node_id"] if global_ else "",
                               new_id, desired_state=taskstate.READY)
        plan.create.append(replacement)
        self.record(slot_key(task, service), service, now_ns)
        delay = 0
        if node is None or node.get("availability") != "drain":
            delay = task["spec"]["restart_policy"]["delay_ns"]
        node_down = node is not None and node.get("state") == "down"
        still_running = taskstate.rank(task["status"]["state"]) <= taskstate.RANK[taskstate.RUNNING]
        self._delays[replacement["id"]] = DelayedStart(
            replacement["id"], now_ns + delay, task["id"] if still_running and not node_down else None, now_ns)
        return plan

    def should_restart(self, task: Task, service: Service) -> bool:
        policy = task["spec"]["restart_policy"]
        condition = policy["condition"]
        if condition == "none":
            return False
        if condition == "on-failure" and task["status"]["state"] == taskstate.COMPLETE:
            return False
        if policy["max_attempts"] == 0:
            return True
        history = self._history.get(slot_key(task, service))
        if history is None or task["spec_version"] != history.spec_version:
            return True
        if policy["window_ns"] == 0:
            return history.total < policy["max_attempts"]
        if not history.times:
            return True
        stopped = task_time_ns(task)
        if stopped is None:
            return history.total < policy["max_attempts"]
        lookback = stopped - policy["window_ns"]
        while history.times and history.times[0] <= lookback:
            history.times.popleft()   # out of every later window too
        # Restarts at or after the time this task stopped came after it: they do not count.
        counted = sum(1 for at in history.times if at < stopped)
        return counted < policy["max_attempts"]

    def record(self, key: SlotKey, service: Service, at_ns: int) -> None:
        """A replacement made from the service's current spec (swarmkit's RecordRestartHistory:
        history starts again with each spec version, and is kept only under a limit)."""
        policy = service["spec"]["task_template"]["restart_policy"]
        if policy["max_attempts"] == 0:
            return
        history = self._history.get(key)
        if history is None or history.spec_version != service["spec_version"]:
            history = self._history[key] = _History(service["spec_version"])
        history.total += 1
        if policy["window_ns"]:
            if history.times is None:
                history.times = deque(maxlen=MAX_RESTART_TIMES)
            history.times.append(at_ns)

    # -- slots ---------------------------------------------------------------------------------
    def updatable(self, slot: Slot, service: Service) -> Slot:
        """The slot's tasks the orchestrator and updater work with (swarmkit's
        UpdatableTasksInSlot): those desired running; else, if its newest task stopped for
        good (its policy does not restart it), that one, so a rolling update still reaches
        it; else none: the slot is dead. During a rollback a stopped slot is left alone."""
        runnable = [t for t in slot if taskstate.rank(t["desired_state"]) <= taskstate.RANK[taskstate.RUNNING]]
        if runnable or not slot:
            return runnable
        status = service["update_status"]
        if status is not None and status["state"] == "rollback_started":
            return []
        newest = by_time(slot)[-1]
        return [] if self.should_restart(newest, service) else [newest]

    # -- delayed starts ------------------------------------------------------------------------
    def due(self, now_ns: int, tasks: Mapping[str, Task], nodes: Mapping[str, Mapping[str, Any]]) -> Due:
        """The delayed starts whose time has come, and the restarts that waited for them."""
        due = Due()
        for task_id in sorted(self._delays):
            delay = self._delays[task_id]
            if now_ns < delay.not_before_ns or not self._old_task_gone(delay, now_ns, tasks, nodes):
                continue
            del self._delays[task_id]
            task = tasks.get(task_id)
            if task is not None:
                start = set_desired(task, taskstate.RUNNING)
                if start is not None:
                    due.start.append(start)
            if task_id in self._waiting:
                self._waiting.discard(task_id)
                due.restart.append(task_id)
        return due

    @staticmethod
    def _old_task_gone(delay: DelayedStart, now_ns: int, tasks: Mapping[str, Task],
                       nodes: Mapping[str, Mapping[str, Any]]) -> bool:
        if delay.wait_for is None or now_ns - delay.since_ns >= OLD_TASK_TIMEOUT_NS:
            return True
        old = tasks.get(delay.wait_for)
        if old is None or taskstate.is_terminal(old["status"]["state"]):
            return True
        node = nodes.get(old["node_id"])
        return node is None or node.get("state") == "down"

    def next_wakeup_ns(self) -> int | None:
        """When ``due`` may next have something without any store change (a delay ends, or
        the wait for an old task times out)."""
        times = [max(d.not_before_ns, d.since_ns + OLD_TASK_TIMEOUT_NS if d.wait_for else 0)
                 for d in self._delays.values()]
        return min(times, default=None)

    def watched(self) -> set[str]:
        """The tasks ``due`` looks at: the delayed replacements and the tasks they wait for."""
        found = set(self._delays)
        found.update(d.wait_for for d in self._delays.values() if d.wait_for)
        return found

    def delayed(self, task_id: str) -> bool:
        return task_id in self._delays

    def cancel(self, task_id: str) -> None:
        self._delays.pop(task_id, None)
        self._waiting.discard(task_id)

    def clear_service(self, service_id: str) -> None:
        for key in [k for k in self._history if k[0] == service_id]:
            del self._history[key]

    # -- a new leader --------------------------------------------------------------------------
    def rebuild(self, tasks: Iterable[Task], services: Mapping[str, Service], now_ns: int) -> list[dict[str, Any]]:
        """History and delays from the store (swarmkit's CheckTasks): in each slot, the tasks
        of its newest spec version after the first count as restarts; a task left desired
        ready starts when its restart delay (counted from its last status) is over. Returns
        the starts already due."""
        self._history.clear()
        self._delays.clear()
        self._waiting.clear()
        starts: list[dict[str, Any]] = []
        slots: dict[SlotKey, list[Task]] = {}
        for task in sorted(tasks, key=lambda t: t["id"]):
            service = services.get(task["service_id"])
            if service is None:
                continue
            slots.setdefault(slot_key(task, service), []).append(task)
            if task["desired_state"] != taskstate.READY or \
                    taskstate.rank(task["status"]["state"]) > taskstate.RANK[taskstate.COMPLETE]:
                continue
            delay = task["spec"]["restart_policy"]["delay_ns"]
            since = task_time_ns(task)
            if delay and since is not None and since + delay > now_ns:
                self._delays[task["id"]] = DelayedStart(task["id"], min(since + delay, now_ns + delay), None, now_ns)
                continue
            start = set_desired(task, taskstate.RUNNING)
            if start is not None:
                starts.append(start)
        for key, slot in slots.items():
            newest = max(t["spec_version"] for t in slot)
            current = sorted((t for t in slot if t["spec_version"] == newest),
                             key=lambda t: (created_ns(t) or 0, t["id"]))
            for task in current[1:]:
                policy = task["spec"]["restart_policy"]
                if policy["max_attempts"] == 0:
                    continue
                history = self._history.setdefault(key, _History(task["spec_version"]))
                history.total += 1
                if policy["window_ns"]:
                    if history.times is None:
                        history.times = deque(maxlen=MAX_RESTART_TIMES)
                    history.times.append(created_ns(task) or now_ns)
        return starts
