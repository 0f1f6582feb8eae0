"""gRPC servicers: thin adapters from the wire to ``NodeRuntime`` and ``Manager``."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import pysyncobj.version

from swarmd import API_VERSION, __version__
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.server import abort_on_error

if TYPE_CHECKING:
    from swarmd.node import NodeRuntime

Ctx: TypeAlias = Any  # grpc ships no type information


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
    def Leave(self, request: pb.LeaveRequest, context: Ctx) -> pb.LeaveResponse:
        self.rt.leave(request.force)
        return pb.LeaveResponse()

    @abort_on_error
    def GetCluster(self, request: pb.GetClusterRequest, context: Ctx) -> pb.GetClusterResponse:
        return pb.GetClusterResponse(cluster=self.rt.require_manager().cluster_pb())

    @abort_on_error
    def GetJoinToken(self, request: pb.GetJoinTokenRequest, context: Ctx) -> pb.GetJoinTokenResponse:
        manager = self.rt.require_manager()
        token = manager.join_token(request.role, request.rotate)
        local = self.rt.local
        return pb.GetJoinTokenResponse(token=token, manager_addr=local.advertise_addr if local else "")

    @abort_on_error
    def ListNodes(self, request: pb.ListNodesRequest, context: Ctx) -> pb.ListNodesResponse:
        manager = self.rt.require_manager()
        return pb.ListNodesResponse(nodes=manager.list_nodes(), self_id=manager.node_id)

    @abort_on_error
    def GetNode(self, request: pb.GetNodeRequest, context: Ctx) -> pb.GetNodeResponse:
        return pb.GetNodeResponse(node=self.rt.require_manager().get_node(request.ref))

    @abort_on_error
    def UpdateNode(self, request: pb.UpdateNodeRequest, context: Ctx) -> pb.UpdateNodeResponse:
        node = self.rt.require_manager().update_node(request.ref, request.availability,
                                                     list(request.label_add), list(request.label_rm))
        return pb.UpdateNodeResponse(node=node)

    @abort_on_error
    def ListNetworks(self, request: pb.ListNetworksRequest, context: Ctx) -> pb.ListNetworksResponse:
        return pb.ListNetworksResponse(networks=self.rt.require_manager().list_networks())

    @abort_on_error
    def GetNetwork(self, request: pb.GetNetworkRequest, context: Ctx) -> pb.GetNetworkResponse:
        return pb.GetNetworkResponse(network=self.rt.require_manager().get_network(request.ref))

    @abort_on_error
    def CreateNetwork(self, request: pb.CreateNetworkRequest, context: Ctx) -> pb.CreateNetworkResponse:
        return pb.CreateNetworkResponse(network=self.rt.require_manager().create_network(request))

    @abort_on_error
    def RemoveNetwork(self, request: pb.RemoveNetworkRequest, context: Ctx) -> pb.RemoveNetworkResponse:
        return pb.RemoveNetworkResponse(network=self.rt.require_manager().remove_network(request.ref))

    @abort_on_error
    def GetUnlockKey(self, request: pb.GetUnlockKeyRequest, context: Ctx) -> pb.GetUnlockKeyResponse:
        cluster = self.rt.require_manager().cluster()
        return pb.GetUnlockKeyResponse(unlock_key=cluster.get("unlock_key", ""))


class CAServicer(pb_grpc.CAServicer):
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime

    @abort_on_error
    def GetRootCACertificate(self, request: pb.GetRootCACertificateRequest,
                             context: Ctx) -> pb.GetRootCACertificateResponse:
        root = self.rt.require_manager().cluster()["root_ca"]["cert"].encode()
        return pb.GetRootCACertificateResponse(certificate=root)
