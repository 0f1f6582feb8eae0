"""Channels to other managers, shared by every caller and closed only when no call uses them.

Every channel the daemon opens is built here (``open_channel``, one set of options); the ones
for calls (forwarding, membership, renewal) are also owned here (``Remotes``), while a
long-lived stream (a node's session, a Raft link, a join) holds its own for its lifetime.

A channel is made for an (address, TLS name) pair the first time a call needs it and reused
by every later call. A failed call never closes it: gRPC reconnects a channel by itself, and
closing a shared channel would cancel every other caller's call on it ("Channel closed!").
Channels are let go in two cases only, and then only once their last call has ended: the
node's certificate changed (``renew``: new calls get channels that present the new one), or
the manager stopped (``close``).

Leader hints travel as trailing metadata (``LEADER_KEY``), never inside error texts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from swarmd.errors import SwarmError

log = logging.getLogger(__name__)

LEADER_KEY = "swarmd-leader-addr"        # trailing metadata: where the leader is
REQUEST_ID_KEY = "swarmd-request-id"     # metadata: a forwarded call's ID, for safe retries
MAX_REQUEST_ID = 64

# One set of options for every channel to a manager: notice a dead peer within seconds, and
# reconnect quickly once it is back (gRPC's default backoff grows to two minutes).
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A verified manager's answers may be large (a forwarded list of 10,000 nodes is over
    # 10 MiB); what we send it stays within what its remote API accepts.
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 4 << 20),
]


def open_channel(addr: str, credentials: grpc.ChannelCredentials, server_name: str,
                 options: Sequence[tuple[str, int]] = (), common: bool = True) -> grpc.Channel:
    """Every channel this daemon opens to a manager: one set of options (``CHANNEL_OPTIONS``),
    which ``options`` may extend or override, and the TLS name the peer's certificate must carry.
    A joiner's one-off channel (``common=False``) keeps gRPC's defaults: it makes two calls and
    must see a failed handshake as such, not retry it."""
    merged = dict(CHANNEL_OPTIONS) if common else {}
    merged.update(options)
    return grpc.secure_channel(addr, credentials, options=[("grpc.ssl_target_name_override", server_name),
                                                           *merged.items()])


def leader_hint(error: grpc.RpcError) -> str | None:
    """The leader address a manager attached to its refusal, if any."""
    try:
        metadata = error.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - errors raised before a call started carry none
        return None
    for key, value in metadata:
        if key == LEADER_KEY and isinstance(value, str) and value:
            return value
    return None


@dataclass
class _Entry:
    channel: grpc.Channel
    users: int = 0
    retired: bool = False


class Remotes:
    """Owns the channels this node opens to managers (``credentials`` is read per new channel)."""

    def __init__(self, credentials: Callable[[], grpc.ChannelCredentials]) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str], _Entry] = {}
        self._closed = False

    @contextmanager
    def channel(self, addr: str, server_name: str = "swarm-manager") -> Iterator[grpc.Channel]:
        """A channel to ``addr`` whose certificate must name ``server_name``, held for the block."""
        key = (addr, server_name)
        with self._lock:
            if self._closed:
                raise SwarmError("this node is stopping")
            entry = self._live.get(key)
            if entry is None:
                channel = open_channel(addr, self._credentials(), server_name)
                entry = self._live[key] = _Entry(channel)
            entry.users += 1
        try:
            yield entry.channel
        finally:
            with self._lock:
                entry.users -= 1
                close = entry.retired and entry.users == 0
            if close:
                entry.channel.close()

    def renew(self) -> None:
        """The node certificate changed: later calls get new channels; the old ones close as
        soon as their calls end."""
        self._retire(closing=False)

    def close(self) -> None:
        """The manager stopped: no new channels; the open ones close as their calls end."""
        self._retire(closing=True)

    def _retire(self, closing: bool) -> None:
        with self._lock:
            self._closed = self._closed or closing
            entries, self._live = list(self._live.values()), {}
            idle = []
            for entry in entries:
                entry.retired = True
                if entry.users == 0:
                    idle.append(entry)
        for entry in idle:
            entry.channel.close()
