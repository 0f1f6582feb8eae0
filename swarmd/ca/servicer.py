"""The CA service: a joiner holding a join token gets its node's first certificate, a node of
the swarm renews its own (DESIGN §4).

What the CA decides is here: the CSR's bounds, which caller gets which certificate, how fast
joiners are admitted (``admission``). The cluster it issues from is the manager's, reached
through ``Issuer`` (``swarmd.manager.issuer`` provides it), so ca/ imports nothing of the
manager and the store and the manager can both build on ca/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeAlias, TypeVar

from swarmd import errors
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import admission
from swarmd.server import abort_on_error, peer_ip

Ctx: TypeAlias = Any  # grpc ships no type information
T = TypeVar("T")

MAX_CSR = 16 << 10       # a P-256 CSR is under 1 KiB


class Issuer(Protocol):
    """The manager this CA runs on."""

    def serve(self, call: Callable[[], T]) -> T:
        """Run a call on this manager (refused when it is none); what it reads as the leader is
        confirmed once, before it answers."""

    def root_ca(self) -> bytes:
        """The cluster's root CA certificate (PEM)."""

    def joining_role(self, context: Ctx) -> str | None:
        """"manager" or "worker" for a caller holding that join token; None for a node."""

    def node_id(self, context: Ctx) -> str:
        """A node caller's ID, from its verified certificate."""

    def admit_node(self, role: str, csr: bytes, availability: str, advertise_addr: str,
                   description: dict[str, Any], peer_ip: str) -> pb.IssueNodeCertificateResponse:
        """Create a joiner's node and issue its first certificate."""

    def renew_certificate(self, node_id: str, csr: bytes) -> pb.IssueNodeCertificateResponse:
        """Issue a node of the swarm a new certificate for the role it acts in."""


def check_csr(csr: bytes) -> bytes:
    """A certificate signing request, before anything parses it."""
    if len(csr) > MAX_CSR:
        raise errors.invalid(f"invalid CSR: {len(csr)} bytes, at most {MAX_CSR}")
    return csr


class CAServicer(pb_grpc.CAServicer):
    """Reachable with a join token (admission) and with any node certificate (renewal)."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer
        self.admissions = admission.AdmissionLimiter()

    @abort_on_error
    def GetRootCACertificate(self, request: pb.GetRootCACertificateRequest,
                             context: Ctx) -> pb.GetRootCACertificateResponse:
        return self.issuer.serve(lambda: pb.GetRootCACertificateResponse(certificate=self.issuer.root_ca()))

    @abort_on_error
    def IssueNodeCertificate(self, request: pb.IssueNodeCertificateRequest,
                             context: Ctx) -> pb.IssueNodeCertificateResponse:
        return self.issuer.serve(lambda: self._issue(request, context))

    def _issue(self, request: pb.IssueNodeCertificateRequest, context: Ctx) -> pb.IssueNodeCertificateResponse:
        check_csr(request.csr)
        role = self.issuer.joining_role(context)
        if role is not None:
            joiner_cert = context.auth_context()["x509_pem_cert"][0]
            self.admissions.admit(admission.token_key(joiner_cert), peer_ip(context))
            d = request.description
            description = {"hostname": d.hostname, "os": d.os, "architecture": d.architecture,
                           "nano_cpus": d.nano_cpus, "memory_bytes": d.memory_bytes,
                           "engine_version": d.engine_version}
            return self.issuer.admit_node(role, request.csr, request.availability, request.advertise_addr,
                                          description, peer_ip(context))
        return self.issuer.renew_certificate(self.issuer.node_id(context), request.csr)
