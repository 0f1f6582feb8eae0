"""This process's TCP connections on one local port, read from the kernel (NETLINK_SOCK_DIAG).

gRPC accepts and handshakes connections in its C core, where Python cannot see them; the kernel
can. One inet_diag dump, filtered in the kernel to the port, lists each connection's peer
address and socket inode, and ``/proc/self/fd`` maps an inode back to the file descriptor gRPC
holds, so a connection can be shut down before its TLS handshake starts. No privilege is needed
for either, and nothing here depends on a third-party package.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["Connection", "DiagError", "find_fds", "list_connections", "listener_families", "shut_down"]

_NETLINK_SOCK_DIAG = 4  # socket.NETLINK_SOCK_DIAG is not exported by every Python
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_INET_DIAG_REQ_BYTECODE = 1
_INET_DIAG_BC_S_GE, _INET_DIAG_BC_S_LE = 2, 3
_TCP_LISTEN = 10
_TCP_TIME_WAIT = 6
_LISTENING = 1 << _TCP_LISTEN
_CONNECTIONS = 0xFFF & ~(_LISTENING | 1 << _TCP_TIME_WAIT)  # time-wait sockets belong to no process
_REQ = struct.Struct("=BBBBI HH 16s 16s I Q")      # inet_diag_req_v2 (ports big-endian, see _PORTS)
_MSG = struct.Struct("=BBBB 2s 2s 16s 16s I 8s IIIII")  # inet_diag_msg
_HDR = struct.Struct("=IHHII")                      # nlmsghdr
FAMILIES = (socket.AF_INET, socket.AF_INET6)
_TIMEOUT = 2.0
_DRAIN_READS = 4


class DiagError(OSError):
    """The kernel would not list sockets (no NETLINK_SOCK_DIAG in this kernel or sandbox)."""


@dataclass(frozen=True)
class Connection:
    """One TCP socket on the local port: who is on the other end, and the socket's inode."""

    local_ip: str
    peer_ip: str
    peer_port: int
    inode: int


def _port_filter(port: int) -> bytes:
    """inet_diag bytecode: local port >= port and <= port (S_EQ is newer than some kernels).

    Each op is (code, yes, no): ``yes`` jumps to the next op, ``no`` jumps past the end, which
    the kernel reads as "reject"."""
    return struct.pack("=BBH HH BBH HH",
                       _INET_DIAG_BC_S_GE, 8, 20, 0, port,
                       _INET_DIAG_BC_S_LE, 8, 12, 0, port)


def _ip(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    v6 = ipaddress.IPv6Address(raw[:16])
    return str(v6.ipv4_mapped or v6)


def _dump(family: int, port: int, states: int) -> Iterator[Connection]:
    bytecode = _port_filter(port)
    attr = struct.pack("=HH", 4 + len(bytecode), _INET_DIAG_REQ_BYTECODE) + bytecode
    req = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states, 0, 0, bytes(16), bytes(16), 0,
                    0xFFFFFFFFFFFFFFFF)  # INET_DIAG_NOCOOKIE
    body = req + attr
    seq = 1
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(_TIMEOUT)
        sock.bind((0, 0))
        sock.send(_HDR.pack(_HDR.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
                  + body)
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return
            off = 0
            while off + _HDR.size <= len(data):
                length, kind, _flags, mseq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size or off + length > len(data):
                    break
                if mseq == seq:
                    if kind == _NLMSG_DONE:
                        return
                    if kind == _NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, off + _HDR.size)
                        if code:
                            raise DiagError(-code, os.strerror(-code))
                        return
                    if length - _HDR.size >= _MSG.size:
                        (fam, _state, _timer, _retrans, _sport, dport, src, dst, _if, _cookie,
                         _exp, _rq, _wq, _uid, inode) = _MSG.unpack_from(data, off + _HDR.size)
                        yield Connection(_ip(fam, src), _ip(fam, dst), int.from_bytes(dport, "big"), inode)
                off += (length + 3) & ~3


def _collect(port: int, families: Iterable[int], states: int) -> list[Connection]:
    try:
        return [c for family in families for c in _dump(family, port, states)]
    except DiagError:
        raise
    except OSError as e:
        raise DiagError(e.errno or 0, f"could not list TCP connections: {e.strerror or e}") from e


def list_connections(port: int, families: Iterable[int] = FAMILIES) -> list[Connection]:
    """Every TCP socket (not a listener, not time-wait) whose local port is ``port`` in this
    network namespace; the caller filters by local address when other processes share the port.
    A socket whose owner has closed it but the kernel still winds down has inode 0."""
    return _collect(port, families, _CONNECTIONS)


def listener_families(port: int, ip: str) -> tuple[int, ...]:
    """The address families whose dumps show connections to a listener on ``ip:port``.

    gRPC listens on an IPv6 socket that also takes IPv4 (mapped addresses) where the system
    allows it, so an IPv4 listen address may still need the IPv6 dump; asking the kernel once
    spares every later lookup the dump that would come back empty."""
    families: list[int] = []
    for family in FAMILIES:
        for c in _collect(port, (family,), _LISTENING):
            if c.local_ip in (ip, "0.0.0.0", "::") and family not in families:
                families.append(family)
    return tuple(families) or FAMILIES


def find_fds(inodes: set[int]) -> dict[int, int]:
    """This process's file descriptors for the given socket inodes ({inode: fd})."""
    found: dict[int, int] = {}
    if not inodes:
        return found
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            if inode in inodes:
                found[inode] = int(name)
                if len(found) == len(inodes):
                    break
    return found


def shut_down(fd: int, inode: int) -> bool:
    """End a connection before its owner reads from it, through a duplicate of its descriptor
    so the owner's descriptor stays valid: it reads end-of-stream and closes it itself.

    Whatever the peer already sent is read and dropped, so the owner never processes it (no
    TLS work for a refused client); anything the peer sends later makes the kernel reset the
    connection, since it was shut for reading. The inode is checked again on the duplicate:
    the descriptor number may have been reused since it was looked up."""
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    try:
        if os.fstat(dup).st_ino != inode:
            return False
        with socket.socket(fileno=dup) as sock:
            dup = -1
            sock.shutdown(socket.SHUT_RDWR)
            for _ in range(_DRAIN_READS):
                if not sock.recv(1 << 16, socket.MSG_DONTWAIT):
                    break
        return True
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        if dup >= 0:
            os.close(dup)
