"""Rate-limiting of failed TLS handshakes on the remote API, per source address.

A caller with a wrong join token fails inside gRPC's TLS handshake, in C, where Python never sees
the connection. Two things are visible, though: gRPC asks the server credentials' fetcher for its
configuration on every new connection, before the handshake, and every call that gets through
the handshake passes the authorisation interceptor with its peer address. So at each new
connection the guard asks the kernel which connections are open on the listen port (inet_diag):
a connection that closed, or stayed open past a grace period, without producing a call is a
failed handshake, charged to its source address. Past a threshold the source is refused for a
backoff that doubles with each further failure: its new connections are shut down before gRPC
starts their handshake. A source that authenticated recently gets a higher threshold, a quiet
source is forgiven, memory is bounded, and the per-call hook is one dict lookup.

A plain TCP connection that sends nothing counts as a failure too (it cannot be told apart from
a handshake that failed at once); the joiner's reachability check is one, which the thresholds
leave room for.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from swarmd import sockdiag

log = logging.getLogger(__name__)

Key = tuple[str, int]                    # (source ip, source port)
Seen = tuple[str, int, int]              # (source ip, source port, socket inode)


@dataclass(frozen=True)
class Limits:
    """The policy; the defaults are the daemon's."""

    threshold: int = 10                  # failures in ``window`` that start a backoff
    trusted_threshold: int = 50          # the same for a source that authenticated recently
    window: float = 60.0
    backoff: float = 1.0                 # the first backoff; each further failure doubles it
    max_backoff: float = 60.0
    forgive_after: float = 120.0         # no failure for this long: the source starts from nothing
    trust_period: float = 600.0          # how long an authenticated call vouches for its source
    grace: float = 10.0                  # an open connection without a call by then has failed
    max_sources: int = 4096
    max_connections: int = 16384
    log_burst: int = 10                  # warnings per ``log_period``; the rest are counted
    log_period: float = 60.0


PENDING, CALLED, FAILED, REFUSED = range(4)


@dataclass
class _Conn:
    inode: int
    since: float
    state: int = PENDING
    trusted: bool = False
    peer: str = ""                       # gRPC's peer text, once a call named it


@dataclass
class _Source:
    failures: collections.deque[float] = field(default_factory=collections.deque)  # in the window
    total: int = 0                       # failures since the source was last forgiven
    level: int = 0                       # backoffs so far; the next lasts backoff * 2**level
    blocked_until: float = 0.0
    last_bad: float = float("-inf")      # last failure
    trusted_until: float = float("-inf")


class LogLimiter:
    """At most ``burst`` warnings per ``period``; the next one that gets out says how many did not."""

    def __init__(self, burst: int, period: float, emit: Callable[[str], None]) -> None:
        self._burst, self._period, self._emit = burst, period, emit
        self._start = float("-inf")
        self._sent = 0
        self._dropped = 0

    def warn(self, message: str, now: float) -> None:
        if now - self._start >= self._period:
            self._start, self._sent = now, 0
        if self._sent >= self._burst:
            self._dropped += 1
            return
        self._sent += 1
        if self._dropped:
            message += f" ({self._dropped} similar warnings suppressed)"
            self._dropped = 0
        self._emit(message)


