"""The kernel's view of this process's TCP connections (real sockets on private loopback addresses)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from swarmd import sockdiag
from tests.harness import private_loopback, wait_for


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """(listener, client, accepted): the client bound to its own loopback source address."""
    listener = socket.socket()
    listener.bind((private_loopback(), 0))
    listener.listen()
    client = socket.socket()
    client.bind((private_loopback(), 0))
    client.settimeout(5)
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    accepted.settimeout(5)
    try:
        yield listener, client, accepted
    finally:
        for s in (accepted, client, listener):
            s.close()


def test_lists_the_accepted_connection_with_its_peer_and_inode(pair: tuple[socket.socket, ...]) -> None:
    listener, client, accepted = pair
    ip, port = listener.getsockname()
    conns = [c for c in sockdiag.list_connections(port) if c.local_ip == ip]
    assert conns == [sockdiag.Connection(ip, client.getsockname()[0], client.getsockname()[1],
                                         os.fstat(accepted.fileno()).st_ino)]
    assert sockdiag.listener_families(port, ip) == (socket.AF_INET,)
    accepted.close()

    def let_go() -> bool:
        return all(c.inode == 0 for c in sockdiag.list_connections(port) if c.local_ip == ip)
    wait_for(let_go, 5, what="the closed socket to leave the process")


def test_other_ports_are_filtered_out_in_the_kernel(pair: tuple[socket.socket, ...]) -> None:
    listener, client, _ = pair
    ip, port = listener.getsockname()
    with socket.socket() as other, socket.socket() as peer:
        other.bind((ip, 0))
        other.listen()
        peer.connect(other.getsockname())
        peer_addr = peer.getsockname()
        with other.accept()[0]:
            mine = {(c.peer_ip, c.peer_port) for c in sockdiag.list_connections(port) if c.local_ip == ip}
            theirs = {(c.peer_ip, c.peer_port) for c in sockdiag.list_connections(other.getsockname()[1])
                      if c.local_ip == ip}
    assert mine == {client.getsockname()}
    assert theirs == {peer_addr}


def test_find_fds_maps_inodes_to_this_process_descriptors(pair: tuple[socket.socket, ...]) -> None:
    _, _, accepted = pair
    inode = os.fstat(accepted.fileno()).st_ino
    assert sockdiag.find_fds({inode}) == {inode: accepted.fileno()}
    assert sockdiag.find_fds(set()) == {}
    assert sockdiag.find_fds({1}) == {}


def test_shut_down_drops_what_the_peer_sent_and_ends_the_connection(pair: tuple[socket.socket, ...]) -> None:
    _, client, accepted = pair
    client.sendall(b"client hello")
    wait_for(lambda: _pending(accepted) > 0, 5, what="the bytes to arrive")
    inode = os.fstat(accepted.fileno()).st_ino
    assert sockdiag.shut_down(accepted.fileno(), inode)
    assert accepted.recv(100) == b""  # the owner never sees the bytes that were waiting
    assert client.recv(100) == b""    # and the peer sees the end of the stream
    client.sendall(b"more")
    with pytest.raises(ConnectionResetError):  # data after the shutdown resets the connection
        accepted.recv(100)


def test_shut_down_checks_the_inode_again(pair: tuple[socket.socket, ...]) -> None:
    _, client, accepted = pair
    assert not sockdiag.shut_down(accepted.fileno(), 1)
    assert not sockdiag.shut_down(10**6, 1)
    client.sendall(b"x")
    assert accepted.recv(1) == b"x"  # untouched


def _pending(sock: socket.socket) -> int:
    try:
        return len(sock.recv(100, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return 0
