"""This manager as the CA issues from it (``swarmd.ca.servicer.Issuer``): node admission and
certificate renewal against the store, with the caller's identity from the TLS layer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from swarmd import errors, gostr
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import admission, ids, pki, rotation
from swarmd.manager import authz
from swarmd.manager import fields as checks
from swarmd.manager.controlapi.forwarding import confirmed_once
from swarmd.manager.manager import Manager
from swarmd.timeutil import now_rfc3339

if TYPE_CHECKING:
    from swarmd.node.runtime import NodeRuntime

log = logging.getLogger(__name__)

T = TypeVar("T")

_JOINING_ROLES = {authz.JOIN_MANAGER: "manager", authz.JOIN_WORKER: "worker"}


class ManagerIssuer:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime

    def serve(self, call: Callable[[], T]) -> T:
        return confirmed_once(self.rt.require_manager(), call)

    def root_ca(self) -> bytes:
        return self.rt.require_manager().cluster()["root_ca"]["cert"].encode()

    def joining_role(self, context: Any) -> str | None:
        return _JOINING_ROLES.get(self.rt.remote_role(context) or "")

    def node_id(self, context: Any) -> str:
        return self.rt.security_identity(context)

    def admit_node(self, role: str, csr: bytes, availability: str, advertise_addr: str,
                   description: dict[str, Any], peer_ip: str) -> pb.IssueNodeCertificateResponse:
        return admit_node(self.rt.require_manager(), role, csr, availability, advertise_addr, description, peer_ip)

    def renew_certificate(self, node_id: str, csr: bytes) -> pb.IssueNodeCertificateResponse:
        return renew_certificate(self.rt.require_manager(), node_id, csr)


def _sign(manager: Manager, csr: bytes, node_id: str, role: str) -> tuple[bytes, str]:
    cluster = manager.cluster()
    expiry = timedelta(microseconds=cluster["spec"]["node_cert_expiry_ns"] // 1000)
    ca_cert, ca_key, chain = rotation.signing_material(cluster)
    try:
        cert = pki.sign_node_certificate(ca_cert, ca_key, csr, node_id, cluster["id"],
                                         pki.MANAGER_ROLE if role == "manager" else pki.WORKER_ROLE, expiry)
    except ValueError as e:
        raise errors.invalid(str(e)) from None
    return cert + chain, str(cluster["id"])


def admit_node(manager: Manager, role: str, csr: bytes, availability: str, advertise_addr: str,
               description: dict[str, Any], peer_ip: str) -> pb.IssueNodeCertificateResponse:
    """A joiner holding a valid token: create its node and issue its first certificate."""
    availability = availability or "active"
    if availability not in ("active", "pause", "drain"):
        raise errors.invalid(f"invalid availability {gostr.quote(availability[:40])}")
    description = checks.check_description(description)
    host = checks.advertised_host(advertise_addr)
    node_id = ids.new_id()
    cert, cluster_id = _sign(manager, csr, node_id, role)  # a bad CSR fails before anything is stored
    now = now_rfc3339()
    node = {
        "id": node_id, "created_at": now, "updated_at": now, "role": role, "availability": availability,
        "labels": {}, **description, "state": "unknown", "addr": host or peer_ip, "message": "",
        "manager": None,
        # The store refuses a second node with the same key (one CSR, one node).
        "public_key_sha256": admission.public_key_sha256(cert),
    }
    manager.propose("add_node", node=node)
    log.info("admitted node %s as %s from %s", node_id, role, peer_ip)
    return pb.IssueNodeCertificateResponse(
        node_id=node_id, certificate=cert, cluster_id=cluster_id, role=role,
        managers=[pb.RemoteManager(node_id=i, addr=a) for i, a in manager.managers()],
        heartbeat_period_ns=manager.heartbeat_ns(), root_ca=manager.cluster()["root_ca"]["cert"].encode())


def renew_certificate(manager: Manager, node_id: str, csr: bytes) -> pb.IssueNodeCertificateResponse:
    """A node of this swarm asks again: the certificate carries the role it acts in (a manager
    whose demotion is under way stays one until it is out of Raft)."""
    role = manager.role_of(node_id)
    if role is None:
        raise errors.not_found(f"node {node_id} not found when attempting to renew certificate")
    cert, cluster_id = _sign(manager, csr, node_id, str(role))
    return pb.IssueNodeCertificateResponse(
        node_id=node_id, certificate=cert, cluster_id=cluster_id, role=str(role),
        managers=[pb.RemoteManager(node_id=i, addr=a) for i, a in manager.managers()],
        heartbeat_period_ns=manager.heartbeat_ns(), root_ca=manager.cluster()["root_ca"]["cert"].encode())