class Ledger:
    """The accounting, without I/O or clock: every method takes ``now`` (seconds, monotonic)."""

    def __init__(self, limits: Limits, warn: Callable[[str, float], None]) -> None:
        self.limits = limits
        self._warn = warn
        self._conns: collections.OrderedDict[Key, _Conn] = collections.OrderedDict()
        self._sources: collections.OrderedDict[str, _Source] = collections.OrderedDict()
        self.confirmed: dict[str, Key] = {}  # peer text -> key, for connections that made a call

    # -- sources -----------------------------------------------------------------------------------
    def _source(self, ip: str) -> _Source:
        source = self._sources.get(ip)
        if source is None:
            source = self._sources[ip] = _Source()
            if len(self._sources) > self.limits.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(ip)
        return source

    def blocked(self, ip: str, now: float) -> bool:
        source = self._sources.get(ip)
        return source is not None and now < source.blocked_until

    def failures(self, ip: str, now: float) -> int:
        source = self._sources.get(ip)
        if source is None:
            return 0
        self._expire(source, now)
        return len(source.failures)

    def _expire(self, source: _Source, now: float) -> None:
        if now - source.last_bad >= self.limits.forgive_after:
            source.failures.clear()
            source.level = source.total = 0
        while source.failures and source.failures[0] <= now - self.limits.window:
            source.failures.popleft()

    def failed(self, ip: str, now: float) -> None:
        """One failed handshake from ``ip``; may start (or, after one ended, double) a backoff."""
        limits = self.limits
        source = self._source(ip)
        self._expire(source, now)
        source.last_bad = now
        source.total += 1
        source.failures.append(now)
        threshold = limits.trusted_threshold if now < source.trusted_until else limits.threshold
        while len(source.failures) > max(limits.threshold, limits.trusted_threshold):
            source.failures.popleft()
        if now < source.blocked_until:
            return  # admitted before the backoff started: counted, not escalated
        if source.level == 0 and len(source.failures) < threshold:
            return
        # Over the threshold once, each further failure (until forgiven) starts a longer backoff.
        duration = min(limits.backoff * 2 ** min(source.level, 32), limits.max_backoff)
        source.level += 1
        source.blocked_until = now + duration
        self._warn(f"refusing connections from {ip} for {duration:g}s after {source.total} "
                   "failed TLS handshakes", now)

    def _trust(self, ip: str, now: float) -> None:
        self._source(ip).trusted_until = now + self.limits.trust_period

    # -- connections ---------------------------------------------------------------------------------
    def called(self, ip: str, port: int, peer: str, trusted: bool, now: float) -> None:
        """A call arrived on ip:port: that connection's handshake succeeded."""
        key = (ip, port)
        conn = self._conns.get(key)
        if conn is None:  # not seen by a lookup yet: its inode is learnt at the next one
            conn = self._conns[key] = _Conn(inode=0, since=now)
            self._bound_connections()
        conn.state, conn.peer, conn.trusted = CALLED, peer, trusted
        self.confirmed[peer] = key
        if trusted:
            self._trust(ip, now)

    def _forget(self, key: Key, conn: _Conn, now: float) -> None:
        del self._conns[key]
        if conn.peer:
            self.confirmed.pop(conn.peer, None)
        if conn.state == PENDING:
            self.failed(key[0], now)

    def _bound_connections(self) -> None:
        while len(self._conns) > self.limits.max_connections:
            _, conn = self._conns.popitem(last=False)
            if conn.peer:
                self.confirmed.pop(conn.peer, None)

    def observe(self, seen: Iterable[Seen], now: float) -> list[Seen]:
        """Reconcile with the kernel's list of open connections (inode 0 = already let go).

        Returns the connections to shut down: new ones from a source in backoff, and ones still
        waiting for their first call from a source that has just been put in backoff."""
        current: dict[Key, int] = {}
        for ip, port, inode in seen:
            if inode:
                current[(ip, port)] = inode
        for key, conn in list(self._conns.items()):
            now_inode = current.get(key)
            if now_inode is None or (conn.inode and now_inode != conn.inode):
                self._forget(key, conn, now)        # closed (and perhaps its port reused)
            elif conn.state == CALLED and conn.trusted:
                self._trust(key[0], now)            # a live authenticated channel vouches for its source
        refuse: list[Seen] = []
        for key, inode in current.items():
            known = self._conns.get(key)
            if known is not None:
                known.inode = known.inode or inode
                continue
            if self.blocked(key[0], now):
                self._conns[key] = _Conn(inode=inode, since=now, state=REFUSED)
                refuse.append((key[0], key[1], inode))
            else:
                self._conns[key] = _Conn(inode=inode, since=now)
        self._bound_connections()
        deadline = now - self.limits.grace
        for key, conn in self._conns.items():
            if conn.state == PENDING and conn.since <= deadline:
                conn.state = FAILED                 # open without a call: counted once, kept till it closes
                self.failed(key[0], now)
        for key, conn in self._conns.items():
            if conn.state in (PENDING, FAILED) and self.blocked(key[0], now):
                conn.state = REFUSED
                refuse.append((key[0], key[1], conn.inode))
        return refuse

    def tracked(self) -> int:
        return len(self._conns)

    def sources(self) -> int:
        return len(self._sources)


