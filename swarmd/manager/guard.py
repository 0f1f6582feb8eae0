"""Rate-limiting of failed TLS handshakes on the remote API, per source address.

A caller with a wrong join token fails inside gRPC's TLS handshake, in C, where Python never sees
the connection. Two things are visible, though: gRPC asks the server credentials' fetcher for its
configuration on every new connection, before the handshake, and every call that gets through
the handshake passes the authorisation interceptor with its peer address. So at a new connection
the guard asks the kernel which connections are open on the listen port (inet_diag): one that
closed, or stayed open past a grace period, without producing a call is a failed handshake,
charged to its source address. Past a threshold the source is refused for a backoff that doubles
with each further failure: its new connections are shut down before gRPC reads from them.

A plain TCP connection that sends nothing counts as a failure too (it cannot be told apart from a
handshake that failed at once); the joiner's reachability check is one, which the thresholds
leave room for.

Costs: the per-call hook is one dict lookup. A full lookup costs time in proportion to the open
connections, so full lookups are spaced to keep the guard under a fifth of one core; in between,
the kernel is asked only for the connections of sources that are refused, failed lately, or have
a connection waiting for its first call. A connection from any other source that opens and
closes entirely between two full lookups is not seen: on a busy manager, a source's first
failures may go uncounted, not its later ones.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Container, Iterable, Sequence
from dataclasses import dataclass, field

from swarmd import sockdiag
from swarmd.logs import LogLimiter

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
    max_targeted: int = 64               # sources a lookup between full ones filters for
    lookup_share: float = 0.2            # of one core, at most, for full lookups
    log_burst: int = 10                  # warnings per ``log_period``; the rest are counted
    log_period: float = 60.0


PENDING, CALLED, IDLE, REFUSED = range(4)   # IDLE: open past the grace without a call (counted)


@dataclass
class _Conn:
    ip: str
    port: int
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
    live_trusted: int = 0                # open connections that made an authenticated call


class Ledger:
    """The accounting, without I/O or clock: every method takes ``now`` (seconds, monotonic).

    Connections are keyed by socket inode (a reused ip:port is another socket); the work per
    lookup is in proportion to what changed, plus set differences done in C."""

    def __init__(self, limits: Limits, warn: Callable[[str, float], None]) -> None:
        self.limits = limits
        self._warn = warn
        self._conns: dict[int, _Conn] = {}                  # inode -> connection, oldest first
        self._by_key: dict[Key, int] = {}                   # ip:port -> inode
        self._pending: dict[int, None] = {}                 # PENDING inodes, oldest first
        self._idle: dict[int, None] = {}                    # IDLE inodes
        self._early: collections.OrderedDict[Key, tuple[str, bool, float]] = collections.OrderedDict()
        self._sources: collections.OrderedDict[str, _Source] = collections.OrderedDict()
        self._blocked: dict[str, float] = {}                # ip -> end of its backoff
        self._suspects: collections.OrderedDict[str, float] = collections.OrderedDict()  # ip -> last failure
        self._by_source: dict[str, set[int]] = {}            # ip -> inodes of its tracked connections
        self.confirmed: dict[str, int] = {}                 # peer text -> inode, for connections that made a call

    # -- sources -----------------------------------------------------------------------------------
    def _source(self, ip: str) -> _Source:
        source = self._sources.get(ip)
        if source is None:
            source = self._sources[ip] = _Source()
            if len(self._sources) > self.limits.max_sources:
                evicted, _ = self._sources.popitem(last=False)
                self._blocked.pop(evicted, None)
        else:
            self._sources.move_to_end(ip)
        return source

    def blocked(self, ip: str, now: float) -> bool:
        until = self._blocked.get(ip)
        return until is not None and now < until

    def suspects(self, now: float, limit: int) -> list[str]:
        """Sources in backoff, then those with a connection waiting for its first call, then
        those with failures in the window, most recent first."""
        for ip in [ip for ip, until in self._blocked.items() if until <= now]:
            del self._blocked[ip]
        while self._suspects:
            ip, last = next(iter(self._suspects.items()))
            if last > now - self.limits.window:
                break
            del self._suspects[ip]
        found = dict.fromkeys(self._blocked)
        for inode in self._pending:
            if len(found) >= limit:
                break
            found[self._conns[inode].ip] = None
        for ip in reversed(self._suspects):
            if len(found) >= limit:
                break
            found[ip] = None
        return list(found)[:limit]

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

    def failed(self, ip: str, now: float) -> bool:
        """One failed handshake from ``ip``; True if it started (or, after one ended, doubled) a backoff."""
        limits = self.limits
        source = self._source(ip)
        self._expire(source, now)
        source.last_bad = now
        source.total += 1
        self._suspects[ip] = now
        self._suspects.move_to_end(ip)
        while len(self._suspects) > self.limits.max_sources:
            self._suspects.popitem(last=False)
        source.failures.append(now)
        while len(source.failures) > max(limits.threshold, limits.trusted_threshold):
            source.failures.popleft()
        if now < source.blocked_until:
            return False  # admitted before the backoff started: counted, not escalated
        trusted = source.live_trusted > 0 or now < source.trusted_until
        if source.level == 0 and len(source.failures) < (limits.trusted_threshold if trusted else limits.threshold):
            return False
        # Over the threshold once, each further failure (until forgiven) starts a longer backoff.
        duration = min(limits.backoff * 2 ** min(source.level, 32), limits.max_backoff)
        source.level += 1
        source.blocked_until = self._blocked[ip] = now + duration
        self._warn(f"refusing connections from {ip} for {duration:g}s after {source.total} "
                   "failed TLS handshakes", now)
        return True

    # -- connections ---------------------------------------------------------------------------------
    def called(self, ip: str, port: int, peer: str, trusted: bool, now: float) -> None:
        """A call arrived from ip:port: that connection's handshake succeeded."""
        key = (ip, port)
        inode = self._by_key.get(key)
        if inode is None:  # not seen by a lookup yet: kept until one sees it
            self._early[key] = (peer, trusted, now)
            self._early.move_to_end(key)
            while len(self._early) > self.limits.max_connections:
                self._early.popitem(last=False)
            if trusted:
                source = self._source(ip)
                source.trusted_until = max(source.trusted_until, now + self.limits.trust_period)
            return
        self._mark_called(inode, self._conns[inode], peer, trusted, now)

    def _mark_called(self, inode: int, conn: _Conn, peer: str, trusted: bool, now: float) -> None:
        self._pending.pop(inode, None)
        self._idle.pop(inode, None)
        conn.state = CALLED
        if conn.peer != peer:
            self.confirmed.pop(conn.peer, None)
            conn.peer = peer
            self.confirmed[peer] = inode
        if trusted:
            source = self._source(conn.ip)
            source.trusted_until = max(source.trusted_until, now + self.limits.trust_period)
            if not conn.trusted:
                conn.trusted = True
                source.live_trusted += 1

    def _drop(self, inode: int, now: float) -> _Conn:
        conn = self._conns.pop(inode)
        key = (conn.ip, conn.port)
        if self._by_key.get(key) == inode:
            del self._by_key[key]
        mine = self._by_source.get(conn.ip)
        if mine is not None:
            mine.discard(inode)
            if not mine:
                del self._by_source[conn.ip]
        self._pending.pop(inode, None)
        self._idle.pop(inode, None)
        if conn.peer and self.confirmed.get(conn.peer) == inode:
            del self.confirmed[conn.peer]
        if conn.trusted:
            source = self._sources.get(conn.ip)
            if source is not None:
                source.live_trusted = max(source.live_trusted - 1, 0)
                source.trusted_until = max(source.trusted_until, now + self.limits.trust_period)
        return conn

    def _add(self, inode: int, ip: str, port: int, state: int, now: float) -> _Conn:
        old = self._by_key.get((ip, port))
        if old is not None and old in self._conns:
            self._drop(old, now)
        conn = self._conns[inode] = _Conn(ip=ip, port=port, since=now, state=state)
        self._by_key[(ip, port)] = inode
        self._by_source.setdefault(ip, set()).add(inode)
        if state == PENDING:
            self._pending[inode] = None
        while len(self._conns) > self.limits.max_connections:
            self._drop(next(iter(self._conns)), now)
        return conn

    def observe(self, seen: Iterable[Seen], now: float, scope: Collection[str] | None = None) -> list[Seen]:
        """Reconcile with the kernel's list of open connections (inode 0 = already let go): all
        of them, or only those from the sources in ``scope``.

        Returns the connections to shut down: new ones from a source in backoff, and ones still
        waiting for their first call from a source that has just been put in backoff."""
        current: dict[int, Key] = {inode: (ip, port) for ip, port, inode in seen if inode}
        newly_blocked: set[str] = set()
        if scope is None:
            tracked: Collection[int] = self._conns.keys()
        else:
            tracked = set().union(*(self._by_source.get(ip, ()) for ip in scope))
        for inode in tracked - current.keys():
            conn = self._drop(inode, now)
            if conn.state == PENDING and self.failed(conn.ip, now):
                newly_blocked.add(conn.ip)
        refuse: list[Seen] = []
        for inode in current.keys() - self._conns.keys():
            ip, port = current[inode]
            if self.blocked(ip, now):
                self._add(inode, ip, port, REFUSED, now)
                refuse.append((ip, port, inode))
                continue
            conn = self._add(inode, ip, port, PENDING, now)
            early = self._early.pop((ip, port), None)
            if early is not None:
                self._mark_called(inode, conn, early[0], early[1], early[2])
        deadline = now - self.limits.grace
        while self._pending:
            inode = next(iter(self._pending))
            conn = self._conns[inode]
            if conn.since > deadline:
                break
            del self._pending[inode]
            conn.state = IDLE                      # counted once, kept till it closes or calls
            self._idle[inode] = None
            if self.failed(conn.ip, now):
                newly_blocked.add(conn.ip)
        while self._early and next(iter(self._early.values()))[2] <= deadline:
            self._early.popitem(last=False)        # its connection closed before a lookup saw it
        if newly_blocked:
            for inode in [*self._pending, *self._idle]:
                conn = self._conns[inode]
                if conn.ip in newly_blocked:
                    self._pending.pop(inode, None)
                    self._idle.pop(inode, None)
                    conn.state = REFUSED
                    refuse.append((conn.ip, conn.port, inode))
        return refuse

    def known(self) -> Container[int]:
        """The inodes of the connections being tracked (a live view): a lookup need not decode
        their addresses, which this ledger already has."""
        return self._conns.keys()

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


