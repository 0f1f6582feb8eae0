"""The replicated state: the cluster object, the tables, and the op draft that changes them.

The tables are declared once, in ``TABLES`` with their indexes; loading, dumping, drafts,
events and version checks go over that declaration, so a new table (services, tasks) is its
object type, one entry there, and one attribute of ``State`` and ``Draft`` each.

On disk and in snapshots the state stays the JSON document it always was
(``{"index", "cluster", "nodes", "networks", "services", "tasks", "requests"}``); ``from_json``
reads documents of any earlier version (missing tables are empty, missing timestamps and
versions filled in).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from swarmd.store import subnets
from swarmd.store.objects import Cluster, Network, Node, Service, Task, stamp_defaults
from swarmd.store.table import Index, RangeIndex, Table, TableDraft, copy_json

Result = dict[str, Any]


class State(TypedDict):
    index: int                           # the change index: one per applied op
    cluster: Cluster | None
    nodes: Table[Node]
    networks: Table[Network]
    services: Table[Service]
    tasks: Table[Task]
    requests: dict[str, Result]          # recent request tags and their first results


def _key(field: str) -> Callable[[Any], Iterable[Hashable]]:
    """Index on a field when it is set (an unset or empty field files nowhere)."""
    def keys(obj: Any) -> Iterable[Hashable]:
        value = obj.get(field)
        return (value,) if value else ()
    return keys


def _flag(field: str) -> Callable[[Any], Iterable[Hashable]]:
    """Index the objects whose flag is set, all under one key (the field's name)."""
    def keys(obj: Any) -> Iterable[Hashable]:
        return (field,) if obj.get(field) else ()
    return keys


def _vxlan_ids(network: Any) -> Iterable[Hashable]:
    return tuple(v for v in network.get("vxlan_ids") or () if isinstance(v, int))


def _service_name(service: Any) -> Iterable[Hashable]:
    """Names are unique whatever their case (swarmkit's name index is lower-cased)."""
    name = (service.get("spec") or {}).get("name")
    return (name.lower(),) if isinstance(name, str) and name else ()


def _slot(task: Any) -> Iterable[Hashable]:
    """A replicated task under (service, slot): its slot's history (global tasks have slot 0)."""
    slot = task.get("slot")
    return ((task.get("service_id"), slot),) if isinstance(slot, int) and slot > 0 else ()


TABLES: dict[str, dict[str, Index[Any]]] = {
    "nodes": {
        "public_key": Index(_key("public_key_sha256")),   # one key, one node
        "cert_rotate": Index(_flag("cert_rotate")),       # asked to renew onto a new root
        "manager": Index(_flag("manager")),               # holds a manager status (a Raft member)
    },
    "networks": {
        "name": Index(_key("name")),
        "ingress": Index(_flag("ingress")),
        "subnet": RangeIndex(lambda n: tuple(subnets.blocks_of(n))),
        "vxlan": Index(_vxlan_ids),
    },
    "services": {
        "name": Index(_service_name),
    },
    "tasks": {
        "service": Index(_key("service_id")),    # the orchestrators' view of a service
        "node": Index(_key("node_id")),          # the scheduler's and dispatcher's view of a node
        "slot": Index(_slot),                    # the reaper's and restarts' history of a slot
        "desired": Index(_key("desired_state")),  # the reaper finds desired "remove" here
    },
}


def tables(state: State) -> dict[str, Table[Any]]:
    doc = cast(Mapping[str, Any], state)
    return {name: doc[name] for name in TABLES}


def empty_state() -> State:
    return from_json({})


def from_json(doc: Mapping[str, Any]) -> State:
    """A state from its JSON document, taking ownership of the objects in it."""
    cluster = doc.get("cluster")
    if cluster is not None:
        stamp_defaults(cluster)
    state: dict[str, Any] = {"index": int(doc.get("index", 0)), "cluster": cluster,
                             "requests": dict(doc.get("requests") or {})}
    for name, indexes in TABLES.items():
        rows = dict(doc.get(name) or {})
        for obj in rows.values():
            stamp_defaults(obj)
        state[name] = Table(rows, indexes)
    return cast(State, state)


def to_json(state: State) -> dict[str, Any]:
    """A deep copy of the state as its JSON document."""
    doc: dict[str, Any] = {"index": state["index"], "cluster": copy_json(state["cluster"]),
                           "requests": copy_json(state["requests"])}
    for name, table in tables(state).items():
        doc[name] = table.to_json()
    return doc


class Draft:
    """What one op sees and writes: the next change index, the cluster object (replaced, never
    changed in place, by a handler that changes it) and a draft of every table. Nothing here
    touches the committed state until ``commit``."""

    def __init__(self, before: State, hooks: Hooks | None = None) -> None:
        self.before = before
        self.index = before["index"] + 1
        self.cluster: Cluster | None = before["cluster"]
        self.nodes: TableDraft[Node] = before["nodes"].draft()
        self.networks: TableDraft[Network] = before["networks"].draft()
        self.services: TableDraft[Service] = before["services"].draft()
        self.tasks: TableDraft[Task] = before["tasks"].draft()
        self.restored: State | None = None   # a whole new state (restore)
        self.hooks = hooks or Hooks()

    def tables(self) -> dict[str, TableDraft[Any]]:
        return {name: getattr(self, name) for name in TABLES}

    def prepare(self) -> None:
        """Everything that can still fail the op (index keys of the changed objects)."""
        for draft in self.tables().values():
            draft.prepare()

    def commit(self) -> None:
        """Into the state it was drafted on, in place; call under the state lock, after
        ``prepare``. Cannot fail."""
        state = self.before
        for name, table in tables(state).items():
            table.commit(getattr(self, name))
        state["cluster"] = self.cluster
        state["index"] = self.index


@dataclass(frozen=True)
class Hooks:
    """What the machine's owner lends ``apply`` (the store imports nothing of the manager).

    ``legacy_network_allocation``: for a create_network op written before the leader chose
    subnets and VXLAN IDs (an old journal), the choice the apply of that time made, as
    ``{"ipam", "vxlan_ids"}``; it must be deterministic, and raise ``OpError`` to refuse."""

    legacy_network_allocation: Callable[[Draft, dict[str, Any]], dict[str, Any]] | None = None
