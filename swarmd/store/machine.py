"""The replicated state machine: one entry point, ``apply(op)``, over a JSON-shaped state.

Every replica applies the same ops in the same order, so ``apply`` must be deterministic (all
randomness and timestamps come inside the op, chosen by the proposer) and must never raise: an
exception inside a pysyncobj apply stalls the node forever. Invalid ops become failed results.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from swarmd.store import networks, services, watch
from swarmd.store.objects import Cluster, Node, stamp_defaults
from swarmd.store.refusal import OUT_OF_SEQUENCE, OpError, Result, failed as _failed, require as _require
from swarmd.store.state import Draft, Hooks, State, empty_state, from_json, tables, to_json
from swarmd.store.table import REMOVED, copy_json
from swarmd.store.watch import Event

__all__ = ["OUT_OF_SEQUENCE", "OpError", "Result", "State", "StateMachine", "encode_op", "encode_batch",
           "empty_state"]

OP_VERSION = 1
KEY_REUSED = ("rpc error: code = AlreadyExists desc = a node already joined the swarm with this certificate "
              "signing request's key; every node must make its own key")

T = TypeVar("T")
Handler = Callable[[Draft, dict[str, Any]], Result]


def encode_op(kind: str, **fields: Any) -> bytes:
    """Serialise an op for the log: versioned JSON, never pickle."""
    return json.dumps({"v": OP_VERSION, "op": kind, **fields}, sort_keys=True, separators=(",", ":")).encode()


BATCH_OP = "batch"
_BATCH_HEAD = b'{"v":%d,"op":"%s","ops":[' % (OP_VERSION, BATCH_OP.encode())


def encode_batch(ops: list[bytes]) -> bytes:
    """Several encoded ops as one entry (group commit): joined as they are, not re-encoded."""
    return _BATCH_HEAD + b",".join(ops) + b"]}"


class StateMachine:
    """Holds the cluster state; readers take a consistent view under the same lock apply uses.

    An op works on a ``Draft`` (overlays over the tables, see ``table``) and is committed into
    the state in place, under the lock, only once it has succeeded: a write costs what it
    changes, and a failed op leaves the state exactly as it was."""

    def __init__(self, hooks: Hooks | None = None) -> None:
        self._lock = threading.Lock()
        self._state: State = empty_state()
        self._hooks = hooks or Hooks()
        self._handlers: dict[str, Handler] = {
            "bootstrap": _bootstrap,
            "rotate_join_token": _rotate_join_token,
            "update_cluster": _update_cluster,
            "start_root_rotation": _start_root_rotation,
            "mark_cert_rotation": _mark_cert_rotation,
            "finish_root_rotation": _finish_root_rotation,
            "update_node": _update_node,
            "set_node_status": _set_node_status,
            "create_network": networks.create_network,
            "remove_network": networks.remove_network,
            "create_service": services.create_service,
            "update_service": services.update_service,
            "set_update_status": services.set_update_status,
            "remove_service": services.remove_service,
            "create_tasks": services.create_tasks,
            "update_tasks": services.update_tasks,
            "report_task_status": services.report_task_status,
            "remove_tasks": services.remove_tasks,
            "add_node": _add_node,
            "set_node_role": _set_node_role,
            "remove_node": _remove_node,
            "restore": _restore,
        }
        self._listeners: list[Callable[[], None]] = []
        self.events = watch.Hub()

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Called after every successful apply, on the applying thread: keep it cheap."""
        self._listeners.append(fn)

    # -- replicated entry point ------------------------------------------------------------
    def apply(self, op: bytes) -> Result:
        """Apply one entry: an op, or a batch of ops (``encode_batch``) applied one after the
        other, each as its own change, with a result each."""
        try:
            cmd = json.loads(op)
        except Exception as e:  # noqa: BLE001 - apply must never raise (see module docstring)
            return _failed("INVALID_ARGUMENT", f"undecodable op: {type(e).__name__}")
        if isinstance(cmd, dict) and cmd.get("v") == OP_VERSION and cmd.get("op") == BATCH_OP:
            ops = cmd.get("ops")
            if not isinstance(ops, list):
                return _failed("INVALID_ARGUMENT", "a batch without ops")
            results = [self._apply_one(sub) for sub in ops]
            changed = any(r.get("ok") for r in results)
            outcome: Result = {"ok": True, "batch": results}
        else:
            outcome = self._apply_one(cmd)
            changed = bool(outcome.get("ok"))
        if changed:
            for listener in self._listeners:
                listener()
        return outcome

    def _apply_one(self, cmd: Any) -> Result:
        try:
            if not isinstance(cmd, dict) or cmd.get("v") != OP_VERSION:
                return _failed("INVALID_ARGUMENT", "unsupported op version")
            handler = self._handlers.get(str(cmd.get("op")))
            if handler is None:
                return _failed("INVALID_ARGUMENT", f"unknown op {cmd.get('op')!r}")
            tag = cmd.get("rid")
            with self._lock:
                before = self._state
                done = before["requests"].get(tag) if isinstance(tag, str) else None
                if done is not None:
                    return dict(done)  # a retried write that had committed: its first result
                _check_expected(before, cmd.get("expect"))
                draft = Draft(before, self._hooks)
                outcome: Result = {"ok": True, "index": draft.index, **handler(draft, cmd)}
                if draft.restored is None:
                    events = _changes(draft)
                    draft.prepare()
                    after = before
                else:
                    after = draft.restored
                    events = [Event("", watch.RESET, {}, after["index"])]
                # The op has succeeded: nothing below can fail.
                if isinstance(tag, str):
                    after["requests"] = _remember(before["requests"], tag, outcome)
                if after is before:
                    draft.commit()
                else:
                    self._state = after
            self.events.publish(events)
            return outcome
        except OpError as e:
            return _failed(e.code, e.message, conflict=e.conflict)
        except Exception as e:  # noqa: BLE001 - apply must never raise (see module docstring)
            return _failed("INTERNAL", f"failed to apply {type(e).__name__}: {e}")

    # -- reads and snapshots ---------------------------------------------------------------
    def read(self, fn: Callable[[State], T]) -> T:
        """Run ``fn`` on the current state under the lock; ``fn`` must not keep references
        (the tables change in place at the next commit; the objects in them never do)."""
        with self._lock:
            return fn(self._state)

    def peek(self, fn: Callable[[State], T]) -> T:
        """Run ``fn`` on the current state without the lock, for the remote API's event loop:
        waiting for the lock there would stall every connection for as long as an apply holds
        it (a batch of a thousand tasks, thousands of status marks after an election).

        Only point lookups are allowed (``state["cluster"]``, ``state["nodes"].get(id)``): a
        commit changes a table one key at a time, each change atomic under the GIL, and the
        objects themselves are replaced, never changed, so what one lookup returns is a
        committed object. Iterating a table here could see it change size; use ``read``."""
        return fn(self._state)

    def snapshot_doc(self) -> dict[str, Any]:
        """The state as its JSON document for serialising at once, sharing the committed objects.

        A committed object is replaced by an op, never changed in place (see ``table``), so the
        document may be read outside the lock: under it this costs a shallow copy of each table,
        not a deep copy of every object (seconds at 10,000 nodes, with every reader of the
        state, the remote API's event loop included, waiting). The request table is changed in
        place, so it is copied."""
        with self._lock:
            state = self._state
            doc: dict[str, Any] = {"index": state["index"], "cluster": state["cluster"],
                                   "requests": copy_json(state["requests"])}
            for name, table in tables(state).items():
                doc[name] = table.shared_rows()
        return doc

    def dump(self) -> dict[str, Any]:
        """The state as its JSON document (a deep copy: the caller may change it)."""
        with self._lock:
            return to_json(self._state)

    def load(self, doc: dict[str, Any]) -> None:
        """Replace the state with a JSON document (a snapshot), of this version or an earlier
        one; the document's objects become the state's."""
        state = from_json(doc)
        with self._lock:
            self._state = state
        self.events.publish([Event("", watch.RESET, {}, state["index"])])
        for listener in self._listeners:
            listener()


