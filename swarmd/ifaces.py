"""This host's network links and their addresses, read from the kernel with pyroute2.

Apart from ``netaddr`` (pure: the resolvers take what this returns) so that the CLI, which only
parses flags there, never loads pyroute2 (about 0.1 s of imports); the daemon loads pyroute2 at its
first lookup (its first init or join), not at start-up. Read over rtnetlink (not sysfs,
not getifaddrs) because under ``nsenter --net`` sysfs still shows the host's links, and
getifaddrs files labelled IPv4 aliases (``eth0:1``) under the label while Docker counts them on
the link. pyroute2 has no type hints: everything it returns is checked and converted here.
"""

from __future__ import annotations

import _socket
import functools
import ipaddress
import os
import socket
from typing import Any, NamedTuple

from swarmd.netaddr import AddrError, Interface

__all__ = ["list_interfaces"]

_IFF_UP, _IFF_LOOPBACK = 0x1, 0x8


@functools.cache
def _pyroute2() -> tuple[Any, Any]:
    """pyroute2's IPRoute and NetlinkError.

    pyroute2 binds ``socket.inet_ntop`` when it is imported, and importing pysyncobj replaces
    that with a Windows-only function: pyroute2 gets the C one whatever was imported first."""
    replaced = socket.inet_ntop
    socket.inet_ntop = _socket.inet_ntop
    try:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]
        from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
    finally:
        socket.inet_ntop = replaced
    return IPRoute, NetlinkError




class _Undecodable(Exception):
    """An answer pyroute2 could not decode."""


class _Link(NamedTuple):
    ifindex: int
    name: str
    flags: int
    has_kind: bool  # IFLA_LINKINFO carries IFLA_INFO_KIND: veth, bridge, ...; not a "device"


class _Addr(NamedTuple):
    ifindex: int
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address


def _name(value: Any) -> str:
    """IFLA_IFNAME: pyroute2 gives bytes when the name is not UTF-8; keep them as Go does."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else ""


def _link(msg: Any) -> _Link:
    info = msg.get_attr("IFLA_LINKINFO")
    has_kind = info is not None and info.get_attr("IFLA_INFO_KIND") is not None
    return _Link(int(msg["index"]), _name(msg.get_attr("IFLA_IFNAME")), int(msg["flags"]), has_kind)


def _addr(msg: Any) -> _Addr | None:
    """One RTM_NEWADDR: IFA_LOCAL if present (as Go's netlink package), else IFA_ADDRESS.

    pyroute2 leaves an attribute it could not decode as raw bytes; that is an error here, not
    a link without addresses, which would change what auto-detection picks."""
    family = msg["family"]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    value = msg.get_attr("IFA_LOCAL")
    if value is None:
        value = msg.get_attr("IFA_ADDRESS")
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        ip = ipaddress.IPv4Address(value) if family == socket.AF_INET else ipaddress.IPv6Address(value)
    except ValueError:
        raise _Undecodable(f"an address of link {msg['index']} could not be decoded") from None
    return _Addr(int(msg["index"]), ip)


def _dump() -> tuple[list[_Link], list[_Addr]]:
    """One link dump and one address dump, in this process's network namespace."""
    iproute, _ = _pyroute2()
    with iproute(groups=0) as ipr:  # no event groups: nothing but the dumps' answers arrives
        links = [_link(msg) for msg in ipr.get_links()]
        addrs = [a for a in (_addr(msg) for msg in ipr.get_addr()) if a is not None]
    return links, addrs


def list_interfaces() -> list[Interface]:
    """The system's links and addresses in netlink dump order, as Go's net and netlink packages
    see them: per link, its IPv4 addresses then its IPv6 ones, each in kernel order."""
    _, netlink_error = _pyroute2()  # imported on the first lookup, not with this module
    try:
        links, addrs = _dump()
    except netlink_error as err:
        error = OSError(err.code, os.strerror(err.code))
        raise AddrError(f"could not list network interfaces: {error}") from err
    except (OSError, _Undecodable) as err:
        raise AddrError(f"could not list network interfaces: {err}") from err
    v4: dict[int, list[str]] = {}
    v6: dict[int, list[str]] = {}
    for a in addrs:
        (v4 if a.ip.version == 4 else v6).setdefault(a.ifindex, []).append(str(a.ip))
    return [
        Interface(name=link.name, up=bool(link.flags & _IFF_UP), loopback=bool(link.flags & _IFF_LOOPBACK),
                  is_device=not link.has_kind, addrs=tuple(v4.get(link.ifindex, []) + v6.get(link.ifindex, [])))
        for link in links
    ]
