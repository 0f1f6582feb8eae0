"""Validation of ``swarmctl init`` in Docker's order (swarm-behaviour.md §3.2): everything is
checked before anything is created, so a refused init leaves the node exactly as it was."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

from swarmd import __version__, errors, ifaces, netaddr
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.manager.allocator import ipam, networks
from swarmd.manager.controlapi.cluster import DEFAULT_SPEC, spec_overrides

DEFAULT_LISTEN_ADDR = "0.0.0.0:2377"
DEFAULT_DATA_PATH_PORT = 4789
AVAILABILITIES = ("active", "pause", "drain")


@dataclass
class InitPlan:
    """A fully validated init request."""

    listen_addr: str
    advertise_addr: str
    local_addr: str
    data_path_addr: str
    data_path_port: int
    availability: str
    default_addr_pool: list[str]
    subnet_size: int
    spec: dict[str, Any]
    ingress: networks.Choice     # the ingress network's subnet, gateway and VXLAN ID


def host_description(hostname: str) -> dict[str, Any]:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "hostname": hostname,
        "os": platform.system().lower(),
        "architecture": platform.machine(),
        "nano_cpus": (os.cpu_count() or 1) * 10**9,
        "memory_bytes": pages,
        "engine_version": __version__,
    }


def check_availability(value: str) -> str:
    availability = (value or "active").lower()
    if availability not in AVAILABILITIES:
        raise errors.invalid(f'invalid availability "{value}", only active, pause and drain are supported')
    return availability


def check_listen_port(port: str) -> None:
    """The port the remote API will bind, refused up front as Go's ``net.Listen`` refuses it
    (Docker then reports the manager's failure to listen). An empty port means any free port."""
    why = ""
    if port and not (port.isascii() and port.isdigit()):
        why = f"lookup tcp/{port}: unknown port"
    elif port and int(port) > 65535:
        why = f"address {port}: invalid port"
    if why:
        raise errors.invalid(f"manager stopped: failed to listen on remote API address: listen tcp: {why}")


def plan_init(req: pb.InitRequest) -> InitPlan:
    """Docker's validation order (swarm-behaviour.md §3.2), all before anything is created."""
    listen = req.listen_addr or DEFAULT_LISTEN_ADDR
    try:
        interfaces = ifaces.list_interfaces()
        listen_ip, listen_port = netaddr.resolve_listen_addr(listen, interfaces)
        check_listen_port(listen_port)
        adv_host, adv_port = netaddr.resolve_advertise_addr(req.advertise_addr, listen_port, interfaces)
        data_path = netaddr.resolve_data_path_addr(req.data_path_addr, interfaces)
        local_addr = netaddr.local_addr(listen_ip, adv_host, interfaces)
    except netaddr.AddrError as e:
        raise errors.invalid(str(e)) from None
    try:
        pools, size = ipam.validate_pool(list(req.default_addr_pool), req.subnet_size)
        ingress = networks.first_network(pools, size)
    except ipam.IPAMError as e:
        raise errors.invalid(str(e)) from None
    port = req.data_path_port or DEFAULT_DATA_PATH_PORT
    if not 1024 <= port <= 49151:
        raise errors.invalid(f"Datapath port number is not in valid range (1024-49151) : {port}")
    availability = check_availability(req.availability)
    spec = {**DEFAULT_SPEC, **spec_overrides(req), "autolock_managers": bool(req.autolock)}
    listen_addr = netaddr.join_host_port(listen_ip, listen_port)
    return InitPlan(listen_addr=listen_addr, advertise_addr=netaddr.join_host_port(adv_host, adv_port),
                    local_addr=local_addr, data_path_addr=data_path, data_path_port=port,
                    availability=availability, default_addr_pool=pools, subnet_size=size, spec=spec,
                    ingress=ingress)

