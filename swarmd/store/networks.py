"""Networks as ``apply`` decides them: a new network's name, ingress flag, subnets and VXLAN IDs.

The lookups go through the networks table's indexes (a network by name, the ingress network);
subnets and VXLAN IDs are allocated first fit from the replicated state, so every replica
agrees.
"""

from __future__ import annotations

from typing import Any

from swarmd.manager.allocator import ipam
from swarmd.store.objects import IPAMConfig, Network
from swarmd.store.refusal import OpError, Result, require
from swarmd.store.state import Draft
from swarmd.store.table import Table, TableDraft

Networks = Table[Network] | TableDraft[Network]


def check_new(networks: Networks, name: str, ingress: bool, network_id: str | None = None) -> None:
    """A new network's name, ID and ingress flag against the networks there are, in the order
    and words Docker refuses them."""
    require(not networks.lookup("name", name), "ALREADY_EXISTS", f"network with name {name} already exists")
    if network_id is not None:
        require(network_id not in networks, "ALREADY_EXISTS", f"network {network_id} already exists")
    if ingress:
        existing = networks.lookup("ingress", "ingress")
        require(not existing, "ALREADY_EXISTS",
                f"rpc error: code = AlreadyExists desc = ingress network ({existing[0] if existing else ''}) "
                "is already present")


def create_network(draft: Draft, cmd: dict[str, Any]) -> Result:
    name = cmd["name"]
    require(isinstance(name, str), "INVALID_ARGUMENT", "a network name must be text")
    check_new(draft.networks, name, bool(cmd.get("ingress")), cmd["id"])
    cluster = draft.cluster
    require(cluster is not None, "FAILED_PRECONDITION", "the cluster does not exist")
    assert cluster is not None
    networks = draft.networks
    used = {cfg["subnet"]: n["name"] for n in networks.values() for cfg in n["ipam"]}
    configs: list[IPAMConfig] = []
    try:
        for req in cmd.get("ipam") or [{}]:
            if req.get("subnet"):
                subnet = ipam.check_requested_subnet(req["subnet"], used)
            else:
                require(not req.get("gateway"), "INVALID_ARGUMENT", "a gateway needs a subnet")
                subnet = ipam.allocate_subnet(cluster["default_addr_pool"], cluster["subnet_size"], list(used))
            gateway = ipam.check_gateway(req["gateway"], subnet) if req.get("gateway") else ipam.default_gateway(subnet)
            used[subnet] = name
            configs.append({"subnet": subnet, "gateway": gateway})
        vxlan_ids: list[int] = []
        taken = [v for n in networks.values() for v in n["vxlan_ids"]]
        for _ in configs:
            vxlan_ids.append(ipam.allocate_vxlan_id(taken + vxlan_ids))
    except ipam.IPAMError as e:
        raise OpError("INVALID_ARGUMENT", str(e)) from None
    network: Network = {
        "id": cmd["id"],
        "name": name,
        "created_at": cmd["now"],
        "updated_at": cmd["now"],
        "driver": "overlay",
        "ingress": bool(cmd.get("ingress")),
        "internal": bool(cmd.get("internal")),
        "attachable": bool(cmd.get("attachable")),
        "ipam": configs,
        "vxlan_ids": vxlan_ids,
        "labels": dict(cmd.get("labels", {})),
        "options": dict(cmd.get("options", {})),
        "version": draft.index,
    }
    networks[network["id"]] = network
    return {"network_id": network["id"]}


def remove_network(draft: Draft, cmd: dict[str, Any]) -> Result:
    network_id = cmd["id"]
    require(network_id in draft.networks, "NOT_FOUND", f"network {network_id} not found")
    del draft.networks[network_id]
    return {}
