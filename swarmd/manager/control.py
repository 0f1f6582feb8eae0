"""gRPC servicers: thin adapters from the wire to ``NodeRuntime`` and ``Manager``."""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import pysyncobj.version

from swarmd import API_VERSION, __version__, errors
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import ids
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.manager import admission, authz, convert, fields, requestid
from swarmd.manager.manager import LeadershipMoved
from swarmd.manager.dispatcher import peer_ip
from swarmd.errors import SwarmError
from swarmd.remotes import REQUEST_ID_KEY
from swarmd.server import abort_on_error

if TYPE_CHECKING:
    from swarmd.node.runtime import NodeRuntime

Ctx: TypeAlias = Any  # grpc ships no type information


def on_leader(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Serve on the leader; elsewhere forward the call there. "self" means the node that was
    asked, so it is resolved here, and answers that name "this manager" are made local again.

    On the leader, the writes of a forwarded call are tagged with the forwarder's request ID
    (``requestid``), so the forwarder may retry a call whose answer it lost. A leader that
    hands its leadership over while serving (its own demotion) forwards the rest."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: ControlServicer, request: Any, context: Ctx) -> Any:
        manager = self.rt.require_manager()
        # Every call has an ID (the forwarder's, or a new one): if this leader loses the
        # leadership while its write is in flight, the new leader is asked with the same ID and
        # applies the write only if it had not committed.
        request_id = _request_id(context) or ids.new_id()
        if manager.is_leader():
            try:
                with requestid.scope(request_id):
                    return _serve(manager, fn, self, request, context)
            except LeadershipMoved:
                pass  # forwarded below, to the manager that leads now
            except SwarmError as e:
                if e.code != grpc.StatusCode.ABORTED:  # the write did not commit: the leader changed
                    raise
        if getattr(request, "ref", None) == "self" and name != "RemoveNode":  # `node rm` takes no "self"
            request.ref = manager.node_id
        try:
            response = self.rt.forward_control(name, request, request_id)
        except SwarmError as e:
            if e.code != grpc.StatusCode.ABORTED:
                raise
            with requestid.scope(request_id):
                return _serve(manager, fn, self, request, context)  # elected meanwhile
        if hasattr(response, "self_id"):
            response.self_id = manager.node_id
        if hasattr(response, "manager_addr") and self.rt.local is not None:
            response.manager_addr = self.rt.local.advertise_addr
        return response
    return wrapper


def _serve(manager: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Serve a call here; its answer, or its refusal, once it is linearizable (``Manager.read``):
    a refusal read from the state (a node not found, say) must not come from old state either."""
    try:
        response = fn(*args)
    except LeadershipMoved:
        raise
    except SwarmError as e:
        if e.message != errors.NO_LEADER and requestid.needs_confirmation():
            manager.confirm_leadership()
        raise
    if requestid.needs_confirmation():
        manager.confirm_leadership()
    return response


def confirmed_once(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For a call any manager serves itself (the CA): what it reads as the leader is confirmed
    once, before it answers, instead of once per read (``Manager.read``)."""
    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: Ctx) -> Any:
        manager = self.rt.require_manager()
        with requestid.scope(None, leader_only=False):
            return _serve(manager, fn, self, request, context)
    return wrapper


def _request_id(context: Ctx) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return value
    return None


class ControlServicer(pb_grpc.ControlServicer):
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime

    @abort_on_error
    def Info(self, request: pb.InfoRequest, context: Ctx) -> pb.InfoResponse:
        return self.rt.info()

    @abort_on_error
    def Version(self, request: pb.VersionRequest, context: Ctx) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=__version__, api_version=API_VERSION, python_version=platform.python_version(),
            os=platform.system().lower(), arch=platform.machine(),
            pysyncobj_version=pysyncobj.version.VERSION, grpc_version=grpc.__version__)

    @abort_on_error
    def Init(self, request: pb.InitRequest, context: Ctx) -> pb.InitResponse:
        return self.rt.init(request)

    @abort_on_error
    def Join(self, request: pb.JoinRequest, context: Ctx) -> pb.JoinResponse:
        return self.rt.join(request)

    @abort_on_error
    def Leave(self, request: pb.LeaveRequest, context: Ctx) -> pb.LeaveResponse:
        self.rt.leave(request.force)
        return pb.LeaveResponse()

    @abort_on_error
    @on_leader
    def GetCluster(self, request: pb.GetClusterRequest, context: Ctx) -> pb.GetClusterResponse:
        return pb.GetClusterResponse(cluster=self.rt.require_manager().cluster_pb())

    @abort_on_error
    @on_leader
    def GetJoinToken(self, request: pb.GetJoinTokenRequest, context: Ctx) -> pb.GetJoinTokenResponse:
        manager = self.rt.require_manager()
        token = manager.join_token(request.role, request.rotate)
        local = self.rt.local
        return pb.GetJoinTokenResponse(token=token, manager_addr=local.advertise_addr if local else "")

    @abort_on_error
    @on_leader
    def ListNodes(self, request: pb.ListNodesRequest, context: Ctx) -> pb.ListNodesResponse:
        manager = self.rt.require_manager()
        return pb.ListNodesResponse(nodes=manager.list_nodes(), self_id=manager.node_id)

    @abort_on_error
    @on_leader
    def GetNode(self, request: pb.GetNodeRequest, context: Ctx) -> pb.GetNodeResponse:
        return pb.GetNodeResponse(node=self.rt.require_manager().get_node(request.ref))

    @abort_on_error
    @on_leader
    def UpdateNode(self, request: pb.UpdateNodeRequest, context: Ctx) -> pb.UpdateNodeResponse:
        manager = self.rt.require_manager()
        if request.role:
            try:
                node_id, _ = manager.set_role(request.ref, request.role)
            except LeadershipMoved:
                # This leader's own demotion: the new leader takes it out of Raft and then tells
                # this node, through its session, that it is a worker now.
                self.rt.wait_demoted()
                return pb.UpdateNodeResponse(node=manager.node_as_stored(manager.node_id))
            return pb.UpdateNodeResponse(node=manager.get_node(node_id))
        node = manager.update_node(request.ref, request.availability, list(request.label_add),
                                   list(request.label_rm))
        return pb.UpdateNodeResponse(node=node)

    @abort_on_error
    @on_leader
    def RemoveNode(self, request: pb.RemoveNodeRequest, context: Ctx) -> pb.RemoveNodeResponse:
        return pb.RemoveNodeResponse(node_id=self.rt.require_manager().remove_node(request.ref, request.force))

    @abort_on_error
    @on_leader
    def ListNetworks(self, request: pb.ListNetworksRequest, context: Ctx) -> pb.ListNetworksResponse:
        return pb.ListNetworksResponse(networks=self.rt.require_manager().list_networks())

    @abort_on_error
    @on_leader
    def GetNetwork(self, request: pb.GetNetworkRequest, context: Ctx) -> pb.GetNetworkResponse:
        return pb.GetNetworkResponse(network=self.rt.require_manager().get_network(request.ref))

    @abort_on_error
    @on_leader
    def CreateNetwork(self, request: pb.CreateNetworkRequest, context: Ctx) -> pb.CreateNetworkResponse:
        return pb.CreateNetworkResponse(network=self.rt.require_manager().create_network(request))

    @abort_on_error
    @on_leader
    def RemoveNetwork(self, request: pb.RemoveNetworkRequest, context: Ctx) -> pb.RemoveNetworkResponse:
        return pb.RemoveNetworkResponse(network=self.rt.require_manager().remove_network(request.ref))

    @abort_on_error
    @on_leader
    def GetUnlockKey(self, request: pb.GetUnlockKeyRequest, context: Ctx) -> pb.GetUnlockKeyResponse:
        cluster = self.rt.require_manager().cluster()
        return pb.GetUnlockKeyResponse(unlock_key=cluster.get("unlock_key", ""))

    @abort_on_error
    @on_leader
    def UpdateCluster(self, request: pb.UpdateClusterRequest, context: Ctx) -> pb.UpdateClusterResponse:
        cluster, unlock_key = self.rt.require_manager().update_cluster(request)
        return pb.UpdateClusterResponse(cluster=convert.cluster(cluster), unlock_key=unlock_key)

    @abort_on_error
    def Unlock(self, request: pb.UnlockRequest, context: Ctx) -> pb.UnlockResponse:
        self.rt.unlock(request.key)
        return pb.UnlockResponse()


