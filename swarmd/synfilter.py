"""Refusing new TCP connections from chosen sources in the kernel, before they are accepted.

gRPC accepts connections in its C core and starts their TLS handshake at once, so a refusal
made from Python after the accept always comes too late for a fast client. A classic BPF
socket filter on the listening socket (``SO_ATTACH_FILTER``, no privilege needed on a socket of
one's own) runs in the kernel on every packet the listener receives: this one drops a SYN (SYN
set, ACK clear) whose source address is in the set and accepts every other packet. The client
sees no answer to its SYN and retries as TCP does; gRPC never sees the connection, so refusing
costs its threads nothing. Accepted connections inherit the filter, but a pure SYN never belongs
to an established connection, so they are never touched.

Sources are IPv4 addresses and IPv6 /64 prefixes written ``2001:db8:1:2::/64``.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence

__all__ = ["MAX_SOURCES", "attach", "program"]

MAX_SOURCES = 512          # the program stays well under the kernel's 4,096 instructions
SO_ATTACH_FILTER, SO_DETACH_FILTER = 26, 27
_SKF_NET_OFF = -0x100000   # loads relative to the IP header (the packet starts at the TCP header)
_LDB, _LDW, _AND, _RSH, _JEQ, _JA, _RET = 0x30, 0x20, 0x54, 0x74, 0x15, 0x05, 0x06
_ACCEPT, _DROP = 0xFFFFFFFF, 0
_TCP_FLAGS = 13
_SYN, _ACK = 0x02, 0x10

Insn = tuple[int, int, int, int]   # struct sock_filter: code, jt, jf, k


def _net(offset: int) -> int:
    return (_SKF_NET_OFF + offset) & 0xFFFFFFFF


def program(sources: Sequence[str]) -> list[Insn]:
    """A filter dropping pure SYNs from ``sources`` (at most ``MAX_SOURCES`` of them)."""
    v4: list[int] = []
    v6: list[tuple[int, int]] = []
    for source in sources[:MAX_SOURCES]:
        net = ipaddress.ip_network(source, strict=False)
        top = int(net.network_address)
        if net.version == 4:
            v4.append(top)
        else:
            if net.prefixlen < 64:
                raise ValueError(f"an IPv6 source is at most a /64: {source}")
            v6.append((top >> 96, top >> 64 & 0xFFFFFFFF))
    prog: list[Insn] = [
        (_LDB, 0, 0, _TCP_FLAGS),
        (_AND, 0, 0, _SYN | _ACK),
        (_JEQ, 1, 0, _SYN),          # a pure SYN: look at its source
        (_RET, 0, 0, _ACCEPT),       # any other packet passes
        (_LDB, 0, 0, _net(0)),
        (_RSH, 0, 0, 4),             # the IP version
        (_JEQ, 0, 1, 6),
        (_JA, 0, 0, 0),              # to the IPv6 part, patched below
        (_LDW, 0, 0, _net(12)),      # IPv4 source address
    ]
    for address in v4:
        prog += [(_JEQ, 0, 1, address), (_RET, 0, 0, _DROP)]
    prog.append((_RET, 0, 0, _ACCEPT))
    prog[7] = (_JA, 0, 0, len(prog) - 8)
    for high, low in v6:             # the /64: the first two words of the source address
        prog += [(_LDW, 0, 0, _net(8)), (_JEQ, 0, 3, high), (_LDW, 0, 0, _net(12)), (_JEQ, 0, 1, low),
                 (_RET, 0, 0, _DROP)]
    prog.append((_RET, 0, 0, _ACCEPT))
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach(fd: int, sources: Sequence[str]) -> None:
    """Replace the filter of the socket behind ``fd`` (none when ``sources`` is empty).
    Works through a duplicate: the owner's descriptor is left as it was."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        if not sources:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            except OSError:
                pass  # there was none
            return
        insns = program(sources)
        code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *insn) for insn in insns))
        fprog = _SockFprog(len(insns), ctypes.addressof(code))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
