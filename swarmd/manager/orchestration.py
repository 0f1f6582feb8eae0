"""The orchestrator on the leader (DESIGN §10): services' tasks follow their specs.

One leader component (``WatchLoop``) for both modes, the restart policy and the task reaper,
since all of them decide about the same slots and must see each other's decisions in order.
It reacts to store events: a service created, updated or removed, a task that changed, a node
that changed (drained, down, paused, relabelled, joined or gone). A pass reconciles only the
services those events touch (every service after a leadership change or a lost watch, which is
how a new leader picks up where the old one left: everything it needs is in the store), with
the pure decisions of ``orchestrator`` (replicated, global, restart, reaper), and writes one
batch of ops. Restart delays are timers: the pass returns when the next one ends.

Rolling updates are ``orchestrator.updater``'s decisions; their monitor windows and delays are
timers too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swarmd.manager import planwriter
from swarmd.manager.leadership import Retry, WatchLoop
from swarmd.manager.orchestrator import global_, reaper, replicated
from swarmd.manager.orchestrator.restart import Restarts
from swarmd.manager.orchestrator.tasks import Plan
from swarmd.manager.orchestrator.updater import Updater
from swarmd.store import taskstate
from swarmd.store.objects import Node, Service, Task
from swarmd.store.state import State
from swarmd.store.watch import Event
from swarmd.timeutil import now_rfc3339

if TYPE_CHECKING:
    from swarmd.manager.manager import Manager

log = logging.getLogger(__name__)

# Node fields whose change can change where tasks may run.
NODE_FIELDS = ("state", "availability", "labels", "role", "os", "architecture", "hostname")


def _relevant(event: Event) -> bool:
    return event.table in ("services", "tasks", "nodes", "cluster")


@dataclass
class _View:
    """What one pass reads, taken under the store's lock (objects are never changed in place)."""
    services: dict[str, Service]
    nodes: dict[str, Node]
    tasks: dict[str, list[Task]] = field(default_factory=dict)   # by service ID, removed services too
    history_limit: int = reaper.DEFAULT_TASK_HISTORY_LIMIT
    delayed: dict[str, Task] | None = None   # the tasks restart delays watch; None: all in ``tasks``


