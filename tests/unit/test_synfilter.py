"""The kernel filter that refuses chosen sources' new connections (real sockets, private loopback)."""

from __future__ import annotations

import socket

import pytest

from swarmd import synfilter
from tests.harness import private_loopback


def answered(listener: socket.socket, source: str) -> bool:
    """Whether a connection from ``source`` is answered (a dropped SYN leaves connect waiting)."""
    with socket.socket(listener.family) as client:
        client.bind((source, 0))
        client.settimeout(0.3)
        try:
            client.connect(listener.getsockname()[:2])
        except TimeoutError:
            return False
    listener.accept()[0].close()
    return True


def test_new_connections_of_listed_sources_go_unanswered_and_others_pass() -> None:
    with socket.socket() as listener:
        listener.bind((private_loopback(), 0))
        listener.listen()
        refused, other, established = private_loopback(), private_loopback(), private_loopback()
        with socket.socket() as old:
            old.bind((established, 0))
            old.connect(listener.getsockname())
            accepted = listener.accept()[0]
            synfilter.attach(listener.fileno(), [refused, established])
            assert not answered(listener, refused)
            assert answered(listener, other)
            assert not answered(listener, established)
            old.sendall(b"still here")               # an established connection is never touched
            assert accepted.recv(100) == b"still here"
            accepted.close()
        synfilter.attach(listener.fileno(), [])
        assert answered(listener, refused)


def test_a_dual_stack_listener_filters_ipv4_and_ipv6_sources() -> None:
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 here: {e}")
    with listener:
        listener.listen()
        port = listener.getsockname()[1]
        refused = private_loopback()
        synfilter.attach(listener.fileno(), ["::/64", refused])
        for source, target, family in [("::1", "::1", socket.AF_INET6), (refused, "127.0.0.1", socket.AF_INET)]:
            with socket.socket(family) as client:
                client.bind((source, 0))
                client.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    client.connect((target, port))
        synfilter.attach(listener.fileno(), [])


def test_the_program_stays_within_the_kernel_limit() -> None:
    many = [f"10.0.{i // 250}.{i % 250}" for i in range(2000)] + [f"2001:db8:{i:x}::/64" for i in range(2000)]
    assert len(synfilter.program(many)) < 4096
    with pytest.raises(ValueError):
        synfilter.program(["2001:db8::/48"])
