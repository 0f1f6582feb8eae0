"""Services and tasks as ``apply`` decides them: what must be decided in commit order.

A service's name is unique (as swarmkit: case-insensitive); its spec is checked and completed
by ``specs.normalize`` once more here, since nothing an op carries may be trusted. A task is
made from its service's spec as the service is when the op applies (the op names the service,
the slot or node and the desired state, not a copy of the spec: a batch of a hundred tasks
stays small), so a task can never carry a spec its service did not have.

Task ops work on batches (an orchestrator's plan, a scheduler's decisions, a node's reports are
one entry each). A batch whose shape is wrong is refused whole; an item that lost a race (its
task is gone, changed since it was read, or would move a state back) is refused alone and
listed in the result's ``refused`` (task ID -> why), the way the store refuses any op: nothing of
that item is written, and the rest of the batch applies. States move only forward: a task's
status is a Lamport clock (``taskstate``), and so is its desired state.
"""

from __future__ import annotations

import re
from typing import Any, Final, cast

from swarmd import errors
from swarmd.store import specs, taskstate
from swarmd.store.objects import Service, Task, TaskStatus, UpdateStatus
from swarmd.store.refusal import OUT_OF_SEQUENCE, OpError, Result, require
from swarmd.store.state import Draft
from swarmd.store.table import copy_json

NOT_ASSIGNED_HERE: Final = ("rpc error: code = PermissionDenied desc = cannot update a task not assigned "
                            "this node")  # swarmkit's dispatcher
UPDATE_STATES: Final = ("updating", "paused", "completed", "rollback_started", "rollback_paused",
                        "rollback_completed")

MAX_TASKS_PER_OP: Final = 1000
MAX_STATUS_MESSAGE: Final = 512
MAX_STATUS_ERR: Final = 2048
MAX_TIMESTAMP: Final = 64
MAX_CONTAINER_ID: Final = 128
MAX_UPDATE_MESSAGE: Final = 1024
INT32_MAX: Final = (1 << 31) - 1

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def name_conflict(name: str) -> str:
    """swarmkit's refusal of a second service with a name (its store's ErrNameConflict)."""
    return errors.rpc_text("ALREADY_EXISTS", f"name conflicts with an existing object: service {name} already exists")


def service_not_found(service_id: str) -> str:
    return errors.rpc_text("NOT_FOUND", f"service {service_id} not found")


def name_key(name: str) -> str:
    """The name index's key: names are unique whatever their case."""
    return name.lower()


# -- services --------------------------------------------------------------------------------------

def create_service(draft: Draft, cmd: dict[str, Any]) -> Result:
    service_id = _id(cmd.get("id"), "service")
    spec = specs.normalize(cmd.get("spec"))
    now = _now(cmd)
    require(service_id not in draft.services, "ALREADY_EXISTS",
            errors.rpc_text("ALREADY_EXISTS", "object already exists"))
    require(not draft.services.lookup("name", name_key(spec["name"])), "ALREADY_EXISTS", name_conflict(spec["name"]))
    service: Service = {
        "id": service_id, "version": draft.index, "created_at": now, "updated_at": now,
        "spec": spec, "spec_version": draft.index, "previous_spec": None, "previous_spec_version": None,
        "update_status": None,
    }
    draft.services[service_id] = service
    return {"service_id": service_id}


def update_service(draft: Draft, cmd: dict[str, Any]) -> Result:
    """A new spec (the current one becomes the previous), or with ``rollback`` the previous
    spec back (swarmkit's UpdateService; the version check is the op's ``expect``)."""
    service = _service(draft, cmd.get("id"))
    now = _now(cmd)
    if cmd.get("rollback"):
        previous = service["previous_spec"]
        require(previous is not None, "FAILED_PRECONDITION", errors.rpc_text(
            "FAILED_PRECONDITION", f"service {service['id']} does not have a previous spec"))
        assert previous is not None
        service["spec"], service["previous_spec"] = previous, service["spec"]
        service["spec_version"], service["previous_spec_version"] = \
            service["previous_spec_version"] or 0, service["spec_version"]
        service["update_status"] = {"state": "rollback_started", "message": "manually requested rollback",
                                    "started_at": now, "completed_at": ""}
    else:
        spec = specs.normalize(cmd.get("spec"))
        current = service["spec"]
        require(spec["mode"] == current["mode"], "UNIMPLEMENTED",
                errors.rpc_text("UNIMPLEMENTED", "service mode change is not allowed"))
        require(spec["name"] == current["name"], "UNIMPLEMENTED",
                errors.rpc_text("UNIMPLEMENTED", "renaming services is not supported"))
        service["previous_spec"], service["previous_spec_version"] = current, service["spec_version"]
        service["spec"], service["spec_version"] = spec, draft.index
        service["update_status"] = None
    service["updated_at"] = now
    return {"service_id": service["id"]}


