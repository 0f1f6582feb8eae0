"""This host's calls: served by the node that was asked, never forwarded (``docker info``,
``version``, ``swarm init|join|leave|unlock``)."""

from __future__ import annotations

import platform

import grpc
import pysyncobj.version

from swarmd import API_VERSION, __version__
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.manager.controlapi.base import ControlAPI, Ctx
from swarmd.server import abort_on_error


class SwarmAPI(ControlAPI):
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
    def Unlock(self, request: pb.UnlockRequest, context: Ctx) -> pb.UnlockResponse:
        self.rt.unlock(request.key)
        return pb.UnlockResponse()
