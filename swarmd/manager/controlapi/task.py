"""Tasks: list (by service, by node, with Docker's ``service ps``/``node ps`` filters) and inspect.

Tasks are written by the leader's orchestrators, scheduler and the nodes' reports, never
through this API. A listed task carries its node's hostname, for display.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from swarmd import errors
from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.manager import servicepb
from swarmd.manager.controlapi.base import ControlAPI, Ctx
from swarmd.manager.controlapi.forwarding import on_leader
from swarmd.manager.controlapi.node import resolve_node
from swarmd.manager.controlapi.service import parse_filters, resolve_service
from swarmd.manager.manager import Manager
from swarmd.server import abort_on_error
from swarmd.store.objects import Task
from swarmd.store.state import State

TASK_FILTERS = ("desired-state", "id", "name", "node", "service")
DESIRED_STATE_FILTERS = ("running", "shutdown", "accepted")


class TaskAPI(ControlAPI):
    @abort_on_error
    @on_leader
    def ListTasks(self, request: spb.ListTasksRequest, context: Ctx) -> spb.ListTasksResponse:
        manager = self.rt.require_manager()
        return spb.ListTasksResponse(tasks=list_tasks(manager, list(request.services), list(request.nodes),
                                                      list(request.filters)))

    @abort_on_error
    @on_leader
    def GetTask(self, request: spb.GetTaskRequest, context: Ctx) -> spb.GetTaskResponse:
        manager = self.rt.require_manager()

        def read(state: State) -> spb.Task:
            task = resolve_task(state, request.ref)
            return servicepb.task(task, _hostname(state, task))
        return spb.GetTaskResponse(task=manager.read(read))


def task_name(task: Task) -> str:
    """swarmkit's naming.Task: ``service.slot.id``, or ``service.nodeID.id`` for a global task."""
    return f"{task['service_name']}.{task['slot'] or task['node_id']}.{task['id']}"


def resolve_task(state: State, ref: str) -> Task:
    """By ID, then unique ID prefix (Docker's daemon's ``getTask``, its texts)."""
    tasks = state["tasks"]
    if ref in tasks:
        return tasks[ref]
    candidates = [t for t in tasks.values() if ref and t["id"].startswith(ref)]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise errors.invalid(f"task {ref} is ambiguous ({len(candidates)} matches found)")
    raise errors.not_found(f"task {ref} not found")


def _hostname(state: State, task: Task) -> str:
    node = state["nodes"].get(task["node_id"]) if task["node_id"] else None
    return node["hostname"] if node is not None else ""


def task_filter(manager: Manager, state: State, filters: Sequence[str]) -> Callable[[Task], bool]:
    """Docker's ``service ps --filter``: desired-state running | shutdown | accepted, id and
    name by prefix, node and service by reference."""
    by_key = parse_filters(filters, TASK_FILTERS)
    for value in by_key.get("desired-state", []):
        if value not in DESIRED_STATE_FILTERS:
            raise errors.invalid(f"Invalid desired-state filter: '{value}'")
    desired = set(by_key.get("desired-state", []))
    nodes = {resolve_node(manager, state, ref)["id"] for ref in by_key.get("node", [])}
    services = {resolve_service(state, ref)["id"] for ref in by_key.get("service", [])}

    def keep(task: Task) -> bool:
        if desired and task["desired_state"] not in desired:
            return False
        if "id" in by_key and not any(task["id"].startswith(v) for v in by_key["id"]):
            return False
        if "name" in by_key and not any(task_name(task).startswith(v) for v in by_key["name"]):
            return False
        if nodes and task["node_id"] not in nodes:
            return False
        return not services or task["service_id"] in services
    return keep


def list_tasks(manager: Manager, services: Sequence[str], nodes: Sequence[str],
               filters: Sequence[str]) -> list[spb.Task]:
    """The tasks of the named services and of the named nodes (every task when neither is
    named), filtered; an unknown reference is refused with Docker's not-found text."""
    def read(state: State) -> list[tuple[Task, str]]:
        keep = task_filter(manager, state, filters)
        tasks = state["tasks"]
        if services or nodes:
            chosen: set[str] = set()
            for ref in services:
                chosen.update(tasks.lookup("service", resolve_service(state, ref)["id"]))
            for ref in nodes:
                chosen.update(tasks.lookup("node", resolve_node(manager, state, ref)["id"]))
            listed = [tasks[i] for i in chosen]
        else:
            listed = list(tasks.values())
        listed.sort(key=lambda t: (t["service_name"], t["slot"], t["node_id"], t["created_at"], t["id"]))
        return [(t, _hostname(state, t)) for t in listed if keep(t)]
    # Converted outside the state's lock (committed objects never change): at 10,000 tasks the
    # conversion takes long enough to hold up every apply behind it.
    return [servicepb.task(t, hostname) for t, hostname in manager.read(read)]