def set_update_status(draft: Draft, cmd: dict[str, Any]) -> Result:
    """The rolling updater's progress; with ``rollback`` it also puts the previous spec back
    and forgets it (swarmkit's rollbackUpdate: a rollback cannot be rolled back)."""
    service = _service(draft, cmd.get("id"))
    now = _now(cmd)
    status = _update_status(cmd.get("update_status"))
    if cmd.get("rollback"):
        previous = service["previous_spec"]
        require(previous is not None, "FAILED_PRECONDITION", errors.rpc_text(
            "FAILED_PRECONDITION", f"service {service['id']} does not have a previous spec"))
        assert previous is not None
        service["spec"], service["spec_version"] = previous, service["previous_spec_version"] or 0
        service["previous_spec"], service["previous_spec_version"] = None, None
    service["update_status"] = status
    service["updated_at"] = now
    return {}


def remove_service(draft: Draft, cmd: dict[str, Any]) -> Result:
    """The service goes, and its tasks are told to go (desired state ``remove``) in the same
    change: no leader change between the two can leave them running for nobody."""
    service_id = _service_id(draft, cmd.get("id"))
    now = _now(cmd)
    del draft.services[service_id]
    for task_id in draft.tasks.lookup("service", service_id):
        if taskstate.rank(draft.tasks[task_id]["desired_state"]) < taskstate.RANK[taskstate.REMOVE]:
            task = draft.tasks.edit(task_id)
            task["desired_state"] = taskstate.REMOVE
            task["updated_at"] = now
    return {}


def _service_id(draft: Draft, service_id: Any) -> str:
    require(isinstance(service_id, str) and service_id in draft.services, "NOT_FOUND",
            service_not_found(str(service_id)[:64]))
    return cast(str, service_id)


def _service(draft: Draft, service_id: Any) -> Service:
    """The op's own copy of a service, safe to change."""
    return draft.services.edit(_service_id(draft, service_id))


def _update_status(raw: Any) -> UpdateStatus:
    require(isinstance(raw, dict) and set(raw) <= {"state", "message", "started_at", "completed_at"},
            "INVALID_ARGUMENT", "malformed update status")
    state = raw.get("state")
    require(state in UPDATE_STATES, "INVALID_ARGUMENT", "unknown update state")
    fields = {k: raw.get(k, "") for k in ("message", "started_at", "completed_at")}
    require(all(isinstance(v, str) for v in fields.values()), "INVALID_ARGUMENT", "malformed update status")
    return {"state": state, "message": fields["message"][:MAX_UPDATE_MESSAGE],
            "started_at": fields["started_at"][:MAX_TIMESTAMP], "completed_at": fields["completed_at"][:MAX_TIMESTAMP]}


# -- tasks -----------------------------------------------------------------------------------------

class _Refused(Exception):
    """One item of a batch lost a race; the rest applies."""


def create_tasks(draft: Draft, cmd: dict[str, Any]) -> Result:
    """New tasks: each ``{id, service_id, slot | node_id, desired_state}`` (status ``new``,
    ``created``), made from its service's current spec."""
    now = _now(cmd)
    refused: dict[str, str] = {}
    created: list[str] = []
    for item in _batch(cmd.get("tasks")):
        task_id = _id(item.get("id"), "task")
        try:
            service = draft.services.get(str(item.get("service_id")))
            if service is None:
                raise _Refused(service_not_found(str(item.get("service_id"))[:64]))
            if task_id in draft.tasks:
                raise _Refused(errors.rpc_text("ALREADY_EXISTS", "object already exists"))
            draft.tasks[task_id] = _new_task(draft, task_id, service, item, now)
            created.append(task_id)
        except _Refused as e:
            refused[task_id] = str(e)
    return {"created": created, "refused": refused}


