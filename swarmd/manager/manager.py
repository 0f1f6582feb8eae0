"""A manager's cluster operations over the replicated store.

Reads are served from this manager's copy of the state, after checking it is (or follows) a
live leader; writes are proposed as JSON ops and their results mapped to Docker's errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from swarmd import errors
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import ids, tokens
from swarmd.errors import SwarmError
from swarmd.manager import convert
from swarmd.store.machine import Result, State, StateMachine, encode_op
from swarmd.store.raft import RaftStore, StoreError
from swarmd.timeutil import now_rfc3339

log = logging.getLogger(__name__)

T = TypeVar("T")

_CODES = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


class Manager:
    def __init__(self, node_id: str, raft_dir: Path, peers: Sequence[str] = ()) -> None:
        self.node_id = node_id
        self.machine = StateMachine()
        self.store = RaftStore(node_id, raft_dir, self.machine, peers)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        self.store.start()
        if not self.store.wait_leader(timeout) or not self.store.wait_ready(timeout):
            log.warning("raft store started without a leader within %.0fs", timeout)

    def stop(self) -> None:
        self.store.stop()

    # -- plumbing ------------------------------------------------------------------------------
    def propose(self, kind: str, **fields: Any) -> Result:
        try:
            result = self.store.propose(encode_op(kind, **fields))
        except StoreError as e:
            if e.no_leader:
                raise SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN) from None
            raise SwarmError(f"the write did not commit: {e}", grpc.StatusCode.ABORTED) from None
        if not result.get("ok"):
            raise SwarmError(result["message"], _CODES.get(result.get("code", ""), grpc.StatusCode.UNKNOWN))
        return result

    def read(self, fn: Callable[[State], T]) -> T:
        """A read the CLI shows: refused without a leader, as Docker's managers do."""
        if self.store.leader_id() is None:
            raise SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN)
        return self.machine.read(fn)

    def cluster(self) -> dict[str, Any]:
        def get(state: State) -> dict[str, Any]:
            cluster = state["cluster"]
            if cluster is None:
                raise SwarmError("the cluster object does not exist yet", grpc.StatusCode.FAILED_PRECONDITION)
            return dict(cluster)
        return self.read(get)

    def _reachable(self, node_id: str) -> bool:
        return node_id == self.node_id

    # -- cluster -------------------------------------------------------------------------------
    def cluster_pb(self) -> pb.Cluster:
        return convert.cluster(self.cluster())

    def join_token(self, role: str, rotate: bool) -> str:
        if role not in ("worker", "manager"):
            raise errors.invalid(f"unknown role {role}")
        if rotate:
            root = self.cluster()["root_ca"]["cert"].encode()
            self.propose("rotate_join_token", role=role, token=tokens.generate_join_token(root),
                         now=now_rfc3339())
        return str(self.cluster()["join_tokens"][role])

    def counts(self) -> tuple[int, int]:
        """(nodes, managers) as docker info reports them."""
        def count(state: State) -> tuple[int, int]:
            nodes = state["nodes"].values()
            return len(nodes), sum(1 for n in nodes if n.get("manager"))
        return self.read(count)

    def manager_addrs(self) -> list[tuple[str, str]]:
        def addrs(state: State) -> list[tuple[str, str]]:
            return sorted((n["id"], n["manager"]["addr"]) for n in state["nodes"].values() if n.get("manager"))
        return self.machine.read(addrs)

    # -- nodes ---------------------------------------------------------------------------------
    def _node_pb(self, state: State, obj: dict[str, Any]) -> pb.Node:
        trust = convert.tls_info(state["cluster"]["root_ca"]["cert"])
        return convert.node(obj, trust, self.store.leader_id(), self._reachable)

    def list_nodes(self) -> list[pb.Node]:
        return self.read(lambda state: [self._node_pb(state, n) for n in state["nodes"].values()])

    def _resolve_node(self, state: State, ref: str) -> dict[str, Any]:
        nodes: dict[str, dict[str, Any]] = state["nodes"]
        if ref == "self":
            ref = self.node_id
        if ref in nodes:
            return nodes[ref]
        for candidates in ([n for n in nodes.values() if n["hostname"] == ref],
                           [n for n in nodes.values() if ref and n["id"].startswith(ref)]):
            if len(candidates) == 1:
                return candidates[0]
            if len(candidates) > 1:
                raise errors.invalid(f"node {ref} is ambiguous ({len(candidates)} matches found)")
        raise errors.not_found(f"node {ref} not found")

    def get_node(self, ref: str) -> pb.Node:
        return self.read(lambda state: self._node_pb(state, self._resolve_node(state, ref)))

    def update_node(self, ref: str, availability: str, label_add: Sequence[str],
                    label_rm: Sequence[str]) -> pb.Node:
        if availability and availability not in ("active", "pause", "drain"):
            raise errors.invalid(f'invalid availability "{availability}", only active, pause and drain are supported')
        adds: dict[str, str] = {}
        for item in label_add:
            key, _, value = item.partition("=")
            if not key:
                raise errors.invalid(f"invalid label {item!r}: the key is empty")
            adds[key] = value
        node_id = self.read(lambda state: str(self._resolve_node(state, ref)["id"]))
        self.propose("update_node", id=node_id, availability=availability, label_add=adds,
                     label_rm=list(label_rm), now=now_rfc3339())
        return self.get_node(node_id)

    def set_node_status(self, node_id: str, **fields: Any) -> None:
        """Write a node's status only when it changed (DESIGN §6: no heartbeat writes)."""
        current = self.machine.read(lambda state: dict(state["nodes"].get(node_id) or {}))
        changes = {k: v for k, v in fields.items() if current.get(k) != v}
        if current and changes:
            self.propose("set_node_status", id=node_id, now=now_rfc3339(), **changes)

    # -- networks ------------------------------------------------------------------------------
    def _resolve_network(self, state: State, ref: str) -> dict[str, Any]:
        networks: dict[str, dict[str, Any]] = state["networks"]
        if ref in networks:
            return networks[ref]
        for candidates in ([n for n in networks.values() if n["name"] == ref],
                           [n for n in networks.values() if ref and n["id"].startswith(ref)]):
            if len(candidates) == 1:
                return candidates[0]
            if len(candidates) > 1:
                raise errors.invalid(f"network {ref} is ambiguous ({len(candidates)} matches found)")
        raise errors.not_found(f"network {ref} not found")

    def list_networks(self) -> list[pb.Network]:
        return self.read(lambda state: [convert.network(n) for n in state["networks"].values()])

    def get_network(self, ref: str) -> pb.Network:
        return self.read(lambda state: convert.network(self._resolve_network(state, ref)))

    def create_network(self, req: pb.CreateNetworkRequest) -> pb.Network:
        name = req.name.strip()
        if not name:
            raise errors.invalid("network name must not be empty")
        if req.driver not in ("", "overlay"):
            raise errors.invalid(f'network driver "{req.driver}" is not supported: swarm networks use "overlay"')
        ipam = [{"subnet": c.subnet, "gateway": c.gateway} for c in req.ipam]
        result = self.propose(
            "create_network", id=ids.new_id(), name=name, ingress=req.ingress, internal=req.internal,
            attachable=req.attachable, ipam=ipam, labels=dict(req.labels), options=dict(req.options),
            now=now_rfc3339())
        return self.get_network(str(result["network_id"]))

    def remove_network(self, ref: str) -> pb.Network:
        network = self.get_network(ref)
        self.propose("remove_network", id=network.id)
        return network
