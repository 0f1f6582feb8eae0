"""The replicated state machine: one entry point, ``apply(op)``, over a JSON-shaped state.

Every replica applies the same ops in the same order, so ``apply`` must be deterministic (all
randomness and timestamps come inside the op, chosen by the proposer) and must never raise: an
exception inside a pysyncobj apply stalls the node forever. Invalid ops become failed results.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from swarmd.manager.allocator import ipam
from swarmd.store import watch
from swarmd.store.watch import Event

OP_VERSION = 1
KEY_REUSED = ("rpc error: code = AlreadyExists desc = a node already joined the swarm with this certificate "
              "signing request's key; every node must make its own key")

State = dict[str, Any]
Result = dict[str, Any]
T = TypeVar("T")


class OpError(Exception):
    """Raised inside a handler to turn the op into a failed result."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


OUT_OF_SEQUENCE = "rpc error: code = Unknown desc = update out of sequence"  # swarmkit's ErrSequenceConflict


class _Table(dict[str, Any]):
    """A draft's table: records which keys the op set or deleted (its events)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.changed: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        self.changed.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.changed.add(key)
        super().__delitem__(key)


def empty_state() -> State:
    return {"index": 0, "cluster": None, "nodes": {}, "networks": {}}


def encode_op(kind: str, **fields: Any) -> bytes:
    """Serialise an op for the log: versioned JSON, never pickle."""
    return json.dumps({"v": OP_VERSION, "op": kind, **fields}, sort_keys=True, separators=(",", ":")).encode()


BATCH_OP = "batch"
_BATCH_HEAD = b'{"v":%d,"op":"%s","ops":[' % (OP_VERSION, BATCH_OP.encode())


def encode_batch(ops: list[bytes]) -> bytes:
    """Several encoded ops as one entry (group commit): joined as they are, not re-encoded."""
    return _BATCH_HEAD + b",".join(ops) + b"]}"


class StateMachine:
    """Holds the cluster state; readers take a consistent view under the same lock apply uses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: State = empty_state()
        self._handlers: dict[str, Callable[[State, dict[str, Any]], Result]] = {
            "bootstrap": _bootstrap,
            "rotate_join_token": _rotate_join_token,
            "update_cluster": _update_cluster,
            "start_root_rotation": _start_root_rotation,
            "mark_cert_rotation": _mark_cert_rotation,
            "finish_root_rotation": _finish_root_rotation,
            "update_node": _update_node,
            "set_node_status": _set_node_status,
            "create_network": _create_network,
            "remove_network": _remove_network,
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
                done = before.get("requests", {}).get(tag) if isinstance(tag, str) else None
                if done is not None:
                    return dict(done)  # a retried write that had committed: its first result
                _check_expected(before, cmd.get("expect"))
                # Handlers work on a draft so a failure half-way leaves the state as it was. The
                # draft copies only the containers; a handler replaces (never edits) an object it
                # changes (see _for_write), so a write costs O(objects), not a deep copy of all.
                draft = {**before, "nodes": _Table(before["nodes"]), "networks": _Table(before["networks"])}
                draft["index"] += 1
                outcome: Result = {"ok": True, "index": draft["index"], **handler(draft, cmd)}
                events = [Event("", watch.RESET, {}, draft["index"])] if cmd["op"] == "restore" \
                    else _changes(before, draft)
                if isinstance(tag, str):  # last: nothing after it can fail the op
                    draft["requests"] = _remember(before.get("requests"), tag, outcome)
                self._state = draft
            self.events.publish(events)
            return outcome
        except OpError as e:
            return _failed(e.code, e.message)
        except Exception as e:  # noqa: BLE001 - apply must never raise (see module docstring)
            return _failed("INTERNAL", f"failed to apply {type(e).__name__}: {e}")

    # -- reads and snapshots ---------------------------------------------------------------
    def read(self, fn: Callable[[State], T]) -> T:
        """Run ``fn`` on the current state under the lock; ``fn`` must not keep references."""
        with self._lock:
            return fn(self._state)

    def dump(self) -> State:
        with self._lock:
            return copy.deepcopy(self._state)

    def load(self, state: State) -> None:
        with self._lock:
            self._state = state
        self.events.publish([Event("", watch.RESET, {}, int(state.get("index", 0)))])
        for listener in self._listeners:
            listener()


def _check_expected(state: State, expect: Any) -> None:
    """An op based on what it read refuses to apply once those objects changed meanwhile:
    ``{"nodes": {id: version}, "networks": {...}, "cluster": version}``."""
    if not expect:
        return
    if not isinstance(expect, dict):
        raise OpError("INVALID_ARGUMENT", "malformed expected versions")
    for table, versions in expect.items():
        if table == "cluster":
            current = (state["cluster"] or {}).get("version")
            _require(current == versions, "UNKNOWN", OUT_OF_SEQUENCE)
            continue
        _require(table in ("nodes", "networks") and isinstance(versions, dict), "INVALID_ARGUMENT",
                 "malformed expected versions")
        for key, version in versions.items():
            current = (state[table].get(key) or {}).get("version")
            _require(current is not None and current == version, "UNKNOWN", OUT_OF_SEQUENCE)


def _changes(before: State, after: State) -> list[Event]:
    """The events of one op, in a fixed order; each changed object gets the op's index as its
    version (the same on every replica)."""
    index = after["index"]
    events: list[Event] = []
    if after.get("cluster") is not before.get("cluster") and after.get("cluster") is not None:
        cluster = after["cluster"]
        cluster["version"] = index
        events.append(Event("cluster", watch.CREATE if before.get("cluster") is None else watch.UPDATE,
                            cluster, index))
    for table in ("nodes", "networks"):
        now = after[table]
        changed = sorted(now.changed) if isinstance(now, _Table) else []
        if isinstance(now, _Table):
            now.changed = set()
        for key in changed:
            old, new = before[table].get(key), now.get(key)
            if new is None:
                if old is not None:
                    events.append(Event(table, watch.REMOVE, old, index))
            elif new is not old:
                new["version"] = index
                events.append(Event(table, watch.CREATE if old is None else watch.UPDATE, new, index))
    return events


MAX_REMEMBERED = 1024  # recent request tags; a retry comes within seconds of its first try


def _remember(requests: dict[str, Result] | None, tag: str, outcome: Result) -> dict[str, Result]:
    """The request table with ``tag`` added and the oldest tags dropped (same on every replica).

    Changed in place, not copied: this runs under the state lock once the op has succeeded, and
    the state it belonged to is replaced by the draft right after, so nobody sees it change."""
    table = requests if requests is not None else {}
    table[tag] = outcome
    while len(table) > MAX_REMEMBERED:
        del table[next(iter(table))]
    return table


def _failed(code: str, message: str) -> Result:
    return {"ok": False, "code": code, "message": message}


def _require(cond: bool, code: str, message: str) -> None:
    if not cond:
        raise OpError(code, message)


# -- handlers ------------------------------------------------------------------------------

def _bootstrap(state: State, cmd: dict[str, Any]) -> Result:
    """Create the cluster object, the first node and the ingress network in one entry."""
    _require(state["cluster"] is None, "ALREADY_EXISTS", "the cluster already exists")
    index = state["index"]
    cluster = dict(cmd["cluster"], version=index)
    state["cluster"] = cluster
    node = dict(cmd["node"], version=index)
    state["nodes"][node["id"]] = node
    ingress = cmd.get("ingress")
    if ingress:
        _create_network(state, ingress)
    return {"cluster_id": cluster["id"], "node_id": node["id"]}


def _cluster(state: State) -> dict[str, Any]:
    """The draft's own copy of the cluster object, safe to change."""
    cluster = state["cluster"]
    _require(cluster is not None, "FAILED_PRECONDITION", "the cluster does not exist")
    state["cluster"] = copy.deepcopy(cluster)
    return state["cluster"]  # type: ignore[no-any-return]


def _rotate_join_token(state: State, cmd: dict[str, Any]) -> Result:
    cluster = _cluster(state)
    role = cmd["role"]
    _require(role in ("worker", "manager"), "INVALID_ARGUMENT", f"unknown role {role}")
    cluster["join_tokens"][role] = cmd["token"]
    cluster["version"] = state["index"]
    cluster["updated_at"] = cmd["now"]
    return {}


_SPEC_KEYS = frozenset({"task_history_limit", "dispatcher_heartbeat_ns", "node_cert_expiry_ns",
                        "snapshot_interval", "keep_old_snapshots", "autolock_managers"})


def _update_cluster(state: State, cmd: dict[str, Any]) -> Result:
    """``swarmctl update`` / ``unlock-key --rotate``: spec fields, and the unlock key when
    ``unlock_key`` is given (empty: autolock off)."""
    cluster = _cluster(state)
    changes = cmd.get("spec") or {}
    unknown = set(changes) - _SPEC_KEYS
    _require(not unknown, "INVALID_ARGUMENT", f"unknown cluster settings {sorted(unknown)}")
    cluster["spec"].update(changes)
    if cmd.get("unlock_key") is not None:
        cluster["unlock_key"] = cmd["unlock_key"]
    cluster["version"] = state["index"]
    cluster["updated_at"] = cmd["now"]
    return {}


def _start_root_rotation(state: State, cmd: dict[str, Any]) -> Result:
    """``swarmctl ca --rotate``: the new root (cert, key, cross-signed cert) to move nodes to."""
    cluster = _cluster(state)
    rotation = cmd["rotation"]
    _require(all(isinstance(rotation.get(k), str) and rotation[k] for k in ("cert", "key", "cross_signed")),
             "INVALID_ARGUMENT", "incomplete root rotation")
    cluster["root_rotation"] = dict(rotation)
    if cmd.get("force_rotate") is not None:
        cluster["force_rotate"] = cmd["force_rotate"]
    cluster["spec"].update({k: v for k, v in (cmd.get("spec") or {}).items() if k in _SPEC_KEYS})
    _clear_cert_rotation(state)
    cluster["version"] = state["index"]
    cluster["updated_at"] = cmd["now"]
    return {}


def _clear_cert_rotation(state: State) -> None:
    for node_id, node in list(state["nodes"].items()):
        if node.get("cert_rotate"):
            state["nodes"][node_id] = {**node, "cert_rotate": False}


def _mark_cert_rotation(state: State, cmd: dict[str, Any]) -> Result:
    """The next batch of nodes asked to renew onto the new root."""
    for node_id in cmd["ids"]:
        if node_id in state["nodes"]:
            node = _node(state, node_id)
            node["cert_rotate"] = True
            node["version"] = state["index"]
    return {}


def _finish_root_rotation(state: State, cmd: dict[str, Any]) -> Result:
    """Every node holds a certificate from the new root: it becomes the trust root, and both join
    tokens are replaced (their digest names the root)."""
    cluster = _cluster(state)
    rotation: dict[str, str] = cluster.get("root_rotation") or {}
    _require(bool(rotation), "FAILED_PRECONDITION", "no root rotation in progress")
    _require(rotation["cert"] == cmd["cert"], "FAILED_PRECONDITION", "the root rotation changed meanwhile")
    cluster["root_ca"] = {"cert": rotation["cert"], "key": rotation["key"]}
    cluster["root_rotation"] = None
    cluster["join_tokens"] = dict(cmd["join_tokens"])
    _clear_cert_rotation(state)
    cluster["version"] = state["index"]
    cluster["updated_at"] = cmd["now"]
    return {}


def _node(state: State, node_id: str) -> dict[str, Any]:
    """The draft's own copy of a node, safe to change."""
    node = state["nodes"].get(node_id)
    _require(node is not None, "NOT_FOUND", f"node {node_id} not found")
    state["nodes"][node_id] = copy.deepcopy(node)
    return state["nodes"][node_id]  # type: ignore[no-any-return]


def _update_node(state: State, cmd: dict[str, Any]) -> Result:
    node = _node(state, cmd["id"])
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
    node["version"] = state["index"]
    node["updated_at"] = cmd["now"]
    return {}


def _set_node_status(state: State, cmd: dict[str, Any]) -> Result:
    node = _node(state, cmd["id"])
    for key in ("state", "addr", "message", "tls", "cert_rotate"):
        if key in cmd:
            node[key] = cmd[key]
    if "manager_addr" in cmd and node.get("manager"):
        node["manager"]["addr"] = cmd["manager_addr"]
    node["version"] = state["index"]
    node["updated_at"] = cmd["now"]
    return {}


def _create_network(state: State, cmd: dict[str, Any]) -> Result:
    networks: dict[str, dict[str, Any]] = state["networks"]
    name = cmd["name"]
    _require(all(n["name"] != name for n in networks.values()), "ALREADY_EXISTS",
             f"network with name {name} already exists")
    _require(cmd["id"] not in networks, "ALREADY_EXISTS", f"network {cmd['id']} already exists")
    if cmd.get("ingress"):
        existing = [n for n in networks.values() if n.get("ingress")]
        _require(not existing, "ALREADY_EXISTS",
                 f"rpc error: code = AlreadyExists desc = ingress network ({existing[0]['id'] if existing else ''}) "
                 "is already present")
    cluster = state["cluster"]
    _require(cluster is not None, "FAILED_PRECONDITION", "the cluster does not exist")
    used = {cfg["subnet"]: n["name"] for n in networks.values() for cfg in n["ipam"]}
    configs = []
    try:
        requested = cmd.get("ipam") or [{}]
        for req in requested:
            if req.get("subnet"):
                subnet = ipam.check_requested_subnet(req["subnet"], used)
            else:
                _require(not req.get("gateway"), "INVALID_ARGUMENT", "a gateway needs a subnet")
                subnet = ipam.allocate_subnet(cluster["default_addr_pool"], cluster["subnet_size"], list(used))
            gateway = ipam.check_gateway(req["gateway"], subnet) if req.get("gateway") else ipam.default_gateway(subnet)
            used[subnet] = name
            configs.append({"subnet": subnet, "gateway": gateway})
        vxlan_ids: list[int] = []
        taken = [v for n in networks.values() for v in n["vxlan_ids"]]
        for _ in configs:
            vni = ipam.allocate_vxlan_id(taken + vxlan_ids)
            vxlan_ids.append(vni)
    except ipam.IPAMError as e:
        raise OpError("INVALID_ARGUMENT", str(e)) from None
    network = {
        "id": cmd["id"],
        "name": name,
        "created_at": cmd["now"],
        "driver": "overlay",
        "ingress": bool(cmd.get("ingress")),
        "internal": bool(cmd.get("internal")),
        "attachable": bool(cmd.get("attachable")),
        "ipam": configs,
        "vxlan_ids": vxlan_ids,
        "labels": dict(cmd.get("labels", {})),
        "options": dict(cmd.get("options", {})),
        "version": state["index"],
    }
    networks[network["id"]] = network
    return {"network_id": network["id"]}


def _remove_network(state: State, cmd: dict[str, Any]) -> Result:
    network_id = cmd["id"]
    _require(network_id in state["networks"], "NOT_FOUND", f"network {network_id} not found")
    del state["networks"][network_id]
    return {}


def _add_node(state: State, cmd: dict[str, Any]) -> Result:
    node = dict(cmd["node"], version=state["index"])
    _require(node["id"] not in state["nodes"], "ALREADY_EXISTS", f"node {node['id']} already exists")
    # One key, one node: a key that joined once cannot be used to add nodes again and again.
    key = node.get("public_key_sha256")
    _require(not key or all(n.get("public_key_sha256") != key for n in state["nodes"].values()),
             "ALREADY_EXISTS", KEY_REUSED)
    state["nodes"][node["id"]] = node
    return {"node_id": node["id"]}


def _set_node_role(state: State, cmd: dict[str, Any]) -> Result:
    """Desired role and manager address change together (promote, demote, Raft join/leave)."""
    node = _node(state, cmd["id"])
    if "role" in cmd:
        _require(cmd["role"] in ("worker", "manager"), "INVALID_ARGUMENT", f"invalid role {cmd['role']!r}")
        node["role"] = cmd["role"]
    if "manager_addr" in cmd:
        node["manager"] = {"addr": cmd["manager_addr"]} if cmd["manager_addr"] else None
    for key in ("state", "message"):
        if key in cmd:
            node[key] = cmd[key]
    node["version"] = state["index"]
    node["updated_at"] = cmd["now"]
    return {}


def _remove_node(state: State, cmd: dict[str, Any]) -> Result:
    node = _node(state, cmd["id"])
    _require(not node.get("manager"), "FAILED_PRECONDITION",
             f"rpc error: code = FailedPrecondition desc = node {node['id']} is a cluster manager and is a "
             "member of the raft cluster. It must be demoted to worker before removal")
    if not cmd.get("force"):
        _require(node.get("state") == "down", "FAILED_PRECONDITION",
                 f"rpc error: code = FailedPrecondition desc = node {node['id']} is not down and can't be removed")
    del state["nodes"][node["id"]]
    return {}


def _restore(state: State, cmd: dict[str, Any]) -> Result:
    """Load a whole state into a fresh store (force-new-cluster)."""
    _require(state["cluster"] is None, "FAILED_PRECONDITION", "restore needs an empty store")
    restored = cmd["state"]
    index = max(state["index"], int(restored["index"]) + 1)
    state.clear()
    state.update(restored)
    state["index"] = index
    return {}
