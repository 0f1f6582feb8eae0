"""This process's TCP connections on one local port, read from the kernel (NETLINK_SOCK_DIAG).

gRPC accepts and handshakes connections in its C core, where Python cannot see them; the kernel
can. One inet_diag dump, filtered in the kernel to the port, lists each connection's peer
address and socket inode, and ``/proc/self/fd`` maps an inode back to the file descriptor gRPC
holds, so a connection can be shut down before its TLS handshake starts. No privilege is needed
for either, and nothing here depends on a third-party package.

The dump is decoded by hand, not with pyroute2's DiagSocket, because it is the handshake guard's
hot path: with 2,000 connections open pyroute2 takes 20 to 40 times as long per lookup (it
decodes every attribute of every answer in Python), it has no kernel filter argument, and it
does not report the kernel's errors (bench/bench_netlink.py, bench/README.md).
"""

from __future__ import annotations

import _socket
import collections
import errno
import functools
import os
import socket
import stat
import struct
from collections.abc import Container, Iterable, Iterator, Sequence
from typing import NamedTuple

__all__ = ["Closings", "Connection", "DiagError", "FdFinder", "list_connections", "listener_families", "listener_inodes",
           "shut_down"]

_NETLINK_SOCK_DIAG = 4  # socket.NETLINK_SOCK_DIAG is not exported by every Python
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_INET_DIAG_REQ_BYTECODE = 1
_BC_JMP, _BC_S_GE, _BC_S_LE, _BC_S_COND, _BC_D_COND = 1, 2, 3, 7, 8
_TCP_LISTEN = 10
_TCP_TIME_WAIT = 6
_LISTENING = 1 << _TCP_LISTEN
_CONNECTIONS = 0xFFF & ~(_LISTENING | 1 << _TCP_TIME_WAIT)  # time-wait sockets belong to no process
_REQ = struct.Struct("=BBBBI HH 16s 16s I Q")  # inet_diag_req_v2
_MSG = struct.Struct("=B3x2s2s16s16s28xI")     # inet_diag_msg: family, ports, addresses, inode
_HDR = struct.Struct("=IHHII")                 # nlmsghdr
_ERRNO = struct.Struct("=i")
_MAPPED = bytes(10) + b"\xff\xff"
FAMILIES = (socket.AF_INET, socket.AF_INET6)
_TIMEOUT = 2.0
_RECV_BYTES = 1 << 17
_DRAIN_READS = 4


class DiagError(OSError):
    """The kernel would not list sockets (no NETLINK_SOCK_DIAG in this kernel or sandbox)."""


class Connection(NamedTuple):
    """One TCP socket on the local port: who is on the other end, and the socket's inode."""

    local_ip: str
    peer_ip: str
    peer_port: int
    inode: int


# -- kernel-side filters (inet_diag bytecode) ---------------------------------------------------------
# Each op is (code, yes, no): the kernel jumps ``yes`` bytes when the op matches and ``no`` bytes
# when it does not; landing exactly on the end accepts the socket, jumping past it rejects it.
# The kernel's audit walks the ``yes`` chain, so every ``no`` must land on an op of that chain.

def _hostcond(code: int, ip: str) -> tuple[int, bytes]:
    """An op matching one address exactly, or a prefix written ``addr/len`` (an IPv4 one
    matches its mapped IPv6 form too)."""
    ip, _, prefix = ip.partition("/")
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    raw = _socket.inet_pton(family, ip)
    bits = int(prefix) if prefix else 8 * len(raw)
    if not 0 <= bits <= 8 * len(raw):
        raise ValueError(f"bad prefix length in {ip}/{prefix}")
    return code, struct.pack("=BBxxi", family, bits, -1) + raw


def _bytecode(port: int, local_ip: str | None, peers: Sequence[str] | None) -> bytes:
    """local port == ``port`` [and local address == ``local_ip``] [and peer address in ``peers``]."""
    port_word = struct.pack("=HH", 0, port)
    ands: list[tuple[int, bytes]] = [(_BC_S_GE, port_word), (_BC_S_LE, port_word)]
    if local_ip:
        ands.append(_hostcond(_BC_S_COND, local_ip))
    ors = [_hostcond(_BC_D_COND, ip) for ip in peers or ()]
    total = sum(4 + len(arg) for _, arg in ands) + sum(4 + len(arg) for _, arg in ors) + 4 * max(len(ors) - 1, 0)
    out = bytearray()
    for code, arg in ands:
        size = 4 + len(arg)
        out += struct.pack("=BBH", code, size, total - len(out) + 4) + arg   # no: reject
    for i, (code, arg) in enumerate(ors):
        size = 4 + len(arg)
        out += struct.pack("=BBH", code, size, size + 4) + arg              # no: the next address
        if i < len(ors) - 1:
            out += struct.pack("=BBH", _BC_JMP, 4, total - len(out))        # matched: accept
    assert len(out) == total
    return bytes(out)