def _check_expected(state: State, expect: Any) -> None:
    """An op based on what it read refuses to apply once those objects changed meanwhile:
    ``{"nodes": {id: version}, "services": {...}, "cluster": version}``."""
    if not expect:
        return
    if not isinstance(expect, dict):
        raise OpError("INVALID_ARGUMENT", "malformed expected versions")
    by_name = tables(state)
    for table, versions in expect.items():
        if table == "cluster":
            cluster = state["cluster"]
            _require((cluster["version"] if cluster else None) == versions, "UNKNOWN", OUT_OF_SEQUENCE)
            continue
        _require(table in by_name and isinstance(versions, dict), "INVALID_ARGUMENT",
                 "malformed expected versions")
        for key, version in versions.items():
            current = (by_name[table].get(key) or {}).get("version")
            _require(current is not None and current == version, "UNKNOWN", OUT_OF_SEQUENCE)


def _changes(draft: Draft) -> list[Event]:
    """The events of one op, in a fixed order; each changed object gets the op's index as its
    version (the same on every replica)."""
    index = draft.index
    events: list[Event] = []
    before = draft.before["cluster"]
    if draft.cluster is not before and draft.cluster is not None:
        draft.cluster["version"] = index
        events.append(Event("cluster", watch.CREATE if before is None else watch.UPDATE,
                            cast(dict[str, Any], draft.cluster), index))
    for name, table in draft.tables().items():
        for key in sorted(table.changes):
            old, new = table.committed(key), table.changes[key]
            if new is REMOVED:
                if old is not None:
                    events.append(Event(name, watch.REMOVE, old, index))
            elif new is not old:
                new["version"] = index  # type: ignore[index]
                events.append(Event(name, watch.CREATE if old is None else watch.UPDATE, new, index))  # type: ignore[arg-type]
    return events


