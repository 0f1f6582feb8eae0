"""What the leader tells every node's session, kept from the store's events.

One thread owns the view. It reads the whole state once (a new manager, a reset, a dropped
watch) and then follows the store's events: a node's change touches that node's entry, a
manager's change the manager list, a cluster change the heartbeat period and the root, a task's
change its node's assignments (``assignments``). Each round publishes an immutable ``View`` and
says whose sessions must hear of it: everyone when the shared part changed, else only the nodes
whose own entry or assignments did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.manager.dispatcher.assignments import Entry, TaskIndex
from swarmd.manager.manager import effective_role
from swarmd.store import watch
from swarmd.store.watch import Event

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_NS = 5 * 10**9
# Everyone: the set of node IDs to wake, or ALL.
ALL: frozenset[str] = frozenset({"*"})


class View:
    """One published view. ``roles`` is shared with later views and changed only by the view's
    owner, one key at a time, so a reader's single lookup is always whole."""

    def __init__(self, managers: dict[str, str], heartbeat_ns: int, leader_addr: str,
                 roles: dict[str, tuple[str, bool]], root_ca: bytes,
                 tasks: Mapping[str, Mapping[str, Entry]] | None = None) -> None:
        ordered = sorted(managers.items())
        self.managers = [pb.RemoteManager(node_id=i, addr=a) for i, a in ordered]
        self.heartbeat_ns = heartbeat_ns
        self.leader_addr = leader_addr
        self.roles = roles        # node ID -> (desired role, asked to renew onto a new root)
        self.root_ca = root_ca
        self.tasks = tasks if tasks is not None else {}  # node ID -> its assignments, as ``roles``
        self.key = (tuple(ordered), heartbeat_ns, leader_addr, root_ca)

    def tasks_of(self, node_id: str) -> Mapping[str, Entry]:
        return self.tasks.get(node_id, _NONE)

    def message(self, node_id: str) -> pb.SessionMessage:
        role, renew = self.roles.get(node_id, ("", False))
        return pb.SessionMessage(managers=self.managers, heartbeat_period_ns=self.heartbeat_ns,
                                 desired_role=role, removed=not role, leader_addr=self.leader_addr,
                                 root_ca=self.root_ca, renew_certificate=renew)


_NONE: Mapping[str, Entry] = {}


def _relevant(event: Event) -> bool:
    return event.table in ("nodes", "cluster", "tasks")


class ViewKeeper:
    """The view of one manager's store (``follow`` it); not thread-safe: one owner thread."""

    def __init__(self, machine: Any, leader_id: Callable[[], str | None]) -> None:
        self._machine = machine
        self._leader_id = leader_id
        self._watch: watch.Watch | None = None
        self._roles: dict[str, tuple[str, bool]] = {}
        self._managers: dict[str, str] = {}
        self._heartbeat_ns = DEFAULT_HEARTBEAT_NS
        self._root = b""
        self._tasks = TaskIndex()
        self.view: View | None = None

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def update(self) -> frozenset[str]:
        """Take in what changed since the last round; the node IDs to wake (or ``ALL``)."""
        if self._watch is None or self._watch.closed:
            return self._reload()
        touched: set[str] = set()
        shared = False
        while True:
            event = self._watch.get(timeout=0)
            if event is None:
                if self._watch.closed:  # overflowed: read everything again
                    return self._reload()
                break
            if event.action == watch.RESET:
                return self._reload()
            if event.table == "cluster":
                shared |= self._take_cluster(event.object)
            elif event.table == "tasks":
                touched |= self._tasks.take(event.object, event.action == watch.REMOVE)  # type: ignore[arg-type]
            else:
                node_id = str(event.object["id"])
                managers, own = self._take_node(node_id, None if event.action == watch.REMOVE else event.object)
                shared |= managers
                if own:
                    touched.add(node_id)
        return self._publish(ALL if shared else frozenset(touched))

    def _reload(self) -> frozenset[str]:
        self.close()
        # Subscribe before reading: an event between the two is seen twice, never missed.
        self._watch = self._machine.events.subscribe(accept=_relevant)

        def read(state: Any) -> tuple[Any, list[dict[str, Any]], list[Any]]:
            return state["cluster"], list(state["nodes"].values()), list(state["tasks"].values())
        cluster, nodes, tasks = self._machine.read(read)
        self._tasks.reset(tasks)
        self._roles, self._managers = {}, {}
        if cluster is not None:
            self._take_cluster(cluster)
        for node in nodes:
            self._take_node(str(node["id"]), node)
        return self._publish(ALL)

    def _take_cluster(self, cluster: dict[str, Any]) -> bool:
        before = (self._heartbeat_ns, self._root)
        self._heartbeat_ns = int(cluster["spec"]["dispatcher_heartbeat_ns"])
        self._root = cluster["root_ca"]["cert"].encode()
        return before != (self._heartbeat_ns, self._root)

    def _take_node(self, node_id: str, node: dict[str, Any] | None) -> tuple[bool, bool]:
        """Record one node (None: removed): whether the manager list changed, and whether what
        the node itself is told did (a status write, the most frequent change, changes neither)."""
        before = self._managers.get(node_id), self._roles.get(node_id)
        if node is None:
            self._roles.pop(node_id, None)
            self._managers.pop(node_id, None)
        else:
            self._roles[node_id] = (effective_role(node), bool(node.get("cert_rotate")))
            manager = node.get("manager")
            if manager:
                self._managers[node_id] = str(manager["addr"])
            else:
                self._managers.pop(node_id, None)
        return before[0] != self._managers.get(node_id), before[1] != self._roles.get(node_id)

    def _publish(self, wake: frozenset[str]) -> frozenset[str]:
        leader = self._leader_id()
        leader_addr = self._managers.get(leader, "") if leader else ""
        old = self.view
        new = View(self._managers, self._heartbeat_ns, leader_addr, self._roles, self._root, self._tasks.by_node)
        self.view = new
        if old is None or old.key != new.key:
            return ALL
        return wake