# -- dumps -------------------------------------------------------------------------------------------

def _text(family: int, raw: bytes) -> str:
    # _socket's own inet_ntop: importing pysyncobj replaces socket.inet_ntop with a Windows-only one.
    if family == socket.AF_INET:
        return _socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == _MAPPED:
        return _socket.inet_ntop(socket.AF_INET, raw[12:16])
    return _socket.inet_ntop(socket.AF_INET6, raw)


@functools.lru_cache(maxsize=8)
def _record(length: int) -> struct.Struct | None:
    """One answer of ``length`` bytes: nlmsghdr, inet_diag_msg, attributes skipped."""
    extra = length - _HDR.size - _MSG.size
    if extra < 0 or length % 4:
        return None
    return struct.Struct(f"=IHHII{_MSG.format[1:]}{extra}x")


def _dump(family: int, states: int, bytecode: bytes, known: Container[int]) -> Iterator[Connection]:
    attr = struct.pack("=HH", 4 + len(bytecode), _INET_DIAG_REQ_BYTECODE) + bytecode
    req = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states, 0, 0, bytes(16), bytes(16), 0,
                    0xFFFFFFFFFFFFFFFF)  # INET_DIAG_NOCOOKIE
    body = req + attr
    seq = 1
    unpack, hdr_size = _MSG.unpack_from, _HDR.size
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(_TIMEOUT)
        sock.bind((0, 0))
        sock.send(_HDR.pack(hdr_size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
                  + body)
        while True:
            data = sock.recv(_RECV_BYTES)
            if not data:
                return
            off = 0
            # The answers are usually all of one size (the fixed part plus the same attributes):
            # read a run of them in one C loop, and walk the rest message by message.
            record = _record(_HDR.unpack_from(data)[0]) if len(data) >= hdr_size else None
            if record is not None:
                whole = len(data) - len(data) % record.size
                for (length, kind, _flags, mseq, _pid, fam, _sport, dport, src, dst,
                     inode) in record.iter_unpack(memoryview(data)[:whole]):
                    if length != record.size or kind != _SOCK_DIAG_BY_FAMILY or mseq != seq:
                        break
                    if inode in known:
                        yield Connection("", "", 0, inode)
                    else:
                        yield Connection(_text(fam, src), _text(fam, dst), int.from_bytes(dport, "big"), inode)
                    off += record.size
            while off + hdr_size <= len(data):
                length, kind, _flags, mseq, _pid = _HDR.unpack_from(data, off)
                if length < hdr_size or off + length > len(data):
                    break
                if mseq == seq:
                    if kind == _NLMSG_DONE:
                        return
                    if kind == _NLMSG_ERROR:
                        (code,) = _ERRNO.unpack_from(data, off + hdr_size)
                        if code:
                            raise DiagError(-code, os.strerror(-code))
                        return
                    if length - hdr_size >= _MSG.size:
                        fam, _sport, dport, src, dst, inode = unpack(data, off + hdr_size)
                        if inode in known:
                            yield Connection("", "", 0, inode)
                        else:
                            yield Connection(_text(fam, src), _text(fam, dst), int.from_bytes(dport, "big"), inode)
                off += (length + 3) & ~3


def _collect(families: Iterable[int], states: int, bytecode: bytes,
             known: Container[int] = ()) -> list[Connection]:
    try:
        return [c for family in families for c in _dump(family, states, bytecode, known)]
    except DiagError:
        raise
    except OSError as e:
        raise DiagError(e.errno or 0, f"could not list TCP connections: {e.strerror or e}") from e


def list_connections(port: int, families: Iterable[int] = FAMILIES, local_ip: str | None = None,
                     peers: Sequence[str] | None = None, known: Container[int] = ()) -> list[Connection]:
    """The TCP sockets (not listeners, not time-wait) on local port ``port`` in this network
    namespace, filtered in the kernel: to one local address if ``local_ip`` is given (other
    processes may use the same port on other addresses), to some peer addresses (or
    ``addr/len`` prefixes) if ``peers`` is. A socket whose owner has let go of it while the
    kernel winds it down has inode 0.
    Sockets whose inode is in ``known`` come back by inode alone (addresses empty, port 0):
    decoding addresses is most of the cost when many connections are open."""
    return _collect(families, _CONNECTIONS, _bytecode(port, local_ip, peers), known)


def listener_families(port: int, ip: str) -> tuple[int, ...]:
    """The address families whose dumps show connections to a listener on ``ip:port``.

    gRPC listens on an IPv6 socket that also takes IPv4 (mapped addresses) where the system
    allows it, so an IPv4 listen address may still need the IPv6 dump; asking the kernel once
    spares every later lookup the dump that would come back empty."""
    families: list[int] = []
    for family in FAMILIES:
        for c in _collect((family,), _LISTENING, _bytecode(port, None, None)):
            if c.local_ip in (ip, "0.0.0.0", "::") and family not in families:
                families.append(family)
    return tuple(families) or FAMILIES


def listener_inodes(port: int, ip: str) -> set[int]:
    """The inodes of the listening sockets on ``ip:port`` (or on every address, which serve it)."""
    return {c.inode for family in FAMILIES for c in _collect((family,), _LISTENING, _bytecode(port, None, None))
            if c.local_ip in (ip, "0.0.0.0", "::") and c.inode}


class Closings:
    """The TCP sockets on local port ``port`` in this network namespace that the kernel frees,
    as it frees them (sock_diag's destroy broadcasts, which need CAP_NET_ADMIN).

    A lookup sees only what is open at that moment; a connection that opens and closes between
    two lookups is seen here, with its addresses. A BPF filter on the netlink socket keeps the
    kernel from waking this process for other ports' sockets. Events wait in the socket's
    buffer until ``drain``; if it overflows the kernel drops some, and ``lost`` counts that."""

    _GROUPS = 1 << 0 | 1 << 2   # SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY
    _BUFFER = 4 << 20

    def __init__(self, port: int) -> None:
        self.lost = 0
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._BUFFER)
            _attach_port_filter(sock, port)
            sock.bind((0, self._GROUPS))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def drain(self) -> list[Connection]:
        """What closed since the last call (inode 0: a freed socket has none)."""
        out: list[Connection] = []
        while True:
            try:
                data = self._sock.recv(_RECV_BYTES)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                raise
            off, hdr_size = 0, _HDR.size
            while off + hdr_size <= len(data):
                length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, off)
                if length < hdr_size or off + length > len(data):
                    break
                if kind == _SOCK_DIAG_BY_FAMILY and length - hdr_size >= _MSG.size:
                    fam, _sport, dport, src, dst, _inode = _MSG.unpack_from(data, off + hdr_size)
                    out.append(Connection(_text(fam, src), _text(fam, dst), int.from_bytes(dport, "big"), 0))
                off += (length + 3) & ~3

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


