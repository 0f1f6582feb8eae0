"""Which tasks each node is told about, and what one session has yet to hear (DESIGN §10).

swarmkit's rules (manager/dispatcher/assignments.go): a node's set holds the tasks assigned to
it (its node ID, status ``assigned`` or later) until the store deletes them (the reaper, or a
removed service's stopped tasks), so a stopped task of the history keeps its state and logs on
the node until then. A change is sent only when it is one the node acts on (the desired state,
the spec); the node's own status reports, by far the most frequent task writes, change nothing
in the set and wake no session.

The keeper (``TaskIndex``, owned by the view's thread) files each task under its node;
a node's entries are replaced whole on a change, never edited, so a session reading them on the
event loop always sees one consistent set. A session (``SessionAssignments``) remembers what it
sent: its first message is the full set, every later one the difference, numbered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.store import taskstate
from swarmd.store.objects import Task, TaskTemplate

# What the node acts on: a task whose key is unchanged is not sent again.
Key = tuple[str, int]


class Entry(NamedTuple):
    key: Key
    task: spb.Task


def in_set(task: Mapping[str, Any]) -> bool:
    """swarmkit sends a task from ``assigned`` on: before that it may not suit the node."""
    return bool(task.get("node_id")) and taskstate.rank(task["status"]["state"]) >= taskstate.RANK[taskstate.ASSIGNED]


def key_of(task: Task) -> Key:
    return (task["desired_state"], task["spec_version"])


def template_pb(t: TaskTemplate) -> spb.TaskTemplate:
    res, placement, restart = t["resources"], t["placement"], t["restart_policy"]
    return spb.TaskTemplate(
        program=t["program"], args=t["args"], env=t["env"], workdir=t["workdir"], user=t["user"],
        stop_signal=t["stop_signal"], stop_grace_period_ns=t["stop_grace_period_ns"],
        resources=spb.ResourceRequirements(
            limits=spb.Resources(nano_cpus=res["limits"]["nano_cpus"], memory_bytes=res["limits"]["memory_bytes"]),
            reservations=spb.Resources(nano_cpus=res["reservations"]["nano_cpus"],
                                       memory_bytes=res["reservations"]["memory_bytes"])),
        placement=spb.Placement(constraints=placement["constraints"], max_replicas=placement["max_replicas"]),
        restart_policy=spb.RestartPolicy(condition=restart["condition"], delay_ns=restart["delay_ns"],
                                         max_attempts=restart["max_attempts"], window_ns=restart["window_ns"]),
        force_update=t["force_update"])


def task_pb(task: Task) -> spb.Task:
    s = task["status"]
    return spb.Task(
        id=task["id"], version=task["version"], created_at=task["created_at"], updated_at=task["updated_at"],
        service_id=task["service_id"], service_name=task["service_name"], slot=task["slot"],
        node_id=task["node_id"], spec=template_pb(task["spec"]), spec_version=task["spec_version"],
        desired_state=task["desired_state"],
        status=spb.TaskStatus(state=s["state"], timestamp=s["timestamp"], message=s["message"], err=s["err"],
                              exit_code=s["exit_code"], pid=s["pid"], container_id=s["container_id"]))


class TaskIndex:
    """Tasks by node, kept from the store's task events (one owner thread)."""

    def __init__(self) -> None:
        self.by_node: dict[str, Mapping[str, Entry]] = {}
        self._node_of: dict[str, str] = {}

    def reset(self, tasks: list[Task]) -> None:
        by_node: dict[str, dict[str, Entry]] = {}
        self._node_of = {}
        for task in tasks:
            if in_set(task):
                by_node.setdefault(task["node_id"], {})[task["id"]] = Entry(key_of(task), task_pb(task))
                self._node_of[task["id"]] = task["node_id"]
        self.by_node = dict(by_node)

    def take(self, task: Task, removed: bool) -> set[str]:
        """One task event; the nodes whose set changed."""
        task_id = task["id"]
        touched: set[str] = set()
        old_node = self._node_of.get(task_id)
        keep = not removed and in_set(task)
        new_node = task["node_id"] if keep else None
        if old_node is not None and old_node != new_node:
            self._drop(old_node, task_id)
            touched.add(old_node)
        if new_node is not None:
            entries = self.by_node.get(new_node, {})
            current = entries.get(task_id)
            key = key_of(task)
            if current is None or current.key != key:
                self.by_node[new_node] = {**entries, task_id: Entry(key, task_pb(task))}
                self._node_of[task_id] = new_node
                touched.add(new_node)
        return touched

    def _drop(self, node_id: str, task_id: str) -> None:
        self._node_of.pop(task_id, None)
        entries = dict(self.by_node.get(node_id, {}))
        entries.pop(task_id, None)
        if entries:
            self.by_node[node_id] = entries
        else:
            self.by_node.pop(node_id, None)


class SessionAssignments:
    """What one session has told its node: the first ``next`` is the full set, then changes."""

    def __init__(self) -> None:
        self.sequence = 0
        self._sent: dict[str, Key] = {}

    def next(self, current: Mapping[str, Entry]) -> spb.Assignments | None:
        """The message that brings the node up to ``current``; None when it already is."""
        full = self.sequence == 0
        changed = [e.task for i, e in current.items() if self._sent.get(i) != e.key]
        removed = [i for i in self._sent if i not in current]
        if not full and not changed and not removed:
            return None
        self.sequence += 1
        self._sent = {i: e.key for i, e in current.items()}
        if full:
            return spb.Assignments(sequence=self.sequence, full=True, tasks=[e.task for e in current.values()])
        return spb.Assignments(sequence=self.sequence, tasks=changed, removed=removed)