_UNSUPPORTED = frozenset({errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT,
                          errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL})

# (peers or None for every connection) -> the open connections on the listen port
Lister = Callable[[Sequence[str] | None], Iterable[Seen]]
Refuser = Callable[[list[Seen]], None]


class HandshakeGuard:
    """The ledger wired to the kernel and to gRPC's two hooks.

    ``on_connection`` runs on a gRPC thread before each handshake; ``on_call`` runs on every
    call and only looks the peer up in a dict, queueing the first call of each connection for
    the next ``on_connection``."""

    def __init__(self, limits: Limits = Limits(), clock: Callable[[], float] = time.monotonic,
                 lister: Lister | None = None, refuser: Refuser | None = None) -> None:
        self._clock = clock
        self._logs = LogLimiter(limits.log_burst, limits.log_period, lambda m: log.warning("%s", m))
        self.ledger = Ledger(limits, self._logs.warn)
        self._limits = limits
        self._lister = lister
        self._refuser = refuser or _Refuser()
        self._calls: dict[str, tuple[bool, float]] = {}  # first calls not yet reconciled, by peer
        self._lock = threading.Lock()
        self._broken = False
        self._next_full = float("-inf")
        self._next_error_log = float("-inf")

    def bind(self, listen_ip: str, port: int) -> None:
        """Start watching ``listen_ip:port`` (an unspecified address: every local address)."""
        if self._lister is not None:
            return
        try:
            ip = ipaddress.ip_address(listen_ip)
            listen_ip = str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)
        except ValueError:
            pass
        local = None if listen_ip in ("", "0.0.0.0", "::") else listen_ip
        try:
            families = sockdiag.listener_families(port, listen_ip)
        except OSError as e:
            self._disable(e)
            return

        known = self.ledger.known()

        def lister(peers: Sequence[str] | None) -> list[Seen]:
            return [(c.peer_ip, c.peer_port, c.inode)
                    for c in sockdiag.list_connections(port, families, local, peers, known)]
        self._lister = lister

    def _disable(self, e: OSError) -> None:
        self._broken = True
        log.warning("failed TLS handshakes are not rate-limited: %s", e.strerror or e)

    def _failed_lookup(self, e: OSError) -> None:
        """A kernel that cannot list sockets at all switches the guard off; anything else (out of
        descriptors in a flood, a timeout) costs this one connection its check."""
        if e.errno in _UNSUPPORTED:
            self._disable(e)
            return
        self._log_error(f"could not check a new connection for failed TLS handshakes: {e.strerror or e}")

    def _log_error(self, message: str, exc_info: bool = False) -> None:
        """At most one such line per log period: this runs for every new connection."""
        now = self._clock()
        if now >= self._next_error_log:
            self._next_error_log = now + self._limits.log_period
            log.warning("%s", message, exc_info=exc_info)

    def on_call(self, peer: str, authenticated: bool) -> None:
        calls = self._calls
        if peer in self.ledger.confirmed or peer in calls or len(calls) >= self._limits.max_connections:
            return
        calls[peer] = (authenticated, self._clock())

    def on_connection(self) -> None:
        lister = self._lister
        if lister is None or self._broken:
            return
        with self._lock:  # one lookup at a time, so an older list never overrides a newer one
            try:
                refuse = self._look(lister)
            except OSError as e:
                self._failed_lookup(e)
                return
            except Exception:  # noqa: BLE001 - a defect must cost a check, not a handshake or a log flood
                self._log_error("the failed-handshake guard failed", exc_info=True)
                return
        if refuse:
            try:
                self._refuser(refuse)
            except Exception:  # noqa: BLE001 - as above
                self._log_error("the failed-handshake guard failed", exc_info=True)

    def _look(self, lister: Lister) -> list[Seen]:
        started = self._clock()
        if started < self._next_full:
            # Over the budget for a full lookup: watch only the sources that have failed lately
            # (the kernel filters for them, so this costs little); a new source goes unseen.
            scope = self.ledger.suspects(started, self._limits.max_targeted)
            if not scope:
                return []
            seen = list(lister(scope))
            self._reconcile_calls()
            return self.ledger.observe(seen, self._clock(), scope)
        seen = list(lister(None))
        self._reconcile_calls()
        refuse = self.ledger.observe(seen, self._clock())
        spent = self._clock() - started
        self._next_full = started + spent / self._limits.lookup_share
        return refuse

    def _reconcile_calls(self) -> None:
        """After the kernel's list was taken: a call queued before a connection closed is
        always known by the time its closing is seen."""
        drained: list[tuple[float, str, bool]] = []
        while self._calls:  # popitem is atomic: on_call may add more meanwhile
            peer, (authenticated, at) = self._calls.popitem()
            drained.append((at, peer, authenticated))
        for at, peer, authenticated in sorted(drained):
            key = peer_key(peer)
            if key is not None:
                self.ledger.called(key[0], key[1], peer, authenticated, at)


class _Refuser:
    def __init__(self) -> None:
        self._fds = sockdiag.FdFinder()

    def __call__(self, conns: list[Seen]) -> None:
        for inode, fd in self._fds.find({inode for _, _, inode in conns if inode}).items():
            sockdiag.shut_down(fd, inode)
