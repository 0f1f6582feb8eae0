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


def test_fd_finder_maps_inodes_to_this_process_descriptors(pair: tuple[socket.socket, ...]) -> None:
    _, _, accepted = pair
    finder = sockdiag.FdFinder()
    inode = os.fstat(accepted.fileno()).st_ino
    assert finder.find({inode}) == {inode: accepted.fileno()}
    assert finder.find({inode}) == {inode: accepted.fileno()}  # the second time from its recent list
    assert finder.find(set()) == {}
    assert finder.find({1}) == {}
    with open(__file__, "rb") as f:  # a file's inode number is not a socket's
        assert sockdiag.FdFinder().find({os.fstat(f.fileno()).st_ino}) == {}


def test_the_kernel_filters_by_local_and_peer_address(pair: tuple[socket.socket, ...]) -> None:
    listener, client, _accepted = pair
    ip, port = listener.getsockname()
    source = client.getsockname()[0]
    with socket.socket() as second:
        second.bind((private_loopback(), 0))
        second.connect((ip, port))
        with listener.accept()[0]:
            everyone = {(c.peer_ip, c.peer_port) for c in sockdiag.list_connections(port, local_ip=ip)}
            assert everyone == {client.getsockname(), second.getsockname()}
            some = sockdiag.list_connections(port, local_ip=ip, peers=[source])
            assert [(c.peer_ip, c.peer_port) for c in some] == [client.getsockname()]
            both = sockdiag.list_connections(port, local_ip=ip, peers=["127.0.0.1", source, second.getsockname()[0]])
            assert {(c.peer_ip, c.peer_port) for c in both} == everyone
            assert sockdiag.list_connections(port, local_ip=ip, peers=["127.0.0.1", "::1"]) == []
            assert sockdiag.list_connections(port, local_ip=private_loopback()) == []
            prefix = {(c.peer_ip, c.peer_port) for c in sockdiag.list_connections(port, local_ip=ip,
                                                                                   peers=["127.0.0.0/8"])}
            assert prefix == everyone
            assert sockdiag.list_connections(port, local_ip=ip, peers=["10.0.0.0/8"]) == []
            with pytest.raises(ValueError):
                sockdiag.list_connections(port, local_ip=ip, peers=["127.0.0.0/33"])


def test_a_dual_stack_listener_shows_ipv4_peers_as_ipv4() -> None:
    """gRPC listens on IPv6 sockets that take IPv4 too; their peers come back as plain IPv4."""
    ip, source = private_loopback(), private_loopback()
    with socket.socket(socket.AF_INET6) as listener, socket.socket() as client:
        listener.bind(("::ffff:" + ip, 0))
        listener.listen()
        port = listener.getsockname()[1]
        client.bind((source, 0))
        client.connect((ip, port))
        with listener.accept()[0] as accepted:
            assert sockdiag.listener_families(port, ip) == (socket.AF_INET6,)
            conns = sockdiag.list_connections(port, (socket.AF_INET6,), local_ip=ip, peers=[source])
            assert conns == [sockdiag.Connection(ip, source, client.getsockname()[1],
                                                 os.fstat(accepted.fileno()).st_ino)]


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


def test_unaffected_by_pysyncobj_replacing_socket_inet_ntop(pair: tuple[socket.socket, ...]) -> None:
    import pysyncobj  # noqa: F401 - its import swaps socket.inet_ntop for a Windows-only function

    listener, client, _ = pair
    ip, port = listener.getsockname()
    assert [(c.local_ip, c.peer_ip) for c in sockdiag.list_connections(port, local_ip=ip)] == [
        (ip, client.getsockname()[0])]


def test_ipv6_peers_and_local_address() -> None:
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError as e:
        listener.close()
        pytest.skip(f"no IPv6 loopback here: {e}")
    with listener, socket.socket(socket.AF_INET6) as client:
        listener.listen()
        port = listener.getsockname()[1]
        client.connect(("::1", port))
        with listener.accept()[0] as accepted:
            inode = os.fstat(accepted.fileno()).st_ino
            expected = [sockdiag.Connection("::1", "::1", client.getsockname()[1], inode)]
            assert sockdiag.listener_families(port, "::1") == (socket.AF_INET6,)
            assert sockdiag.list_connections(port, (socket.AF_INET6,), "::1", ["127.0.0.1", "::1"]) == expected
            assert sockdiag.list_connections(port, (socket.AF_INET6,), "::1", ["::2"]) == []
            # An IPv6 source is a /64: the filter takes the prefix.
            assert sockdiag.list_connections(port, (socket.AF_INET6,), "::1", ["::/64"]) == expected
            assert sockdiag.list_connections(port, (socket.AF_INET6,), "::1", ["0:0:0:1::/64"]) == []
            assert sockdiag.list_connections(port, (socket.AF_INET6,), "::1", known={inode}) == [
                sockdiag.Connection("", "", 0, inode)]


def test_closings_report_every_connection_freed_on_the_port() -> None:
    listener = socket.socket()
    listener.bind((private_loopback(), 0))
    listener.listen()
    ip, port = listener.getsockname()
    try:
        closings = sockdiag.Closings(port)
    except OSError as e:
        listener.close()
        pytest.skip(f"no sock_diag destroy reports here: {e}")
    try:
        peers = []
        for _ in range(3):
            with socket.socket() as client:
                client.bind((private_loopback(), 0))
                client.connect((ip, port))
                peers.append(client.getsockname())
                listener.accept()[0].close()
        seen: set[tuple[str, int]] = set()

        def all_reported() -> bool:
            seen.update((c.peer_ip, c.peer_port) for c in closings.drain() if c.local_ip == ip)
            return set(peers) <= seen
        wait_for(all_reported, 5, what="the closings")
    finally:
        closings.close()
        listener.close()
