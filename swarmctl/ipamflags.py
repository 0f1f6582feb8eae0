"""``network create``'s client-side check of ``--subnet`` and ``--gateway``, as Docker makes it
(``createIPAMConfig`` in docker/cli): the flags become subnet/gateway pairs before any call.

A gateway belongs to the subnet that contains it, not to the ``--subnet`` at the same position,
and the errors are Docker's own (printed without ``Error response from daemon:``). Only what
Docker checks here is checked here; whether a subnet is a network address, IPv4, or free in
the swarm is the daemon's to say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from swarmctl.errors import CLIError

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_go_ip(text: str) -> IP | None:
    """Go's ``net.ParseIP``: no zone, no surrounding space (Python takes ``fe80::1%eth0``)."""
    if "%" in text or not text.isascii():
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_go_cidr(text: str) -> tuple[IP, Net] | None:
    """Go's ``net.ParseCIDR``: the address as written and its network, or None.

    Only ``address/decimal-length``: Python would also take a netmask after the slash.
    """
    addr, slash, bits = text.partition("/")
    ip = parse_go_ip(addr)
    if ip is None or not slash or not bits.isascii() or not bits.isdigit() or int(bits) > ip.max_prefixlen:
        return None
    return ip, ipaddress.ip_network((ip, int(bits)), strict=False)


def _as_ipv4(ip: IP) -> IP:
    """Go compares an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) as the IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _contains(net: Net, ip: IP | None) -> bool:
    if ip is None:
        return False
    ip = _as_ipv4(ip)
    mapped = _as_ipv4(net.network_address)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and mapped != net.network_address:
        net = ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return ip.version == net.version and ip in net


def subnet_matches(subnet: str, data: str) -> bool:
    """docker/cli's ``subnetMatches``: whether ``subnet`` holds the address ``data`` names
    (``data`` may be an address or a CIDR, whose address part counts)."""
    parsed = parse_go_cidr(subnet)
    if parsed is None:
        raise CLIError(f"invalid subnet: invalid CIDR address: {subnet}")
    if "/" in data:
        address = parse_go_cidr(data)
        if address is None:
            raise CLIError(f"invalid CIDR address: {data}")
        return _contains(parsed[1], address[0])
    return _contains(parsed[1], parse_go_ip(data))


def pair_gateways(subnets: Sequence[str], gateways: Sequence[str]) -> list[tuple[str, str]]:
    """(subnet, gateway or "") per subnet, in the order given; Docker's checks and texts."""
    if len(subnets) < len(gateways):
        raise CLIError("every ip-range or gateway must have a corresponding subnet")
    chosen: dict[str, str] = {}
    for subnet in subnets:
        for earlier in chosen:
            inside, outside = subnet_matches(subnet, earlier), subnet_matches(earlier, subnet)  # both checked
            if inside or outside:
                raise CLIError("multiple overlapping subnet configuration is not supported")
        chosen[subnet] = ""
    for gateway in gateways:
        matched = False
        for subnet in subnets:
            if not subnet_matches(subnet, gateway):
                continue
            if chosen[subnet]:
                raise CLIError(f"cannot configure multiple gateways ({gateway}, {chosen[subnet]}) "
                               f"for the same subnet ({subnet})")
            chosen[subnet] = gateway
            matched = True
        if not matched:
            raise CLIError(f"no matching subnet for gateway {gateway}")
    return list(chosen.items())
