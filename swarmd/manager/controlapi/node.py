"""Nodes: list, inspect, update (availability, labels, promote and demote), remove."""

from __future__ import annotations

import time
from collections.abc import Sequence
import grpc

from swarmd import errors, gostr
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.errors import SwarmError
from swarmd.manager import convert
from swarmd.manager import fields as checks
from swarmd.manager.controlapi.base import ControlAPI, Ctx
from swarmd.manager.controlapi.forwarding import on_leader
from swarmd.manager.manager import LeadershipMoved, Manager, cluster_of, node_field
from swarmd.server import abort_on_error
from swarmd.store.objects import Node
from swarmd.store.state import State
from swarmd.timeutil import now_rfc3339

DEMOTE_TIMEOUT = 10.0
HANDOVER_TIMEOUT = 5.0


class NodeAPI(ControlAPI):
    @abort_on_error
    @on_leader
    def ListNodes(self, request: pb.ListNodesRequest, context: Ctx) -> pb.ListNodesResponse:
        manager = self.rt.require_manager()
        return pb.ListNodesResponse(nodes=list_nodes(manager), self_id=manager.node_id)

    @abort_on_error
    @on_leader
    def GetNode(self, request: pb.GetNodeRequest, context: Ctx) -> pb.GetNodeResponse:
        return pb.GetNodeResponse(node=get_node(self.rt.require_manager(), request.ref))

    @abort_on_error
    @on_leader
    def UpdateNode(self, request: pb.UpdateNodeRequest, context: Ctx) -> pb.UpdateNodeResponse:
        manager = self.rt.require_manager()
        if request.role:
            try:
                node_id, _ = set_role(manager, request.ref, request.role)
            except LeadershipMoved:
                # This leader's own demotion: the new leader takes it out of Raft and then tells
                # this node, through its session, that it is a worker now.
                self.rt.wait_demoted()
                return pb.UpdateNodeResponse(node=node_as_stored(manager, manager.node_id))
            return pb.UpdateNodeResponse(node=get_node(manager, node_id))
        node = update_node(manager, request.ref, request.availability, list(request.label_add),
                           list(request.label_rm))
        return pb.UpdateNodeResponse(node=node)

    @abort_on_error
    @on_leader
    def RemoveNode(self, request: pb.RemoveNodeRequest, context: Ctx) -> pb.RemoveNodeResponse:
        return pb.RemoveNodeResponse(node_id=remove_node(self.rt.require_manager(), request.ref, request.force))


def node_pb(manager: Manager, state: State, obj: Node) -> pb.Node:
    trust = convert.tls_info(cluster_of(state)["root_ca"]["cert"])
    return convert.node(obj, trust, manager.store.leader_id(), manager.reachable)


def list_nodes(manager: Manager) -> list[pb.Node]:
    return manager.read(lambda state: [node_pb(manager, state, n) for n in state["nodes"].values()])


def resolve_node(manager: Manager, state: State, ref: str, allow_self: bool = True) -> Node:
    nodes = state["nodes"]
    if ref == "self" and allow_self:
        ref = manager.node_id
    if ref in nodes:
        return nodes[ref]
    for candidates in ([n for n in nodes.values() if n["hostname"] == ref],
                       [n for n in nodes.values() if ref and n["id"].startswith(ref)]):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise errors.invalid(f"node {ref} is ambiguous ({len(candidates)} matches found)")
    raise errors.not_found(f"node {ref} not found")


def node_as_stored(manager: Manager, node_id: str) -> pb.Node:
    """A node as this manager's copy of the store has it (no leader needed)."""
    return manager.machine.read(lambda state: node_pb(manager, state, resolve_node(manager, state, node_id)))


def get_node(manager: Manager, ref: str) -> pb.Node:
    return manager.read(lambda state: node_pb(manager, state, resolve_node(manager, state, ref)))


