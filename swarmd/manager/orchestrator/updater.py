"""The rolling updater's decisions (swarmkit manager/orchestrator/update), as data: time is
given, nothing waits.

A service whose tasks were made from another spec than its own (a ``service update``, a
rollback) has them replaced slot by slot, with its update config (its rollback config while
rolling back): at most ``parallelism`` slots at a time (0: all), each slot busy until its new
task runs and then for ``delay`` more; stop-first shuts the old task down as the new one is
made, start-first once the new one runs. A new task that stops by itself (fails, completes, is
rejected) within ``monitor`` of starting to run counts as a failure; once failures exceed
``max_failure_ratio`` of the slots to update, the failure action applies: ``pause`` (the update
stops until the next one), ``rollback`` (the previous spec comes back and is rolled out),
``continue``. The update is complete when every slot is replaced and the last monitor window
ended.

The progress is in the store (which tasks are of which spec, and which were made since the
update started: those it waits for); what is only in memory (monitor windows, delays, failures
counted) starts again with a new leader, as in swarmkit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from swarmd.ca import ids
from swarmd.manager.orchestrator.tasks import NewID, Plan, Slot, is_dirty, new_task, set_desired
from swarmd.store import taskstate
from swarmd.store.objects import Service, Task, UpdateStatus
from swarmd.timeutil import parse_rfc3339_ns

# States that count as a failure of a new task (it stopped by itself).
FAILED_STATES: Final = frozenset({taskstate.COMPLETE, taskstate.FAILED, taskstate.REJECTED, taskstate.ORPHANED})
ACTIVE_STATES: Final = ("updating", "rollback_started")


@dataclass
class _Progress:
    spec_version: int
    total: int                                                   # slots to update when it began
    running_since: dict[str, int] = field(default_factory=dict)  # new task -> first seen running
    made: set[str] = field(default_factory=set)                  # new tasks this update made
    failures: set[str] = field(default_factory=set)


@dataclass
class Step:
    plan: Plan = field(default_factory=Plan)
    status: UpdateStatus | None = None   # a new update status to write
    rollback: bool = False               # ... together with the previous spec back
    wake_ns: int | None = None           # when to look again without any store change


class Updater:
    """Per service, the progress of its update in this leader's term."""

    def __init__(self) -> None:
        self._progress: dict[str, _Progress] = {}

    def active(self, service_id: str) -> bool:
        """An update of the service is under way: its tasks' progress matters."""
        return service_id in self._progress

    def forget(self, service_id: str) -> None:
        self._progress.pop(service_id, None)

    def step(self, service: Service, slots: Iterable[Slot], now_ns: int, now: str,
             decided: frozenset[str] = frozenset(), new_id: NewID = ids.new_id) -> Step:
        """What to do next for the service's slots (the orchestrator's updatable ones); the
        tasks in ``decided`` (a restart shut them down in this pass) count as failures if
        they are, and are otherwise left alone."""
        status = service["update_status"]
        state = status["state"] if status is not None else None
        if state in ("paused", "rollback_paused"):
            return Step()
        rolling_back = state == "rollback_started"
        config = service["spec"]["rollback_config" if rolling_back else "update_config"]
        waiting: list[Slot] = []
        pairs: list[tuple[Slot, Slot]] = []
        current: list[Task] = []
        slots = list(slots)
        stopped_now = [t for slot in slots for t in slot if t["id"] in decided]
        slots = [kept for slot in slots if (kept := [t for t in slot if t["id"] not in decided])]
        for slot in slots:
            old = [t for t in slot if is_dirty(service, t)]
            new = [t for t in slot if not is_dirty(service, t)]
            if old and new:
                pairs.append((old, new))
            elif old:
                waiting.append(old)
            current += new
        for old, new in pairs:
            current += new
        progress = self._progress.get(service["id"])
        if progress is None or progress.spec_version != service["spec_version"]:
            if not waiting and not pairs and state not in ACTIVE_STATES:
                self._progress.pop(service["id"], None)
                return Step()
            progress = self._progress[service["id"]] = _Progress(service["spec_version"], len(waiting) + len(pairs))
        out = Step()
        if state is None and service["previous_spec"] is not None:
            out.status = _status("updating", "update in progress", now, "")

        # The new tasks: running since when, failed within their monitor window?
        monitor, delay = config["monitor_ns"], config["delay_ns"]
        busy = 0
        wakes: list[int] = []
        began = parse_rfc3339_ns(status["started_at"]) if status is not None and state in ACTIVE_STATES else None
        for task in current + [t for t in stopped_now if not is_dirty(service, t)]:
            task_state = task["status"]["state"]
            since = progress.running_since.get(task["id"])
            if task_state == taskstate.RUNNING and since is None:
                since = progress.running_since[task["id"]] = now_ns
            made = task["id"] in progress.made or _made_since(task, began)
            if made and task_state in FAILED_STATES and \
                    (since is None or now_ns < since + monitor) and task["id"] not in progress.failures:
                progress.failures.add(task["id"])
            if taskstate.is_terminal(task_state) or task["id"] in decided:
                continue
            if since is None:
                busy += 1 if made else 0
            elif now_ns < since + delay:
                busy += 1
                wakes.append(since + delay)
            if since is not None and made and now_ns < since + monitor:
                wakes.append(since + monitor)
        failed = _failure(progress, config)
        if failed is not None and config["failure_action"] != "continue":
            return self._fail(service, progress, config["failure_action"], rolling_back, failed, now, out)

        # Start-first: an old task goes once its replacement runs.
        for old, new in pairs:
            if any(t["status"]["state"] == taskstate.RUNNING for t in new):
                out.plan.desired += [i for t in old if (i := set_desired(t, taskstate.SHUTDOWN)) is not None]
            else:
                busy += 1
        parallelism = config["parallelism"] or max(1, len(waiting))
        mode_global = service["spec"]["mode"] == "global"
        for old in waiting[:max(0, parallelism - busy)]:
            if config["order"] != "start-first":
                out.plan.desired += [i for t in old if (i := set_desired(t, taskstate.SHUTDOWN)) is not None]
            item = new_task(service, 0 if mode_global else old[0]["slot"], old[0]["node_id"] if mode_global else "",
                            new_id)
            progress.made.add(item["id"])
            out.plan.create.append(item)
        if not waiting and not pairs and busy == 0 and not wakes:
            self._progress.pop(service["id"], None)
            if state in ACTIVE_STATES or out.status is not None:
                started = status["started_at"] if status is not None else now
                out.status = (_status("rollback_completed", "rollback completed", started, now) if rolling_back
                              else _status("completed", "update completed", started, now))
        out.wake_ns = min(wakes, default=None)
        return out

    def _fail(self, service: Service, progress: _Progress, action: str, rolling_back: bool, task_id: str,
              now: str, out: Step) -> Step:
        started = service["update_status"]["started_at"] if service["update_status"] is not None else now
        self._progress.pop(service["id"], None)
        if action == "rollback" and not rolling_back and service["previous_spec"] is not None:
            message = f"update rolled back due to failure or early termination of task {task_id}"
            return Step(status=_status("rollback_started", message, now, ""), rollback=True)
        kind = "rollback" if rolling_back else "update"
        message = f"{kind} paused due to failure or early termination of task {task_id}"
        return Step(status=_status("rollback_paused" if rolling_back else "paused", message, started, ""))


def _made_since(task: Task, began: int | None) -> bool:
    """Made while the update ran (by it, or restarting what it made): what a new leader knows
    of the update's own tasks, from the store."""
    created = parse_rfc3339_ns(task["created_at"])
    return began is not None and created is not None and created >= began


def _failure(progress: _Progress, config: Any) -> str | None:
    """The task that tipped the failures over the ratio, if they are over it."""
    if not progress.failures or progress.total == 0:
        return None
    if len(progress.failures) / progress.total <= config["max_failure_ratio"]:
        return None
    return sorted(progress.failures)[0]


def _status(state: str, message: str, started: str, completed: str) -> UpdateStatus:
    return {"state": state, "message": message, "started_at": started, "completed_at": completed}
