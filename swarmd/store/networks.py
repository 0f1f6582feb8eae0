"""Networks as ``apply`` decides them: only what must be decided in commit order.

The leader's allocator chooses subnets, gateways and VXLAN IDs before it proposes an op
(``swarmd.manager.allocator``); the op carries them. Applying it checks what two leaders, or
two concurrent creates, could both have believed free: the name is unique, no subnet overlaps
one in use, no VXLAN ID is in use, there is one ingress network. Those lookups go through the
networks table's indexes, so a create costs the same with one network or a thousand.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from swarmd.store import subnets
from swarmd.store.objects import IPAMConfig, Network
from swarmd.store.refusal import OpError, Result, require
from swarmd.store.state import Draft
from swarmd.store.table import Table, TableDraft

VXLAN_ID_START = 4096
VXLAN_ID_END = (1 << 24) - 1

Networks = Table[Network] | TableDraft[Network]


def check_new(networks: Networks, name: str, ingress: bool, network_id: str | None = None) -> None:
    """A new network's name, ID and ingress flag against the networks there are, in the order
    and words Docker refuses them (the leader runs this too, before it allocates)."""
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
    require(draft.cluster is not None, "FAILED_PRECONDITION", "the cluster does not exist")
    if "vxlan_ids" not in cmd:
        legacy = draft.hooks.legacy_network_allocation
        if legacy is None:
            raise OpError("INVALID_ARGUMENT", "create_network without its subnets and VXLAN IDs")
        cmd = {**cmd, **legacy(draft, cmd)}
    configs = _check_configs(draft, name, cmd.get("ipam"))
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
        "vxlan_ids": _check_vxlan_ids(draft, cmd.get("vxlan_ids"), len(configs)),
        "labels": dict(cmd.get("labels", {})),
        "options": dict(cmd.get("options", {})),
        "version": draft.index,
    }
    draft.networks[network["id"]] = network
    return {"network_id": network["id"]}


def _check_configs(draft: Draft, name: str, requested: Any) -> list[IPAMConfig]:
    require(isinstance(requested, list) and bool(requested), "INVALID_ARGUMENT", "a network needs a subnet")
    configs: list[IPAMConfig] = []
    mine: list[tuple[subnets.Block, str]] = []
    for config in requested:
        try:
            subnet, block = subnets.parse(config["subnet"])
            gateway = ipaddress.IPv4Address(config["gateway"])
        except (ValueError, TypeError, KeyError):
            raise OpError("INVALID_ARGUMENT", f"invalid IPAM configuration {config!r}") from None
        require(block[0] < int(gateway) < block[1], "INVALID_ARGUMENT",
                f"gateway {gateway} is not a usable address of subnet {subnet}")
        for other_block, other in mine:
            require(not subnets.overlaps(block, other_block), "INVALID_ARGUMENT",
                    subnets.overlap_text(subnet, other, name))
        taken = draft.networks.lookup("subnet", block)
        if taken:
            owner = draft.networks[taken[0]]
            other = next(c["subnet"] for c in owner["ipam"] if _overlaps(c["subnet"], block))
            raise OpError("INVALID_ARGUMENT", subnets.overlap_text(subnet, other, owner["name"]), conflict=True)
        mine.append((block, subnet))
        configs.append({"subnet": subnet, "gateway": str(gateway)})
    return configs


def _overlaps(subnet: str, block: subnets.Block) -> bool:
    try:
        return subnets.overlaps(subnets.block(subnet), block)
    except (ValueError, TypeError):
        return False


def _check_vxlan_ids(draft: Draft, vxlan_ids: Any, count: int) -> list[int]:
    require(isinstance(vxlan_ids, list) and len(vxlan_ids) == count
            and all(type(v) is int for v in vxlan_ids) and len(set(vxlan_ids)) == count,
            "INVALID_ARGUMENT", "a network needs one VXLAN ID of its own per subnet")
    for vni in vxlan_ids:
        require(VXLAN_ID_START <= vni <= VXLAN_ID_END, "INVALID_ARGUMENT", f"VXLAN ID {vni} is out of range")
        require(not draft.networks.lookup("vxlan", vni), "ALREADY_EXISTS", f"VXLAN ID {vni} is already in use",
                conflict=True)
    return list(vxlan_ids)


def remove_network(draft: Draft, cmd: dict[str, Any]) -> Result:
    network_id = cmd["id"]
    require(network_id in draft.networks, "NOT_FOUND", f"network {network_id} not found")
    del draft.networks[network_id]
    return {}