class CAServicer(pb_grpc.CAServicer):
    """Reachable with a join token (admission) and with any node certificate (renewal)."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime
        self.admissions = admission.AdmissionLimiter()

    @abort_on_error
    @confirmed_once
    def GetRootCACertificate(self, request: pb.GetRootCACertificateRequest,
                             context: Ctx) -> pb.GetRootCACertificateResponse:
        root = self.rt.require_manager().cluster()["root_ca"]["cert"].encode()
        return pb.GetRootCACertificateResponse(certificate=root)

    @abort_on_error
    @confirmed_once
    def IssueNodeCertificate(self, request: pb.IssueNodeCertificateRequest,
                             context: Ctx) -> pb.IssueNodeCertificateResponse:
        manager = self.rt.require_manager()
        fields.check_csr(request.csr)
        role = self.rt.remote_role(context)
        if role in (authz.JOIN_WORKER, authz.JOIN_MANAGER):
            joiner_cert = context.auth_context()["x509_pem_cert"][0]
            self.admissions.admit(admission.token_key(joiner_cert), peer_ip(context))
            d = request.description
            description = {"hostname": d.hostname, "os": d.os, "architecture": d.architecture,
                           "nano_cpus": d.nano_cpus, "memory_bytes": d.memory_bytes,
                           "engine_version": d.engine_version}
            return manager.admit_node("manager" if role == authz.JOIN_MANAGER else "worker", request.csr,
                                      request.availability, request.advertise_addr, description,
                                      peer_ip(context))
        return manager.renew_certificate(self.rt.security_identity(context), request.csr)


class RaftMembershipServicer(pb_grpc.RaftMembershipServicer):
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime

    @abort_on_error
    def Join(self, request: pb.RaftJoinRequest, context: Ctx) -> pb.RaftJoinResponse:
        manager = self.rt.require_manager()
        node_id = self.rt.security_identity(context)
        self.rt.require_leader(manager)
        addr = fields.check_raft_join_addr(request.addr)
        members = manager.raft_join(node_id, addr, self.rt.check_manager_reachable)
        return pb.RaftJoinResponse(members=[pb.RemoteManager(node_id=i, addr=a) for i, a in members])

    @abort_on_error
    def Leave(self, request: pb.RaftLeaveRequest, context: Ctx) -> pb.RaftLeaveResponse:
        manager = self.rt.require_manager()
        node_id = self.rt.security_identity(context)
        self.rt.require_leader(manager)
        manager.raft_leave(node_id)
        return pb.RaftLeaveResponse()