MAX_REMEMBERED = 1024  # recent request tags; a retry comes within seconds of its first try


def _remember(requests: dict[str, Result], tag: str, outcome: Result) -> dict[str, Result]:
    """The request table with ``tag`` added and the oldest tags dropped (same on every replica).

    Changed in place: this runs under the state lock once the op has succeeded."""
    requests[tag] = outcome
    while len(requests) > MAX_REMEMBERED:
        del requests[next(iter(requests))]
    return requests


# -- handlers ------------------------------------------------------------------------------

def _bootstrap(draft: Draft, cmd: dict[str, Any]) -> Result:
    """Create the cluster object, the first node and the ingress network in one entry."""
    _require(draft.cluster is None, "ALREADY_EXISTS", "the cluster already exists")
    cluster = cast(Cluster, dict(cmd["cluster"], version=draft.index))
    stamp_defaults(cast(dict[str, Any], cluster))
    draft.cluster = cluster
    node = _new_node(draft, cmd["node"])
    draft.nodes[node["id"]] = node
    ingress = cmd.get("ingress")
    if ingress:
        networks.create_network(draft, ingress)
    return {"cluster_id": cluster["id"], "node_id": node["id"]}


def _cluster(draft: Draft) -> dict[str, Any]:
    """The draft's own copy of the cluster object, safe to change (handlers change it with the
    op's untyped fields, hence a plain dict)."""
    cluster = draft.cluster
    _require(cluster is not None, "FAILED_PRECONDITION", "the cluster does not exist")
    if cluster is draft.before["cluster"]:
        draft.cluster = copy_json(cluster)
    return cast(dict[str, Any], draft.cluster)


def _rotate_join_token(draft: Draft, cmd: dict[str, Any]) -> Result:
    cluster = _cluster(draft)
    role = cmd["role"]
    _require(role in ("worker", "manager"), "INVALID_ARGUMENT", f"unknown role {role}")
    cluster["join_tokens"][role] = cmd["token"]
    cluster["updated_at"] = cmd["now"]
    return {}


_SPEC_KEYS = frozenset({"task_history_limit", "dispatcher_heartbeat_ns", "node_cert_expiry_ns",
                        "snapshot_interval", "keep_old_snapshots", "autolock_managers"})


def _update_cluster(draft: Draft, cmd: dict[str, Any]) -> Result:
    """``swarmctl update`` / ``unlock-key --rotate``: spec fields, and the unlock key when
    ``unlock_key`` is given (empty: autolock off)."""
    cluster = _cluster(draft)
    changes = cmd.get("spec") or {}
    unknown = set(changes) - _SPEC_KEYS
    _require(not unknown, "INVALID_ARGUMENT", f"unknown cluster settings {sorted(unknown)}")
    cluster["spec"].update(changes)
    if cmd.get("unlock_key") is not None:
        cluster["unlock_key"] = cmd["unlock_key"]
    cluster["updated_at"] = cmd["now"]
    return {}


def _start_root_rotation(draft: Draft, cmd: dict[str, Any]) -> Result:
    """``swarmctl ca --rotate``: the new root (cert, key, cross-signed cert) to move nodes to."""
    cluster = _cluster(draft)
    rotation = cmd["rotation"]
    _require(all(isinstance(rotation.get(k), str) and rotation[k] for k in ("cert", "key", "cross_signed")),
             "INVALID_ARGUMENT", "incomplete root rotation")
    cluster["root_rotation"] = dict(rotation)
    if cmd.get("force_rotate") is not None:
        cluster["force_rotate"] = cmd["force_rotate"]
    cluster["spec"].update({k: v for k, v in (cmd.get("spec") or {}).items() if k in _SPEC_KEYS})
    _clear_cert_rotation(draft)
    cluster["updated_at"] = cmd["now"]
    return {}


def _clear_cert_rotation(draft: Draft) -> None:
    for node_id in draft.nodes.lookup("cert_rotate", "cert_rotate"):
        draft.nodes.edit(node_id)["cert_rotate"] = False


def _mark_cert_rotation(draft: Draft, cmd: dict[str, Any]) -> Result:
    """The next batch of nodes asked to renew onto the new root."""
    for node_id in cmd["ids"]:
        if node_id in draft.nodes:
            draft.nodes.edit(node_id)["cert_rotate"] = True
    return {}


