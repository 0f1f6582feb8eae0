"""Overlay IPAM: first-fit subnets from the cluster's address pools and VXLAN IDs from 4096.

Pure functions over the allocations in use (DESIGN §7, swarm-behaviour.md §7.2): the leader's
allocator runs them before it proposes a network, and, for ops written before it did, apply.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from swarmd.store.networks import VXLAN_ID_END as VXLAN_ID_END, VXLAN_ID_START as VXLAN_ID_START
from swarmd.store.subnets import overlap_text

DEFAULT_POOL = "10.0.0.0/8"
DEFAULT_SUBNET_SIZE = 24

IPv4Net = ipaddress.IPv4Network


class IPAMError(ValueError):
    """A request the allocator refuses; str() is the user-facing text."""


def parse_cidr(text: str) -> IPv4Net:
    """Parse an IPv4 CIDR that must be a network address (no host bits).

    Only ``address/decimal-length``, as Go's ``net.ParseCIDR``: Python would also take a
    netmask or hostmask after the slash, and Unicode digits.
    """
    _, slash, bits = text.strip().partition("/")
    if not slash or not bits.isascii() or not bits.isdigit():
        raise IPAMError(f"invalid CIDR address: {text}")
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise IPAMError(f"invalid CIDR address: {text}") from None
    if not isinstance(iface, ipaddress.IPv4Interface):
        raise IPAMError(f"invalid CIDR address: {text} (only IPv4 subnets are supported)")
    if iface.ip != iface.network.network_address:
        raise IPAMError(f"invalid subnet {text}: it should be {iface.network}")
    return iface.network


def validate_pool(pools: Sequence[str], size: int) -> tuple[list[str], int]:
    """Docker's validateDefaultAddrPool: size 0 means 24; pools must be valid and fit the size."""
    if size == 0:
        size = DEFAULT_SUBNET_SIZE
    if size > 29:
        raise IPAMError(f"subnet size is out of range: {size}")
    normalised = []
    for text in pools:
        net = parse_cidr(text)
        if size < net.prefixlen:
            raise IPAMError(f'invalid CIDR: "{text}". Subnet size is too small for pool: {size}')
        normalised.append(str(net))
    for i, a in enumerate(normalised):
        for b in normalised[i + 1:]:
            if ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b)):
                raise IPAMError(f"default address pools {a} and {b} overlap")
    return normalised, size


@functools.lru_cache(maxsize=8192)
def _block(subnet: str) -> tuple[int, int]:
    """A subnet in use as (first, last) address (cached: the same ones are parsed at every pick)."""
    net = ipaddress.IPv4Network(subnet)
    return int(net.network_address), int(net.broadcast_address)


def allocate_subnet(pools: Sequence[str], size: int, used: Sequence[str]) -> str:
    """The lowest ``size``-aligned prefix of the first pool that overlaps nothing in use.

    One sweep over the used blocks sorted by their first address: a candidate that overlaps
    none of them is the answer; one that overlaps a block skips past that block."""
    blocks = sorted(map(_block, used))
    for pool_text in pools or [DEFAULT_POOL]:
        pool = ipaddress.IPv4Network(pool_text)
        candidate_size = max(size, pool.prefixlen)
        step = 1 << (32 - candidate_size)
        base = int(pool.network_address)
        end = int(pool.broadcast_address)
        addr = base
        i = 0
        while addr <= end:
            last = addr + step - 1
            while i < len(blocks) and blocks[i][1] < addr:  # one that ends before this candidate ends before the later ones
                i += 1
            if i == len(blocks) or blocks[i][0] > last:  # later blocks start later still
                return str(ipaddress.IPv4Network((addr, candidate_size)))
            # Skip past the clashing block (it may be larger than one step).
            addr = max(addr + step, blocks[i][1] + 1)
            addr = base + (((addr - base) + step - 1) // step) * step
    raise IPAMError("could not find an available, non-overlapping IPv4 address pool "
                    "among the defaults to assign to the network")


def check_requested_subnet(subnet: str, used: dict[str, str]) -> str:
    """Validate a user-chosen subnet against the ones in use (``used``: subnet → network name)."""
    net = parse_cidr(subnet)
    for other, owner in used.items():
        if net.overlaps(ipaddress.IPv4Network(other)):
            raise IPAMError(overlap_text(str(net), other, owner))
    return str(net)


def default_gateway(subnet: str) -> str:
    """The first host address, as Docker's serial allocation gives it."""
    net = ipaddress.IPv4Network(subnet)
    if net.num_addresses <= 2:
        raise IPAMError(f"subnet {subnet} is too small for a gateway")
    return str(net.network_address + 1)


def check_gateway(gateway: str, subnet: str) -> str:
    try:
        ip = ipaddress.IPv4Address(gateway.strip())
    except ValueError:
        raise IPAMError(f"invalid gateway address: {gateway}") from None
    net = ipaddress.IPv4Network(subnet)
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise IPAMError(f"gateway {gateway} is not a usable address of subnet {subnet}")
    return str(ip)


def allocate_vxlan_id(used: Iterable[int]) -> int:
    """The lowest free VXLAN ID from 4096; freed IDs are reused."""
    taken = set(used)
    vni = VXLAN_ID_START
    while vni in taken:
        vni += 1
    if vni > VXLAN_ID_END:
        raise IPAMError("no VXLAN ID is left")
    return vni