def _attach_port_filter(sock: socket.socket, port: int) -> None:
    """Keep only the messages whose socket's local port (inet_diag_msg.id.sport) is ``port``."""
    import ctypes

    sport_at = _HDR.size + 4
    insns = [(0x28, 0, 0, sport_at),        # ldh [sport]
             (0x15, 0, 1, port),            # jeq #port
             (0x06, 0, 0, 0xFFFFFFFF),      # ret: keep
             (0x06, 0, 0, 0)]               # ret: drop
    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *insn) for insn in insns))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    sock.setsockopt(socket.SOL_SOCKET, 26, bytes(SockFprog(len(insns), ctypes.addressof(code))))  # SO_ATTACH_FILTER


def _socket_inode(fd: int) -> int:
    try:
        st = os.fstat(fd)
    except OSError:
        return 0
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else 0


class FdFinder:
    """This process's descriptors for socket inodes.

    A refused client's next connection usually gets the descriptor number its previous one just
    freed (the kernel hands out the lowest free number), so the numbers recently found are tried
    first, one fstat each; only a miss reads all of ``/proc/self/fd``."""

    def __init__(self, recent: int = 64) -> None:
        self._recent: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._max_recent = recent

    def find(self, inodes: set[int]) -> dict[int, int]:
        """{inode: fd} for those of ``inodes`` that this process holds."""
        found: dict[int, int] = {}
        for fd in reversed(self._recent):
            inode = _socket_inode(fd)
            if inode in inodes:
                found[inode] = fd
                if len(found) == len(inodes):
                    break
        if len(found) < len(inodes):
            try:
                names = os.listdir("/proc/self/fd")
            except OSError:
                names = []
            for name in names:
                inode = _socket_inode(int(name))
                if inode in inodes and inode not in found:
                    found[inode] = int(name)
                    if len(found) == len(inodes):
                        break
        for fd in found.values():
            self._recent[fd] = None
            self._recent.move_to_end(fd)
            if len(self._recent) > self._max_recent:
                self._recent.popitem(last=False)
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
        if _socket_inode(dup) != inode:
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
