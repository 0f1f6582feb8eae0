"""A manager's cluster operations over the replicated store.

Reads are served from this manager's copy of the state, after checking it is (or follows) a
live leader; writes are proposed as JSON ops and their results mapped to Docker's errors.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc

from swarmd import errors, gostr
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import ids, keyfile, pki, rotation, tokens
from swarmd.errors import SwarmError
from swarmd.initplan import spec_overrides
from swarmd.manager import admission, convert, nodetls, requestid, rootrotation
from swarmd.manager.allocator import networks as allocation
from swarmd.manager.leadership import LeaderSupervisor
from swarmd.manager.roles import RoleManager
from swarmd.manager import fields as checks
from swarmd.store.machine import Result, State, StateMachine, encode_op
from swarmd.store.objects import Cluster, Network, Node
from swarmd.store.refusal import OpError
from swarmd.store.state import Hooks
from swarmd.store.raft import MAX_OP_BYTES, OpTooLarge, RaftStore, StoreError
from swarmd.store.transport import PeerNetwork
from swarmd.timeutil import now_rfc3339

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a set_node_status op stores (swarmd.store.machine); a node's description is not among them.
NODE_STATUS_FIELDS = frozenset({"state", "addr", "message", "tls", "cert_rotate"})

_CODES = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


DEMOTE_TIMEOUT = 10.0
HANDOVER_TIMEOUT = 5.0


def effective_role(node: Mapping[str, Any]) -> str:
    """What a node is now: its desired role, except that a manager whose demotion is under way
    remains a manager until it has been taken out of Raft."""
    return "manager" if node.get("manager") else str(node["role"])


def _cluster_of(state: State) -> Cluster:
    cluster = state["cluster"]
    if cluster is None:
        raise SwarmError("the cluster object does not exist yet", grpc.StatusCode.FAILED_PRECONDITION)
    return cluster


def _field(node: Node | None, key: str) -> Any:
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
        self.leadership = LeaderSupervisor([self.roles, self.root_rotation])
        self.store = RaftStore(node_id, raft_dir, self.machine, peers, network=network, data_key=data_key,
                               other_keys=other_keys, on_leader_change=self.leadership.leadership_changed)
        self._role_lock = threading.Lock()     # role changes: check and store one at a time
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
        return self._succeeded(self.propose_result(kind, **fields))

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
    def _succeeded(result: Result) -> Result:
        if not result.get("ok"):
            raise SwarmError(result["message"], _CODES.get(result.get("code", ""), grpc.StatusCode.UNKNOWN))
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
        return self.read(lambda state: copy.copy(_cluster_of(state)))

    def _reachable(self, node_id: str) -> bool:
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
        return self.machine.read(get)

    def trust(self) -> tuple[str, dict[str, str], Callable[[str], str | None]]:
        """What the TLS layer needs: cluster ID, live join tokens, each node's desired role."""
        def get(state: State) -> tuple[str, dict[str, str]]:
            cluster = state["cluster"]
            if cluster is None:
                return "", {}
            return str(cluster["id"]), dict(cluster["join_tokens"])
        cluster_id, join_tokens = self.machine.read(get)
        return cluster_id, join_tokens, self.role_of

    def heartbeat_ns(self) -> int:
        return int(self.machine.read(lambda state: state["cluster"]["spec"]["dispatcher_heartbeat_ns"]
                                     if state["cluster"] else 5 * 10**9))

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

    def update_cluster(self, req: pb.UpdateClusterRequest) -> tuple[Cluster, str]:
        """Spec changes and autolock; returns the cluster and its unlock key afterwards."""
        changes = spec_overrides(req)
        autolock = bool(self.cluster()["spec"]["autolock_managers"])
        unlock_key: str | None = None
        if req.has_autolock:
            changes["autolock_managers"] = req.autolock
            if req.autolock and not autolock:
                unlock_key = keyfile.generate_unlock_key()
            elif not req.autolock and autolock:
                unlock_key = ""
            autolock = req.autolock
        if req.rotate_unlock_key:
            if not autolock:
                raise SwarmError("cannot rotate because autolock is not turned on")
            unlock_key = keyfile.generate_unlock_key()
        if req.rotate_root_ca:
            rootrotation.start(self, req)  # also applies --cert-expiry
            changes.pop("node_cert_expiry_ns", None)
        elif req.signing_ca_cert or req.signing_ca_key:
            raise errors.invalid("a signing CA is only used to rotate the root CA")
        if changes or unlock_key is not None:
            self.propose("update_cluster", spec=changes, unlock_key=unlock_key, now=now_rfc3339())
        cluster = self.cluster()
        return cluster, str(cluster.get("unlock_key", ""))

    def trusted_roots(self) -> bytes:
        """Roots node certificates may come from (empty until the store holds the cluster)."""
        return self.machine.read(lambda s: rootrotation.trusted_roots(s["cluster"]) if s["cluster"] else b"")

    def tls_fields(self, node_id: str, peer_cert_pem: bytes, claimed_trust_root: str) -> dict[str, Any]:
        """A node's TLS state as node fields to store: the issuer of the certificate this manager
        verified on the node's connection, and the trust root it claims if that is a cluster root
        (see nodetls); its rotation request is cleared once that certificate comes from the
        desired root. Nothing when the certificate comes from no current root."""
        def read(state: State) -> tuple[tuple[str, ...], str, dict[str, Any]] | None:
            cluster = state["cluster"]
            if cluster is None:
                return None
            return (nodetls.cluster_roots(cluster), rootrotation.desired_root(cluster),
                    dict(state["nodes"].get(node_id) or {}))
        known = self.machine.read(read)
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
        if node.get("cert_rotate") and rootrotation.converged({"tls": tls}, rotation.spki_b64(desired.encode())):
            fields["cert_rotate"] = False
        return fields

    def counts(self) -> tuple[int, int]:
        """(nodes, managers) as docker info reports them."""
        def count(state: State) -> tuple[int, int]:
            nodes = state["nodes"].values()
            return len(nodes), sum(1 for n in nodes if n.get("manager"))
        return self.read(count)

    def managers(self) -> list[tuple[str, str]]:
        """(node ID, advertise address) of every manager the store knows, sorted."""
        def addrs(state: State) -> list[tuple[str, str]]:
            return sorted((n["id"], m["addr"]) for n in state["nodes"].values() if (m := n.get("manager")))
        return self.machine.read(addrs)

    # -- nodes ---------------------------------------------------------------------------------
    def _node_pb(self, state: State, obj: Node) -> pb.Node:
        trust = convert.tls_info(_cluster_of(state)["root_ca"]["cert"])
        return convert.node(obj, trust, self.store.leader_id(), self._reachable)

    def list_nodes(self) -> list[pb.Node]:
        return self.read(lambda state: [self._node_pb(state, n) for n in state["nodes"].values()])

    def _resolve_node(self, state: State, ref: str, allow_self: bool = True) -> Node:
        nodes = state["nodes"]
        if ref == "self" and allow_self:
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

    def node_as_stored(self, node_id: str) -> pb.Node:
        """A node as this manager's copy of the store has it (no leader needed)."""
        return self.machine.read(lambda state: self._node_pb(state, self._resolve_node(state, node_id)))

    def get_node(self, ref: str) -> pb.Node:
        return self.read(lambda state: self._node_pb(state, self._resolve_node(state, ref)))

    def update_node(self, ref: str, availability: str, label_add: Sequence[str],
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
        node_id = self.read(lambda state: str(self._resolve_node(state, ref)["id"]))
        self.propose("update_node", id=node_id, availability=availability, label_add=adds,
                     label_rm=list(label_rm), now=now_rfc3339())
        return self.get_node(node_id)

    def node_status_changes(self, node_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The status fields that differ from the store ({} for a node it does not hold).

        Only fields a ``set_node_status`` op stores may be named: any other would make every
        write look like a change and still be a Raft entry that changes nothing."""
        unknown = set(fields) - NODE_STATUS_FIELDS
        if unknown:
            raise TypeError(f"not node status fields: {sorted(unknown)}")
        current = self.machine.read(lambda state: dict(state["nodes"].get(node_id) or {}))
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

    # -- networks ------------------------------------------------------------------------------
    def _resolve_network(self, state: State, ref: str) -> Network:
        networks = state["networks"]
        if ref in networks:
            return networks[ref]
        for candidates in ([networks[i] for i in networks.lookup("name", ref)],
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
        name = req.name  # as given: " web" is not a DNS name, and not "web" either
        if not name:
            raise errors.invalid("network name must not be empty")
        if req.driver not in ("", "overlay"):
            raise errors.invalid(f'network driver "{req.driver}" is not supported: swarm networks use "overlay"')
        checks.check_network_spec(name, req.ingress, req.attachable, len(req.ipam))
        fields = {"id": ids.new_id(), "name": name, "ingress": req.ingress, "internal": req.internal,
                  "attachable": req.attachable, "labels": dict(req.labels), "options": dict(req.options)}

        def propose(choice: allocation.Choice | None) -> Result:
            picked = choice.op_fields() if choice is not None else {}
            return self.propose_result("create_network", **fields, **picked, now=now_rfc3339())
        requests = [allocation.Request(c.subnet, c.gateway) for c in req.ipam]
        try:
            result = self.allocator.create(self.read, propose, name, req.ingress, requests,
                                           requestid.next_write_committed)
        except OpError as e:
            raise SwarmError(e.message, _CODES.get(e.code, grpc.StatusCode.UNKNOWN)) from None
        return self.get_network(str(self._succeeded(result)["network_id"]))

    def remove_network(self, ref: str) -> pb.Network:
        network = self.get_network(ref)
        self.propose("remove_network", id=network.id)
        return network

    # -- membership ----------------------------------------------------------------------------
    def _sign(self, csr: bytes, node_id: str, role: str) -> tuple[bytes, str]:
        cluster = self.cluster()
        expiry = timedelta(microseconds=cluster["spec"]["node_cert_expiry_ns"] // 1000)
        ca_cert, ca_key, chain = rootrotation.signing_material(cluster)
        try:
            cert = pki.sign_node_certificate(ca_cert, ca_key, csr, node_id, cluster["id"],
                                             pki.MANAGER_ROLE if role == "manager" else pki.WORKER_ROLE, expiry)
        except ValueError as e:
            raise errors.invalid(str(e)) from None
        return cert + chain, str(cluster["id"])

    def admit_node(self, role: str, csr: bytes, availability: str, advertise_addr: str,
                   description: dict[str, Any], peer_ip: str) -> pb.IssueNodeCertificateResponse:
        """A joiner holding a valid token: create its node and issue its first certificate."""
        availability = availability or "active"
        if availability not in ("active", "pause", "drain"):
            raise errors.invalid(f"invalid availability {gostr.quote(availability[:40])}")
        description = checks.check_description(description)
        host = checks.advertised_host(advertise_addr)
        node_id = ids.new_id()
        cert, cluster_id = self._sign(csr, node_id, role)  # a bad CSR fails before anything is stored
        now = now_rfc3339()
        node = {
            "id": node_id, "created_at": now, "updated_at": now, "role": role, "availability": availability,
            "labels": {}, **description, "state": "unknown", "addr": host or peer_ip, "message": "",
            "manager": None,
            # The store refuses a second node with the same key (one CSR, one node).
            "public_key_sha256": admission.public_key_sha256(cert),
        }
        self.propose("add_node", node=node)
        log.info("admitted node %s as %s from %s", node_id, role, peer_ip)
        return pb.IssueNodeCertificateResponse(
            node_id=node_id, certificate=cert, cluster_id=cluster_id, role=role,
            managers=[pb.RemoteManager(node_id=i, addr=a) for i, a in self.managers()],
            heartbeat_period_ns=self.heartbeat_ns(), root_ca=self.cluster()["root_ca"]["cert"].encode())

    def renew_certificate(self, node_id: str, csr: bytes) -> pb.IssueNodeCertificateResponse:
        """A node of this swarm asks again: the certificate carries the role it acts in (a manager
        whose demotion is under way stays one until it is out of Raft)."""
        role = self.role_of(node_id)
        if role is None:
            raise errors.not_found(f"node {node_id} not found when attempting to renew certificate")
        cert, cluster_id = self._sign(csr, node_id, str(role))
        return pb.IssueNodeCertificateResponse(
            node_id=node_id, certificate=cert, cluster_id=cluster_id, role=str(role),
            managers=[pb.RemoteManager(node_id=i, addr=a) for i, a in self.managers()],
            heartbeat_period_ns=self.heartbeat_ns(), root_ca=self.cluster()["root_ca"]["cert"].encode())

    def raft_join(self, node_id: str, addr: str, check: Callable[[str, str], None]) -> list[tuple[str, str]]:
        """Leader side of a manager joining Raft: reachability check, record, add member."""
        role = self.machine.read(lambda state: _field(state["nodes"].get(node_id), "role"))
        if role != "manager":
            raise SwarmError(f"node {node_id} is not a manager", grpc.StatusCode.PERMISSION_DENIED)
        started = time.monotonic()
        try:
            check(node_id, addr)
            log.debug("%s answers at %s (%.3fs)", node_id, addr, time.monotonic() - started)
        except SwarmError:
            # The joiner gives up and returns to inactive: do not keep a node that never was.
            self.propose("remove_node", id=node_id, force=True)
            raise
        self.propose("set_node_role", id=node_id, manager_addr=addr, now=now_rfc3339())
        log.debug("recorded manager %s (%.3fs)", node_id, time.monotonic() - started)
        if node_id not in self.store.members():
            self._add_member_async(node_id)
        log.info("manager %s joins raft at %s", node_id, addr)
        return [(i, a) for i, a in self.managers()]

    def _add_member_async(self, node_id: str) -> None:
        """Raft commits the new membership only once the new member acks, and it starts only
        after this answer: append the change, answer as soon as it is appended (pysyncobj applies
        membership on append), and let the commit complete in the background."""
        failure: list[str] = []

        def add() -> None:
            try:
                self.store.add_member(node_id, timeout=30.0)
            except StoreError as e:
                failure.append(str(e))
                log.warning("adding %s to raft did not complete: %s", node_id, e)

        thread = threading.Thread(target=add, name="raft-add-member", daemon=True)
        thread.start()
        deadline = time.monotonic() + 5.0
        while node_id not in self.store.members():
            if failure or time.monotonic() > deadline:
                raise SwarmError(f"could not add {node_id} to the raft cluster: "
                                 f"{failure[0] if failure else 'timed out'}", grpc.StatusCode.UNKNOWN)
            time.sleep(0.005)

    def manager_stats(self) -> tuple[int, int]:
        """(reachable, unreachable) managers, as the leader sees them."""
        reachable = unreachable = 0
        for node_id, _ in self.managers():
            if self._reachable(node_id):
                reachable += 1
            else:
                unreachable += 1
        return reachable, unreachable

    def raft_leave(self, node_id: str) -> None:
        """Leader side of a manager leaving: out of Raft, then a Down worker in the node list."""
        if node_id in self.store.members():
            try:
                self.store.remove_member(node_id)
            except StoreError as e:  # e.g. the leader itself: a clear refusal, not an internal error
                raise SwarmError(f"could not remove {node_id} from the raft cluster: {e}",
                                 grpc.StatusCode.FAILED_PRECONDITION) from None
        self.propose("set_node_role", id=node_id, role="worker", manager_addr="", state="down",
                     message="node left the swarm", now=now_rfc3339())

    def set_role(self, ref: str, role: str) -> tuple[str, bool]:
        """Promote or demote; returns (node ID, changed). Runs on the leader.

        A demotion is stored after Docker's checks and completed by the role manager (out of
        Raft, then no longer a manager); this call returns once it is complete. Demoting this
        leader hands leadership over first: ``LeadershipMoved`` then tells the caller to ask
        the new leader, which finishes the demotion."""
        role = checks.check_node_role(role)
        with self._role_lock:
            node = self.read(lambda state: dict(self._resolve_node(state, ref)))
            node_id = str(node["id"])
            if role == "manager":
                if node["role"] == "manager":
                    return node_id, False
                self.propose("set_node_role", id=node_id, role="manager", now=now_rfc3339())
                return node_id, True
            changed = node["role"] != "worker"
            if changed and node.get("manager"):
                self._check_demotion(node_id)
            if changed:
                self.propose("set_node_role", id=node_id, role="worker", now=now_rfc3339())
        if node_id == self.node_id:
            self._wait_handover()
        elif not self.wait_until(lambda s: not _field(s["nodes"].get(node_id), "manager"), DEMOTE_TIMEOUT):
            raise SwarmError(f"the demotion of {node_id} is stored but it is still a raft member; it is removed "
                             "as soon as that keeps a quorum", grpc.StatusCode.UNKNOWN)
        return node_id, changed

    def _check_demotion(self, node_id: str) -> None:
        """Docker's refusals: the last manager, or a removal that would lose the quorum (counting
        the demotions already under way as gone)."""
        keep = self.machine.read(lambda s: [n["id"] for n in s["nodes"].values()
                                            if n.get("manager") and n["role"] == "manager" and n["id"] != node_id])
        if not keep:
            raise SwarmError(errors.rpc_text("FAILED_PRECONDITION", "attempting to demote the last manager of the swarm"))
        if sum(1 for i in keep if self._reachable(i)) < len(keep) // 2 + 1:
            raise SwarmError(errors.rpc_text("FAILED_PRECONDITION", "can't remove member from the raft: "
                                             "this would result in a loss of quorum"))

    def removal_keeps_quorum(self, node_id: str) -> bool:
        """Whether the members left after removing ``node_id`` still make a reachable majority."""
        rest = [i for i in self.store.members() if i != node_id]
        return sum(1 for i in rest if self._reachable(i)) >= len(rest) // 2 + 1

    def _wait_handover(self) -> None:
        """This leader's own demotion: wait for the role manager to hand leadership over."""
        deadline = time.monotonic() + HANDOVER_TIMEOUT
        while time.monotonic() < deadline:
            leader = self.store.leader_id()
            if leader is not None and leader != self.node_id:
                raise LeadershipMoved()
            time.sleep(0.01)
        with self._role_lock:  # nobody took over: the demotion does not happen at all
            self.propose("set_node_role", id=self.node_id, role="manager", now=now_rfc3339())
        raise SwarmError("could not hand the leadership over to another manager; this manager was not demoted",
                         grpc.StatusCode.UNKNOWN)

    def remove_node(self, ref: str, force: bool) -> str:
        node = self.read(lambda state: dict(self._resolve_node(state, ref, allow_self=False)))
        self.propose("remove_node", id=node["id"], force=force)
        return str(node["id"])