class Orchestrator(WatchLoop):
    name = "orchestrator"

    def __init__(self, manager: Manager) -> None:
        super().__init__(manager.machine.events, _relevant)
        self._manager = manager
        self._restarts = Restarts()
        self._nodes: dict[str, tuple[Any, ...]] = {}   # what of each node the last pass saw
        self._updates = Updater()
        self._status_ops: list[planwriter.Op] = []
        self._timers: dict[str, int] = {}   # service ID -> when its update must be looked at again

    # -- a pass ----------------------------------------------------------------------------------
    def step(self, full: bool, events: list[Event]) -> float | None:
        dirty, nodes_changed = self._dirty(events)
        now_ns = time.time_ns()
        dirty |= {service_id for service_id, at in self._timers.items() if at <= now_ns}
        view = self._read(None if full else dirty, full or nodes_changed, self._restarts.watched())
        plan = Plan()
        if full:
            self._nodes = {i: _node_key(n) for i, n in view.nodes.items()}
            plan.desired += self._restarts.rebuild(
                (t for ts in view.tasks.values() for t in ts), view.services, now_ns)
            dirty = set(view.tasks) | set(view.services)
        elif nodes_changed:
            dirty |= set(view.tasks) | set(view.services)
        # Delayed starts first: one made by this pass is not in the store yet (a restart
        # without delay starts in the next pass, at once).
        plan.extend(self._due(view, now_ns))
        decided = {item["id"] for item in plan.desired}
        seen: set[str] = set()
        for service_id in sorted(dirty):
            tasks = view.tasks.get(service_id, [])
            service = view.services.get(service_id)
            if service is None:
                for task in tasks:
                    self._restarts.cancel(task["id"])
                self._restarts.clear_service(service_id)
                self._updates.forget(service_id)
                self._timers.pop(service_id, None)
            else:
                plan.extend(self._reconcile(service, tasks, view.nodes, now_ns, decided))
            seen.update(t["id"] for t in tasks)
        for item in plan.desired:
            # A desired state only moves forward, and the store refuses a move back: the
            # decision holds whatever else changed in the task since it was read (a
            # replacement made for a task whose shutdown was refused would double its slot).
            item.pop("version", None)
        ops = plan.ops(now_rfc3339())
        ops += self._status_ops
        self._status_ops = []
        removable = reaper.reap(view.services, (t for s in sorted(dirty) for t in view.tasks.get(s, [])),
                                view.history_limit)
        keep = set(plan.delete) | {item["id"] for item in plan.desired}   # decided about already
        removable = [i for i in removable if i not in keep and i in seen]
        if removable:
            ops.append(("remove_tasks", {"ids": removable, "now": now_rfc3339()}))
        if ops and not planwriter.write(self._manager, ops, self.name):
            raise Retry("the orchestrator's write did not commit")
        wakes = list(self._timers.values())
        restart = self._restarts.next_wakeup_ns()
        if restart is not None:
            wakes.append(restart)
        wake = min(wakes, default=None)
        return None if wake is None else max(0.0, (wake - time.time_ns()) / 1e9) + 0.001

    def _dirty(self, events: list[Event]) -> tuple[set[str], bool]:
        """The services the events touch, and whether a node changed what may run where."""
        dirty: set[str] = set()
        nodes_changed = False
        for event in events:
            obj = event.object
            if event.table == "services":
                dirty.add(str(obj.get("id")))
            elif event.table == "tasks":
                service_id = str(obj.get("service_id"))
                if event.action != "update" or _decides(obj) or self._updates.active(service_id):
                    dirty.add(service_id)
            elif event.table == "cluster":
                nodes_changed = True   # the task history limit may have changed: look at everything
            elif event.table == "nodes":
                node_id = str(obj.get("id"))
                key = None if event.action == "remove" else _node_key(obj)
                if self._nodes.get(node_id) != key:
                    nodes_changed = True
                    if key is None:
                        self._nodes.pop(node_id, None)
                    else:
                        self._nodes[node_id] = key
        return dirty, nodes_changed

    def _read(self, services: set[str] | None, all_nodes: bool, watched: set[str]) -> _View:
        def read(state: State) -> _View:
            view = _View(dict(state["services"].items()), dict(state["nodes"].items()))
            cluster = state["cluster"]
            if cluster is not None:
                view.history_limit = int(cluster["spec"].get("task_history_limit",
                                                             reaper.DEFAULT_TASK_HISTORY_LIMIT))
            tasks = state["tasks"]
            if services is None or all_nodes:
                for task in tasks.values():
                    view.tasks.setdefault(task["service_id"], []).append(task)
            else:
                for service_id in services:
                    view.tasks[service_id] = [tasks[i] for i in tasks.lookup("service", service_id)]
                view.delayed = {i: tasks[i] for i in watched if i in tasks}
            return view
        return self._manager.machine.read(read)

    # -- decisions -------------------------------------------------------------------------------
    def _reconcile(self, service: Service, tasks: list[Task], nodes: Mapping[str, Node], now_ns: int,
                   decided: set[str]) -> Plan:
        """The service's plan; tasks in ``decided`` got their desired state in this pass already."""
        restarts = self._restarts
        if service["spec"]["mode"] == "global":
            plan = global_.reconcile(service, nodes.values(), tasks, restarts)
            touched = {item["id"] for item in plan.desired} | decided
            for task in global_.to_restart(tasks):
                if task["id"] not in touched:
                    plan.extend(global_.restart_or_shutdown(task, service, nodes.get(task["node_id"]), restarts,
                                                            now_ns))
        else:
            plan = replicated.reconcile(service, tasks, restarts)
            touched = {item["id"] for item in plan.desired} | set(plan.delete) | decided
            for task in replicated.to_restart(tasks, nodes):
                if task["id"] not in touched:
                    plan.extend(restarts.restart(task, service, nodes.get(task["node_id"]), now_ns))
        touched = {item["id"] for item in plan.desired} | decided
        slots, plan.update = plan.update, []
        step = self._updates.step(service, slots, now_ns, now_rfc3339(), frozenset(touched))
        plan.extend(step.plan)
        if step.wake_ns is None:
            self._timers.pop(service["id"], None)
        else:
            self._timers[service["id"]] = step.wake_ns
        if step.status is not None:
            self._status_ops.append(("set_update_status", {
                "id": service["id"], "update_status": step.status, "rollback": step.rollback, "now": now_rfc3339(),
                "expect": {"services": {service["id"]: service["version"]}}}))
        return plan

    def _due(self, view: _View, now_ns: int) -> Plan:
        """Delayed starts whose time has come, and the restarts that waited for them."""
        tasks = {t["id"]: t for ts in view.tasks.values() for t in ts}
        if view.delayed is not None:
            tasks.update(view.delayed)
        due = self._restarts.due(now_ns, tasks, view.nodes)
        plan = Plan(desired=list(due.start))
        for task_id in due.restart:
            task = tasks.get(task_id)
            service = view.services.get(task["service_id"]) if task else None
            if task is not None and service is not None:
                plan.extend(self._restarts.restart(task, service, view.nodes.get(task["node_id"]), now_ns))
        return plan


def _decides(task: Mapping[str, Any]) -> bool:
    """A task change the orchestrator acts on: it stopped, or it is told to stop or to wait
    (a task being placed or starting changes nothing for it, unless an update watches it)."""
    return taskstate.is_terminal(task["status"]["state"]) or task["desired_state"] != taskstate.RUNNING


def _node_key(node: Mapping[str, Any]) -> tuple[Any, ...]:
    labels = node.get("labels") or {}
    return tuple(node.get(f) for f in NODE_FIELDS if f != "labels") + (tuple(sorted(labels.items())),)
