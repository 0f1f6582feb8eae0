"""Checks of request fields that end up in the store, where every manager keeps them and every
`node ls` prints them.

A node describes itself when it joins and whenever its session opens, and a joining manager
names the address the leader should dial: all of it comes from another host. A bad value gets
a clear INVALID_ARGUMENT here rather than a surprise later (a 3 MB hostname in every manager's
memory, a newline breaking `node ls`, a leader dialling a malformed address).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Any

from swarmd import errors, gostr, netaddr

MAX_TEXT = 255           # a host name (253) and friends
MAX_ADDR = 300           # "[v6]:port" with room to spare
NODE_ROLES = ("worker", "manager")
MAX_NETWORK_NAME = 63    # a DNS label
MAX_IPAM_CONFIGS = 16    # each one is a first-fit search inside the replicated apply
# swarmkit's isValidDNSName: letters and digits, "-" and "_" only between them.
_DNS_NAME = re.compile(r"[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*")


def _printable(text: str) -> bool:
    return not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def check_description(description: dict[str, Any]) -> dict[str, Any]:
    """A node's description of itself (hostname, os, architecture, resources, version)."""
    for name, value in description.items():
        if isinstance(value, str):
            if len(value) > MAX_TEXT or not _printable(value):
                raise errors.invalid(f"invalid node description: {name} must be at most {MAX_TEXT} printable "
                                     f"characters, got {gostr.quote(value[:40])}"
                                     + ("..." if len(value) > 40 else ""))
        elif isinstance(value, int) and value < 0:
            raise errors.invalid(f"invalid node description: {name} cannot be negative ({value})")
    return description


def advertised_host(addr: str) -> str:
    """The host of a node's advertise address ("" when it sent none): an IP address.

    The port part is kept verbatim by Docker (``10.0.0.5:abc`` is accepted at init), so only
    its size and characters are checked.
    """
    if not addr:
        return ""
    try:
        if len(addr) > MAX_ADDR or not _printable(addr):
            raise ValueError("too long or not printable")
        host, _ = netaddr.split_host_port(addr)
        if host:
            ipaddress.ip_address(host)
    except ValueError:
        raise errors.invalid(f"invalid advertise address {gostr.quote(addr[:MAX_ADDR])}: "
                             "it must be <ip>:<port>") from None
    return host


def check_raft_join_addr(addr: str) -> str:
    """The address a joining manager asks the leader to dial: host:port (swarmkit's check)."""
    try:
        if len(addr) > MAX_ADDR or not _printable(addr):
            raise ValueError("too long or not printable")
        host, _ = netaddr.split_host_port(addr)
        if not host:
            raise ValueError("no host")
    except ValueError:
        raise errors.invalid(f"invalid address {gostr.quote(addr[:MAX_ADDR])} in raft join request") from None
    return addr


def check_node_role(role: str) -> str:
    """A desired role as `node promote` / `node demote` send it (any case, as Docker)."""
    wanted = role.lower()
    if wanted not in NODE_ROLES:
        raise errors.invalid(f"invalid role {gostr.quote(role)}, only worker and manager are supported")
    return wanted


def check_network_spec(name: str, ingress: bool, attachable: bool, ipam_configs: int) -> None:
    """swarmkit's validateNetworkSpec and validateAnnotations, in their order and words."""
    if ingress and attachable:
        raise errors.invalid(errors.rpc_text("INVALID_ARGUMENT", "ingress network cannot be attachable"))
    if not _DNS_NAME.fullmatch(name):
        raise errors.invalid(errors.rpc_text("INVALID_ARGUMENT", "name must be valid as a DNS name component"))
    if len(name) > MAX_NETWORK_NAME:
        raise errors.invalid(errors.rpc_text("INVALID_ARGUMENT", "name must be 63 characters or fewer"))
    if ipam_configs > MAX_IPAM_CONFIGS:
        raise errors.invalid(f"too many IPAM configurations: {ipam_configs} (at most {MAX_IPAM_CONFIGS})")
