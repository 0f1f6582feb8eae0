"""The one Control servicer gRPC registers: every kind's calls, inherited from its mixin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.manager.controlapi.cluster import ClusterAPI
from swarmd.manager.controlapi.logs import LogsAPI
from swarmd.manager.controlapi.network import NetworkAPI
from swarmd.manager.controlapi.node import NodeAPI
from swarmd.manager.controlapi.service import ServiceAPI
from swarmd.manager.controlapi.swarm import SwarmAPI
from swarmd.manager.controlapi.streambridge import bridge
from swarmd.manager.controlapi.task import TaskAPI
from swarmd.server import abort_on_error


class ControlServicer(SwarmAPI, ClusterAPI, NodeAPI, NetworkAPI, ServiceAPI, TaskAPI, LogsAPI,
                      pb_grpc.ControlServicer):
    """A new kind is its module in this package and one more base class above. The generated
    base comes last, so its UNIMPLEMENTED stubs answer only what no kind serves."""


class RemoteControlServicer(ControlServicer):
    """The remote API's: the same calls, its one long stream (``ServiceLogs``, forwarded by
    other managers) run as a coroutine, so that it ends when its caller goes away."""

    @abort_on_error
    async def ServiceLogs(self, request: spb.ServiceLogsRequest, context: Any) -> AsyncIterator[spb.ServiceLogsMessage]:
        async for item in bridge(self.service_logs, request):
            yield item