def update_node(manager: Manager, ref: str, availability: str, label_add: Sequence[str],
                label_rm: Sequence[str]) -> pb.Node:
    """Docker's daemon reads the availability in any case and words a bad one
    ``invalid Availability: "x"``; an empty one means unchanged on this API."""
    if availability:
        if availability.lower() not in ("active", "pause", "drain"):
            shown = gostr.quote(availability[:64]) + ("..." if len(availability) > 64 else "")
            raise errors.invalid(f"invalid Availability: {shown}")
        availability = availability.lower()
    adds: dict[str, str] = {}
    for item in label_add:
        key, _, value = item.partition("=")
        if not key:
            raise errors.invalid(f"invalid label {item!r}: the key is empty")
        adds[key] = value
    node_id = manager.read(lambda state: str(resolve_node(manager, state, ref)["id"]))
    manager.propose("update_node", id=node_id, availability=availability, label_add=adds,
                    label_rm=list(label_rm), now=now_rfc3339())
    return get_node(manager, node_id)


def set_role(manager: Manager, ref: str, role: str) -> tuple[str, bool]:
    """Promote or demote; returns (node ID, changed). Runs on the leader.

    A demotion is stored after Docker's checks and completed by the role manager (out of
    Raft, then no longer a manager); this call returns once it is complete. Demoting this
    leader hands leadership over first: ``LeadershipMoved`` then tells the caller to ask
    the new leader, which finishes the demotion."""
    role = checks.check_node_role(role)
    with manager.role_lock:
        node = manager.read(lambda state: dict(resolve_node(manager, state, ref)))
        node_id = str(node["id"])
        if role == "manager":
            if node["role"] == "manager":
                return node_id, False
            manager.propose("set_node_role", id=node_id, role="manager", now=now_rfc3339())
            return node_id, True
        changed = node["role"] != "worker"
        if changed and node.get("manager"):
            _check_demotion(manager, node_id)
        if changed:
            manager.propose("set_node_role", id=node_id, role="worker", now=now_rfc3339())
    if node_id == manager.node_id:
        _wait_handover(manager)
    elif not manager.wait_until(lambda s: not node_field(s["nodes"].get(node_id), "manager"), DEMOTE_TIMEOUT):
        raise SwarmError(f"the demotion of {node_id} is stored but it is still a raft member; it is removed "
                         "as soon as that keeps a quorum", grpc.StatusCode.UNKNOWN)
    return node_id, changed


def _check_demotion(manager: Manager, node_id: str) -> None:
    """Docker's refusals: the last manager, or a removal that would lose the quorum (counting
    the demotions already under way as gone)."""
    keep = manager.machine.read(lambda s: [n["id"] for n in s["nodes"].values()
                                           if n.get("manager") and n["role"] == "manager" and n["id"] != node_id])
    if not keep:
        raise SwarmError(errors.rpc_text("FAILED_PRECONDITION", "attempting to demote the last manager of the swarm"))
    if sum(1 for i in keep if manager.reachable(i)) < len(keep) // 2 + 1:
        raise SwarmError(errors.rpc_text("FAILED_PRECONDITION", "can't remove member from the raft: "
                                         "this would result in a loss of quorum"))


def _wait_handover(manager: Manager) -> None:
    """This leader's own demotion: wait for the role manager to hand leadership over."""
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    while time.monotonic() < deadline:
        leader = manager.store.leader_id()
        if leader is not None and leader != manager.node_id:
            raise LeadershipMoved()
        time.sleep(0.01)
    with manager.role_lock:  # nobody took over: the demotion does not happen at all
        manager.propose("set_node_role", id=manager.node_id, role="manager", now=now_rfc3339())
    raise SwarmError("could not hand the leadership over to another manager; this manager was not demoted",
                     grpc.StatusCode.UNKNOWN)


def remove_node(manager: Manager, ref: str, force: bool) -> str:
    node = manager.read(lambda state: dict(resolve_node(manager, state, ref, allow_self=False)))
    manager.propose("remove_node", id=node["id"], force=force)
    return str(node["id"])
