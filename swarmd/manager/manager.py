"""A manager: builds its components (the replicated store, the network allocator, the
leader-only role manager, root rotation, scheduler and orchestrator) and is the one way to the
store for the rest.

Reads are served from this manager's copy of the state, after checking it is (or follows) a
live leader; writes are proposed as JSON ops and their results mapped to Docker's errors. What
each kind of object's calls do with them is in ``controlapi``; the CA's admissions and renewals
in ``issuer``; Raft membership calls in ``membership``.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc

from swarmd import errors
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import rotation
from swarmd.errors import SwarmError
from swarmd.manager import convert, nodetls, requestid, rootrotation
from swarmd.manager.allocator import networks as allocation
from swarmd.manager.leadership import LeaderSupervisor
from swarmd.manager.orchestration import Orchestrator
from swarmd.manager.roles import RoleManager
from swarmd.manager.scheduling import Scheduler
from swarmd.store.machine import Result, State, StateMachine, encode_op
from swarmd.store.objects import Cluster, Node
from swarmd.store.state import Hooks
from swarmd.store.raft import MAX_OP_BYTES, OpTooLarge, RaftStore, StoreError
from swarmd.store.transport import PeerNetwork
from swarmd.timeutil import now_rfc3339

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a set_node_status op stores (swarmd.store.machine); a node's description is not among them.
NODE_STATUS_FIELDS = frozenset({"state", "addr", "message", "tls", "cert_rotate"})

# The gRPC status of each refusal code a store op can answer.
REFUSAL_CODES = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "INTERNAL": grpc.StatusCode.INTERNAL,
    "UNIMPLEMENTED": grpc.StatusCode.UNIMPLEMENTED,
}


def effective_role(node: Mapping[str, Any]) -> str:
    """What a node is now: its desired role, except that a manager whose demotion is under way
    remains a manager until it has been taken out of Raft."""
    return "manager" if node.get("manager") else str(node["role"])


def cluster_of(state: State) -> Cluster:
    cluster = state["cluster"]
    if cluster is None:
        raise SwarmError("the cluster object does not exist yet", grpc.StatusCode.FAILED_PRECONDITION)
    return cluster


def node_field(node: Node | None, key: str) -> Any:
    """One field of a node that may be gone (None then)."""
    return None if node is None else cast(Mapping[str, Any], node).get(key)


class LeadershipMoved(SwarmError):
    """This manager handed the leadership over while serving the call: the new leader finishes it."""

    def __init__(self) -> None:
        super().__init__("the leadership moved to another manager; retry there", grpc.StatusCode.ABORTED)


class Manager:
    def __init__(self, node_id: str, raft_dir: Path, peers: Sequence[str] = (),
                 network: PeerNetwork | None = None, *, data_key: bytes, other_keys: Sequence[bytes] = ()) -> None:
        self.node_id = node_id
        self.machine = StateMachine(Hooks(legacy_network_allocation=allocation.legacy_allocation))
        self.allocator = allocation.NetworkAllocator()
        self.network = network
        self.roles = RoleManager(self)
        self.root_rotation = rootrotation.RootRotationReconciler(self)
        # Scheduler before orchestrator: a new leader places what waits before it makes more.
        self.leadership = LeaderSupervisor([self.roles, self.root_rotation, Scheduler(self), Orchestrator(self)])
        self.store = RaftStore(node_id, raft_dir, self.machine, peers, network=network, data_key=data_key,
                               other_keys=other_keys, on_leader_change=self.leadership.leadership_changed)
        self.role_lock = threading.Lock()      # role changes: check and store one at a time
        self._changed = threading.Condition()  # notified after every apply
        self.machine.add_listener(self._on_change)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        self.store.start()
        if not self.store.wait_leader(timeout) or not self.store.wait_ready(timeout):
            log.warning("raft store started without a leader within %.0fs", timeout)

    def stop(self) -> None:
        self.leadership.close()
        self.store.stop()
        if self.network is not None:
            self.network.close()

    def _on_change(self) -> None:
        """After every apply (apply thread): wake what waits for the store."""
        self.root_rotation.kick()
        with self._changed:
            self._changed.notify_all()

    def wait_until(self, predicate: Callable[[State], bool], timeout: float) -> bool:
        """Wait for this manager's copy of the state to satisfy ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.machine.read(predicate):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
        return True

    # -- plumbing ------------------------------------------------------------------------------
    def propose(self, kind: str, **fields: Any) -> Result:
        """Propose an op; its result once applied, or its refusal as Docker's error."""
        return self.succeeded(self.propose_result(kind, **fields))

    def propose_result(self, kind: str, **fields: Any) -> Result:
        """Propose an op and return its result, refused or not (the write committed either way)."""
        limit = None if kind == "restore" else MAX_OP_BYTES
        tag = requestid.next_tag()
        if tag is not None:
            fields["rid"] = tag
        try:
            result = self.store.propose(encode_op(kind, **fields), max_bytes=limit)
        except OpTooLarge as e:
            raise SwarmError(f"request too large: {e}", grpc.StatusCode.RESOURCE_EXHAUSTED) from None
        except StoreError as e:
            if e.no_leader:
                raise SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN) from None
            raise SwarmError(f"the write did not commit: {e}", grpc.StatusCode.ABORTED) from None
        requestid.committed()  # a failed result committed too: the entry is in the log
        return result

    @staticmethod
    def succeeded(result: Result) -> Result:
        if not result.get("ok"):
            raise SwarmError(result["message"], REFUSAL_CODES.get(result.get("code", ""), grpc.StatusCode.UNKNOWN))
        return result

    def read(self, fn: Callable[[State], T]) -> T:
        """A read the CLI shows. On the leader it is linearizable: a call's reads are answered
        only once a majority has confirmed this leader after the call arrived, or a write of the
        call committed (``requestid``; a leader cut off in a minority refuses with Docker's
        no-leader text). A follower answers from its own copy while it knows a leader
        (``info``); everything else is forwarded to the leader."""
        if self.store.is_leader():
            # In a call, once this leader has applied everything committed before its term, the
            # read is confirmed once, before the call answers; otherwise it is confirmed first.
            if not (requestid.in_call() and self.store.applied_own_term() and requestid.read_in_call()):
                self.confirm_leadership()
        elif requestid.in_leader_only_call():
            raise SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN)  # the leadership moved mid-call
        elif self.store.leader_id() is None:
            raise SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN)
        return self.machine.read(fn)

    def confirm_leadership(self) -> None:
        """Docker's no-leader refusal unless a majority confirms this leader now."""
        try:
            self.store.confirm_leadership()
        except StoreError:
            raise SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN) from None

    def cluster(self) -> Cluster:
        """A shallow copy (the store replaces the cluster object on a change, never edits it)."""
        return self.read(lambda state: copy.copy(cluster_of(state)))

    def reachable(self, node_id: str) -> bool:
        return node_id == self.node_id or self.store.is_connected(node_id)

    def is_leader(self) -> bool:
        return self.store.is_leader()

    def leader_addr(self) -> str | None:
        leader = self.store.leader_id()
        if leader is None:
            return None
        return self.manager_addr_of(leader)

    def manager_addr_of(self, node_id: str) -> str | None:
        def addr(state: State) -> str | None:
            node = state["nodes"].get(node_id)
            manager = node.get("manager") if node else None
            return manager["addr"] if manager else None
        return self.machine.read(addr)

    def role_of(self, node_id: str) -> str | None:
        """The role a node acts in; None when it is not (or no longer) in the swarm. A manager
        being demoted stays a manager until it is out of Raft (``roles``)."""
        def get(state: State) -> str | None:
            node = state["nodes"].get(node_id)
            return None if node is None else effective_role(node)
        return self.machine.peek(get)  # asked on every call to 2377, on the event loop

    def trust(self) -> tuple[str, dict[str, str], Callable[[str], str | None]]:
        """What the TLS layer needs: cluster ID, live join tokens, each node's desired role."""
        def get(state: State) -> tuple[str, dict[str, str]]:
            cluster = state["cluster"]
            if cluster is None:
                return "", {}
            return str(cluster["id"]), dict(cluster["join_tokens"])
        cluster_id, join_tokens = self.machine.peek(get)
        return cluster_id, join_tokens, self.role_of

    def heartbeat_ns(self) -> int:
        return int(self.machine.peek(lambda state: state["cluster"]["spec"]["dispatcher_heartbeat_ns"]
                                     if state["cluster"] else 5 * 10**9))

    # -- cluster -------------------------------------------------------------------------------
    def cluster_pb(self) -> pb.Cluster:
        return convert.cluster(self.cluster())

    def trusted_roots(self) -> bytes:
        """Roots node certificates may come from (empty until the store holds the cluster)."""
        return self.machine.peek(lambda s: rotation.trusted_roots(s["cluster"]) if s["cluster"] else b"")

    def tls_fields(self, node_id: str, peer_cert_pem: bytes, claimed_trust_root: str) -> dict[str, Any]:
        """A node's TLS state as node fields to store: the issuer of the certificate this manager
        verified on the node's connection, and the trust root it claims if that is a cluster root
        (see nodetls); its rotation request is cleared once that certificate comes from the
        desired root. Nothing when the certificate comes from no current root."""
        def read(state: State) -> tuple[tuple[str, ...], str, dict[str, Any]] | None:
            cluster = state["cluster"]
            if cluster is None:
                return None
            return (nodetls.cluster_roots(cluster), rotation.desired_root(cluster),
                    dict(state["nodes"].get(node_id) or {}))
        known = self.machine.peek(read)
        if known is None:
            return {}
        roots, desired, node = known
        issuer = nodetls.issuer_of(peer_cert_pem, roots)
        if issuer is None:
            return {}
        stored = (node.get("tls") or {}).get("trust_root")
        tls = {"trust_root": nodetls.trust_root(claimed_trust_root, roots, stored),
               "issuer_subject": issuer[0], "issuer_public_key": issuer[1]}
        fields: dict[str, Any] = {"tls": tls}
        if node.get("cert_rotate") and rotation.converged({"tls": tls}, rotation.spki_b64(desired.encode())):
            fields["cert_rotate"] = False
        return fields

    def counts(self) -> tuple[int, int]:
        """(nodes, managers) as docker info reports them."""
        def count(state: State) -> tuple[int, int]:
            nodes = state["nodes"].values()
            return len(nodes), sum(1 for n in nodes if n.get("manager"))
        return self.read(count)

    def managers(self) -> list[tuple[str, str]]:
        """(node ID, advertise address) of every manager the store knows, sorted (from the
        index: admissions and renewals ask on every call, and a swarm may hold 10,000 nodes)."""
        def addrs(state: State) -> list[tuple[str, str]]:
            nodes = state["nodes"]
            return [(i, m["addr"]) for i in nodes.lookup("manager", "manager") if (m := nodes[i].get("manager"))]
        return self.machine.read(addrs)

    # -- node status (the dispatcher's writes) ------------------------------------------------

    def node_status_changes(self, node_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The status fields that differ from the store ({} for a node it does not hold).

        Only fields a ``set_node_status`` op stores may be named: any other would make every
        write look like a change and still be a Raft entry that changes nothing."""
        unknown = set(fields) - NODE_STATUS_FIELDS
        if unknown:
            raise TypeError(f"not node status fields: {sorted(unknown)}")
        current = self.machine.peek(lambda state: dict(state["nodes"].get(node_id) or {}))
        return {k: v for k, v in fields.items() if current.get(k) != v} if current else {}

    def set_node_statuses(self, changes: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Write several nodes' status changes at once (they share Raft entries: after an
        election thousands of nodes report within seconds). Returns why each failed write
        failed, by node ID."""
        now = now_rfc3339()
        ids = list(changes)
        try:
            outcomes = self.store.propose_many([encode_op("set_node_status", id=i, now=now, **changes[i]) for i in ids])
        except StoreError as e:
            return {i: str(e) for i in ids}
        failed = {}
        for node_id, outcome in zip(ids, outcomes):
            if isinstance(outcome, Exception):
                failed[node_id] = str(outcome)
            elif not outcome.get("ok"):
                failed[node_id] = str(outcome.get("message"))
        return failed

    def set_node_status(self, node_id: str, **fields: Any) -> bool:
        """Write a node's status only when it changed (DESIGN §6: no heartbeat writes); True if
        a write was made."""
        changes = self.node_status_changes(node_id, fields)
        if changes:
            self.propose("set_node_status", id=node_id, now=now_rfc3339(), **changes)
        return bool(changes)

    # -- membership ----------------------------------------------------------------------------
    def manager_stats(self) -> tuple[int, int]:
        """(reachable, unreachable) managers, as the leader sees them."""
        reachable = unreachable = 0
        for node_id, _ in self.managers():
            if self.reachable(node_id):
                reachable += 1
            else:
                unreachable += 1
        return reachable, unreachable

    def removal_keeps_quorum(self, node_id: str) -> bool:
        """Whether the members left after removing ``node_id`` still make a reachable majority."""
        rest = [i for i in self.store.members() if i != node_id]
        return sum(1 for i in rest if self.reachable(i)) >= len(rest) // 2 + 1