def _finish_root_rotation(draft: Draft, cmd: dict[str, Any]) -> Result:
    """Every node holds a certificate from the new root: it becomes the trust root, and both join
    tokens are replaced (their digest names the root)."""
    cluster = _cluster(draft)
    rotation: dict[str, str] = cluster.get("root_rotation") or {}
    _require(bool(rotation), "FAILED_PRECONDITION", "no root rotation in progress")
    _require(rotation["cert"] == cmd["cert"], "FAILED_PRECONDITION", "the root rotation changed meanwhile")
    cluster["root_ca"] = {"cert": rotation["cert"], "key": rotation["key"]}
    cluster["root_rotation"] = None
    cluster["join_tokens"] = dict(cmd["join_tokens"])
    _clear_cert_rotation(draft)
    cluster["updated_at"] = cmd["now"]
    return {}


def _new_node(draft: Draft, fields: dict[str, Any]) -> Node:
    node = dict(fields, version=draft.index)
    stamp_defaults(node)
    return cast(Node, node)


def _node(draft: Draft, node_id: str) -> dict[str, Any]:
    """The draft's own copy of a node, safe to change (with the op's untyped fields)."""
    _require(node_id in draft.nodes, "NOT_FOUND", f"node {node_id} not found")
    return cast(dict[str, Any], draft.nodes.edit(node_id))


def _update_node(draft: Draft, cmd: dict[str, Any]) -> Result:
    node = _node(draft, cmd["id"])
    availability = cmd.get("availability")
    if availability:
        _require(availability in ("active", "pause", "drain"), "INVALID_ARGUMENT",
                 f"invalid availability {availability!r}")
        node["availability"] = availability
    labels = node.setdefault("labels", {})
    for key in cmd.get("label_rm", []):
        _require(key in labels, "INVALID_ARGUMENT", f"key {key} doesn't exist in node's labels")
        del labels[key]
    labels.update(cmd.get("label_add", {}))
    node["updated_at"] = cmd["now"]
    return {}


def _set_node_status(draft: Draft, cmd: dict[str, Any]) -> Result:
    node = _node(draft, cmd["id"])
    for key in ("state", "addr", "message", "tls", "cert_rotate"):
        if key in cmd:
            node[key] = cmd[key]
    if "manager_addr" in cmd and node.get("manager"):
        node["manager"]["addr"] = cmd["manager_addr"]
    node["updated_at"] = cmd["now"]
    return {}


def _add_node(draft: Draft, cmd: dict[str, Any]) -> Result:
    node = _new_node(draft, cmd["node"])
    _require(node["id"] not in draft.nodes, "ALREADY_EXISTS", f"node {node['id']} already exists")
    # One key, one node: a key that joined once cannot be used to add nodes again and again.
    key = node.get("public_key_sha256")
    _require(not key or not draft.nodes.lookup("public_key", key), "ALREADY_EXISTS", KEY_REUSED)
    draft.nodes[node["id"]] = node
    return {"node_id": node["id"]}


def _set_node_role(draft: Draft, cmd: dict[str, Any]) -> Result:
    """Desired role and manager address change together (promote, demote, Raft join/leave)."""
    node = _node(draft, cmd["id"])
    if "role" in cmd:
        _require(cmd["role"] in ("worker", "manager"), "INVALID_ARGUMENT", f"invalid role {cmd['role']!r}")
        node["role"] = cmd["role"]
    if "manager_addr" in cmd:
        node["manager"] = {"addr": cmd["manager_addr"]} if cmd["manager_addr"] else None
    for key in ("state", "message"):
        if key in cmd:
            node[key] = cmd[key]
    node["updated_at"] = cmd["now"]
    return {}


def _remove_node(draft: Draft, cmd: dict[str, Any]) -> Result:
    node_id = cmd["id"]
    _require(node_id in draft.nodes, "NOT_FOUND", f"node {node_id} not found")
    node = draft.nodes[node_id]
    _require(not node.get("manager"), "FAILED_PRECONDITION",
             f"rpc error: code = FailedPrecondition desc = node {node_id} is a cluster manager and is a "
             "member of the raft cluster. It must be demoted to worker before removal")
    if not cmd.get("force"):
        _require(node.get("state") == "down", "FAILED_PRECONDITION",
                 f"rpc error: code = FailedPrecondition desc = node {node_id} is not down and can't be removed")
    del draft.nodes[node_id]
    return {}


def _restore(draft: Draft, cmd: dict[str, Any]) -> Result:
    """Load a whole state into a fresh store (force-new-cluster)."""
    _require(draft.cluster is None, "FAILED_PRECONDITION", "restore needs an empty store")
    restored = from_json(cmd["state"])
    restored["index"] = max(draft.index, restored["index"] + 1)
    draft.restored = restored
    return {}