def _new_task(draft: Draft, task_id: str, service: Service, item: dict[str, Any], now: str) -> Task:
    slot, node_id = item.get("slot", 0), item.get("node_id", "")
    require(type(slot) is int and 0 <= slot <= specs.INT64_MAX and isinstance(node_id, str),
            "INVALID_ARGUMENT", "malformed task")
    if service["spec"]["mode"] == "global":
        require(slot == 0 and bool(node_id), "INVALID_ARGUMENT", "a global service's task needs a node and no slot")
    else:
        require(slot >= 1, "INVALID_ARGUMENT", "a replicated service's task needs a slot")
    if node_id:
        _id(node_id, "node")
    desired = item.get("desired_state", taskstate.RUNNING)
    require(desired in taskstate.DESIRED_STATES, "INVALID_ARGUMENT", f"invalid desired state {str(desired)[:32]!r}")
    return {
        "id": task_id, "version": draft.index, "created_at": now, "updated_at": now,
        "service_id": service["id"], "service_name": service["spec"]["name"], "slot": slot, "node_id": node_id,
        "spec": copy_json(service["spec"]["task_template"]), "spec_version": service["spec_version"],
        "desired_state": desired,
        "status": {"state": taskstate.NEW, "timestamp": now, "message": "created", "err": "", "exit_code": 0,
                   "pid": 0, "container_id": ""},
    }


def update_tasks(draft: Draft, cmd: dict[str, Any]) -> Result:
    """Managers' changes to tasks, each ``{id, version?, desired_state?, node_id?, status?,
    node_version?}``: desired states (orchestrators), assignments and their status (the
    scheduler, which names the version of the node it chose: a node that changed meanwhile,
    gone down or drained, gets no task from a decision made before)."""
    now = _now(cmd)
    refused: dict[str, str] = {}
    for item in _batch(cmd.get("updates")):
        task_id = _id(item.get("id"), "task")
        desired, node_id = item.get("desired_state"), item.get("node_id")
        require(desired is None or desired in taskstate.DESIRED_STATES, "INVALID_ARGUMENT",
                f"invalid desired state {str(desired)[:32]!r}")
        require(node_id is None or (isinstance(node_id, str) and (not node_id or _ID.fullmatch(node_id) is not None)),
                "INVALID_ARGUMENT", "malformed node ID")
        status = _status(item["status"], now) if item.get("status") is not None else None
        node_version = item.get("node_version")
        try:
            task = _current(draft, task_id, item.get("version"))
            if node_version is not None:
                node = draft.nodes.get(node_id or task["node_id"])
                if node is None or node.get("version") != node_version:
                    raise _Refused(OUT_OF_SEQUENCE)
            changes: dict[str, Any] = {}
            if desired is not None and desired != task["desired_state"]:
                if taskstate.moves_back(task["desired_state"], desired):
                    raise _Refused(f"cannot update task {task_id} in desired state {task['desired_state']} "
                                   f"to an earlier desired state {desired}")
                changes["desired_state"] = desired
            if node_id is not None and node_id != task["node_id"]:
                if task["node_id"]:
                    raise _Refused(f"task {task_id} is already assigned to node {task['node_id']}")
                changes["node_id"] = node_id
            if status is not None and status != task["status"]:
                _forward(task, status)
                changes["status"] = status
            if changes:
                edited = draft.tasks.edit(task_id)
                cast(dict[str, Any], edited).update(changes)
                edited["updated_at"] = now
        except _Refused as e:
            refused[task_id] = str(e)
    return {"refused": refused}


