"""Networks: list, inspect, create (the leader picks subnets, gateways and VXLAN IDs), remove."""

from __future__ import annotations

import grpc

from swarmd import errors
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import ids
from swarmd.errors import SwarmError
from swarmd.manager import convert, requestid
from swarmd.manager import fields as checks
from swarmd.manager.allocator import networks as allocation
from swarmd.manager.controlapi.base import ControlAPI, Ctx
from swarmd.manager.controlapi.forwarding import on_leader
from swarmd.manager.manager import REFUSAL_CODES, Manager
from swarmd.server import abort_on_error
from swarmd.store.objects import Network
from swarmd.store.refusal import OpError
from swarmd.store.state import Result, State
from swarmd.timeutil import now_rfc3339


class NetworkAPI(ControlAPI):
    @abort_on_error
    @on_leader
    def ListNetworks(self, request: pb.ListNetworksRequest, context: Ctx) -> pb.ListNetworksResponse:
        return pb.ListNetworksResponse(networks=list_networks(self.rt.require_manager()))

    @abort_on_error
    @on_leader
    def GetNetwork(self, request: pb.GetNetworkRequest, context: Ctx) -> pb.GetNetworkResponse:
        return pb.GetNetworkResponse(network=get_network(self.rt.require_manager(), request.ref))

    @abort_on_error
    @on_leader
    def CreateNetwork(self, request: pb.CreateNetworkRequest, context: Ctx) -> pb.CreateNetworkResponse:
        return pb.CreateNetworkResponse(network=create_network(self.rt.require_manager(), request))

    @abort_on_error
    @on_leader
    def RemoveNetwork(self, request: pb.RemoveNetworkRequest, context: Ctx) -> pb.RemoveNetworkResponse:
        return pb.RemoveNetworkResponse(network=remove_network(self.rt.require_manager(), request.ref))


def resolve_network(state: State, ref: str) -> Network:
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


def list_networks(manager: Manager) -> list[pb.Network]:
    return manager.read(lambda state: [convert.network(n) for n in state["networks"].values()])


def get_network(manager: Manager, ref: str) -> pb.Network:
    return manager.read(lambda state: convert.network(resolve_network(state, ref)))


def create_network(manager: Manager, req: pb.CreateNetworkRequest) -> pb.Network:
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
        return manager.propose_result("create_network", **fields, **picked, now=now_rfc3339())
    requests = [allocation.Request(c.subnet, c.gateway) for c in req.ipam]
    try:
        result = manager.allocator.create(manager.read, propose, name, req.ingress, requests,
                                          requestid.next_write_committed)
    except OpError as e:
        raise SwarmError(e.message, REFUSAL_CODES.get(e.code, grpc.StatusCode.UNKNOWN)) from None
    return get_network(manager, str(manager.succeeded(result)["network_id"]))


def remove_network(manager: Manager, ref: str) -> pb.Network:
    network = get_network(manager, ref)
    manager.propose("remove_network", id=network.id)
    return network