def peer_key(peer: str) -> Key | None:
    """``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5`` (perhaps percent-encoded) as (ip, port)."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    host, _, port = urllib.parse.unquote(rest).rpartition(":")
    host = host.strip("[]")
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    try:
        return host, int(port)
    except ValueError:
        return None


Lister = Callable[[], Iterable[Seen]]
Refuser = Callable[[list[Seen]], None]


class HandshakeGuard:
    """The ledger wired to the kernel and to gRPC's two hooks.

    ``on_connection`` runs on a gRPC thread before each handshake (a kernel lookup, rare: nodes
    keep their channels open); ``on_call`` runs on every call and only looks the peer up in a
    dict, queueing the first call of each connection for the next ``on_connection``."""

    def __init__(self, limits: Limits = Limits(), clock: Callable[[], float] = time.monotonic,
                 lister: Lister | None = None, refuser: Refuser | None = None) -> None:
        self._clock = clock
        self._logs = LogLimiter(limits.log_burst, limits.log_period, lambda m: log.warning("%s", m))
        self.ledger = Ledger(limits, self._logs.warn)
        self._lister = lister
        self._refuser = refuser or _shut_down
        self._calls: dict[str, tuple[bool, float]] = {}  # first calls not yet reconciled, by peer
        self._max_calls = limits.max_connections
        self._lock = threading.Lock()
        self._broken = False

    def bind(self, listen_ip: str, port: int) -> None:
        """Start watching ``listen_ip:port`` (an unspecified address: every local address)."""
        if self._lister is not None:
            return
        try:
            families = sockdiag.listener_families(port, listen_ip)
        except OSError as e:
            self._disable(e)
            return
        try:
            ip = ipaddress.ip_address(listen_ip)
            listen_ip = str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)
        except ValueError:
            pass
        any_ip = listen_ip in ("", "0.0.0.0", "::")

        def lister() -> list[Seen]:
            return [(c.peer_ip, c.peer_port, c.inode) for c in sockdiag.list_connections(port, families)
                    if any_ip or c.local_ip == listen_ip]
        self._lister = lister

    def _disable(self, e: OSError) -> None:
        self._broken = True
        log.warning("failed TLS handshakes are not rate-limited: %s", e.strerror or e)

    def on_call(self, peer: str, authenticated: bool) -> None:
        calls = self._calls
        if peer in self.ledger.confirmed or peer in calls or len(calls) >= self._max_calls:
            return
        calls[peer] = (authenticated, self._clock())

    def on_connection(self) -> None:
        lister = self._lister
        if lister is None or self._broken:
            return
        with self._lock:  # one lookup at a time, so an older list never overrides a newer one
            try:
                seen = list(lister())
            except OSError as e:
                self._disable(e)
                return
            now = self._clock()
            while self._calls:
                peer, (authenticated, at) = self._calls.popitem()
                key = peer_key(peer)
                if key is not None:
                    self.ledger.called(key[0], key[1], peer, authenticated, at)
            refuse = self.ledger.observe(seen, now)
        if refuse:
            self._refuser(refuse)


def _shut_down(conns: list[Seen]) -> None:
    fds = sockdiag.find_fds({inode for _, _, inode in conns if inode})
    for inode, fd in fds.items():
        sockdiag.shut_down(fd, inode)