def report_task_status(draft: Draft, cmd: dict[str, Any]) -> Result:
    """A node's reports of its tasks' states, ``{node_id, updates: [{id, status}]}``: the node
    may report only the tasks assigned to it (the dispatcher names the node from its
    certificate), and a report never moves a state back."""
    now = _now(cmd)
    node_id = _id(cmd.get("node_id"), "node")
    refused: dict[str, str] = {}
    for item in _batch(cmd.get("updates")):
        task_id = _id(item.get("id"), "task")
        try:
            task = draft.tasks.get(task_id)
            if task is None:
                raise _Refused(f"task {task_id} not found")
            if task["node_id"] != node_id:
                raise _Refused(NOT_ASSIGNED_HERE)
            try:
                status = _status(item.get("status"), now)
            except OpError as e:
                raise _Refused(e.message) from None
            status["applied_at"] = now
            current = {k: v for k, v in task["status"].items() if k != "applied_at"}
            if {k: v for k, v in status.items() if k != "applied_at"} == current:
                continue  # the same report again (a retried batch)
            _forward(task, status)
            edited = draft.tasks.edit(task_id)
            edited["status"] = status
            edited["updated_at"] = now
        except _Refused as e:
            refused[task_id] = str(e)
    return {"refused": refused}


def remove_tasks(draft: Draft, cmd: dict[str, Any]) -> Result:
    """Tasks deleted (the reaper's history trimming, and tasks of removed slots once stopped)."""
    ids = cmd.get("ids")
    require(isinstance(ids, list) and len(ids) <= MAX_TASKS_PER_OP, "INVALID_ARGUMENT", "malformed task batch")
    refused: dict[str, str] = {}
    for raw in cast(list[Any], ids):
        task_id = _id(raw, "task")
        if task_id in draft.tasks:
            del draft.tasks[task_id]
        else:
            refused[task_id] = f"task {task_id} not found"
    return {"refused": refused}


def _batch(items: Any) -> list[dict[str, Any]]:
    require(isinstance(items, list) and len(items) <= MAX_TASKS_PER_OP and all(isinstance(i, dict) for i in items),
            "INVALID_ARGUMENT", f"malformed task batch (a list of at most {MAX_TASKS_PER_OP} objects)")
    return cast(list[dict[str, Any]], items)


def _current(draft: Draft, task_id: str, version: Any) -> Task:
    task = draft.tasks.get(task_id)
    if task is None:
        raise _Refused(f"task {task_id} not found")
    if version is not None and version != task["version"]:
        raise _Refused(OUT_OF_SEQUENCE)
    return task


def _forward(task: Task, status: TaskStatus) -> None:
    current = task["status"]["state"]
    if taskstate.moves_back(current, status["state"]):
        raise _Refused(f"task {task['id']} cannot move back from {current} to {status['state']}")


def _status(raw: Any, now: str) -> TaskStatus:
    """A task status with its texts cut to their bounds (a report's error text may be long)."""
    require(isinstance(raw, dict), "INVALID_ARGUMENT", "malformed task status")
    state = raw.get("state")
    require(taskstate.is_known(state), "INVALID_ARGUMENT", f"unknown task state {str(state)[:32]!r}")
    texts = {k: raw.get(k, "") for k in ("timestamp", "message", "err", "container_id")}
    require(all(isinstance(v, str) for v in texts.values()), "INVALID_ARGUMENT", "malformed task status")
    exit_code, pid = raw.get("exit_code", 0), raw.get("pid", 0)
    require(type(exit_code) is int and -INT32_MAX - 1 <= exit_code <= INT32_MAX
            and type(pid) is int and 0 <= pid <= INT32_MAX, "INVALID_ARGUMENT", "malformed task status")
    return {"state": state, "timestamp": texts["timestamp"][:MAX_TIMESTAMP] or now,
            "message": texts["message"][:MAX_STATUS_MESSAGE], "err": texts["err"][:MAX_STATUS_ERR],
            "exit_code": exit_code, "pid": pid, "container_id": texts["container_id"][:MAX_CONTAINER_ID]}


def _id(value: Any, what: str) -> str:
    require(isinstance(value, str) and _ID.fullmatch(value) is not None, "INVALID_ARGUMENT", f"malformed {what} ID")
    return cast(str, value)


def _now(cmd: dict[str, Any]) -> str:
    now = cmd.get("now")
    require(isinstance(now, str) and len(now) <= MAX_TIMESTAMP, "INVALID_ARGUMENT", "an op needs its time")
    return cast(str, now)
