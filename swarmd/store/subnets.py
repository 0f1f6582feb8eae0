"""IPv4 subnets as the store checks them at apply time: blocks of addresses, and the one text
an overlap is refused with (the leader's allocator words a requested overlap the same way)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Any

Block = tuple[int, int]  # (first address, last address) as integers


def parse(subnet: str) -> tuple[str, Block]:
    """A subnet (a network address, no host bits) in its canonical CIDR text, and its address
    block; ``ValueError`` (or ``TypeError``) for anything else."""
    net = ipaddress.IPv4Network(subnet, strict=True)
    return str(net), (int(net.network_address), int(net.broadcast_address))


def block(subnet: str) -> Block:
    return parse(subnet)[1]


def blocks_of(network: Mapping[str, Any]) -> Iterator[Block]:
    """The blocks of a network's subnets; one that does not parse (a state written by hand) is
    left out rather than making the whole state unloadable."""
    for config in network.get("ipam") or ():
        try:
            yield block(config["subnet"])
        except (ValueError, TypeError, KeyError):
            continue


def overlaps(a: Block, b: Block) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def overlap_text(subnet: str, other: str, owner: str) -> str:
    """libnetwork's refusal of a pool that overlaps one in use, as Docker prints it."""
    return ("invalid pool request: Pool overlaps with other one on this address space "
            f"({subnet} overlaps {other} of network {owner})")
