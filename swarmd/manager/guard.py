"""Connection limits and failed-handshake backoff on the remote API, per source.

A caller with a wrong join token fails inside gRPC's TLS handshake, in C, where Python never sees
the connection; an idle TCP connection is not seen at all. Two things are visible, though: gRPC
asks the server credentials' fetcher for its configuration on every new connection, and every
call that gets through the handshake passes the authorisation interceptor with its peer address.
Both hooks run on gRPC's own threads (the fetcher on one of its few I/O threads, before the
handshake), so they only record and signal, in O(1); everything else happens on the guard's own
thread, which asks the kernel which connections are open on the listen port (inet_diag) and
hears from it of every connection it frees there (sock_diag destroy reports, where permitted):

- A connection that has not made an authenticated call is *unproven*. Unproven connections are
  capped per source and in total; past a cap the newest are shut down (a connection younger than
  ``young`` is spared, it may be mid-handshake). Cap cuts are not failures.
- A connection that closed, or stayed open past ``grace``, without a call is a failed handshake,
  charged to its source. Past a threshold the source is refused for a backoff that doubles with
  each further failure. While the failures of all sources together exceed a global budget, one
  failure is enough for a backoff (for a source that has not authenticated lately).
- A refused source, or one at its cap, is refused at accept: a BPF filter on the listening socket
  (``synfilter``) drops its SYNs, since a connection shut down after gRPC accepted it may already
  have had its handshake. What gRPC accepted before the filter changed is shut down.

A source is an IPv4 address or an IPv6 /64 (one host usually owns a whole /64). A source in
backoff, or not yet forgiven, is never evicted from the ledger; other sources are, oldest first,
so the ledger's memory is bounded however many sources there are.

Costs: the per-call hook is one dict lookup, the per-connection hook a flag and at most one
eventfd write per pass. A full lookup costs time in proportion to the open connections, so
lookups are spaced to keep them under a fifth of one core; in between, the kernel is asked only
for the connections of sources that are refused, have an unproven connection or failed lately,
and the destroy reports are read as they come (they cost next to nothing).
"""

from __future__ import annotations

import collections
import errno
import heapq
import ipaddress
import logging
import os
import selectors
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Container, Iterable, Sequence
from dataclasses import dataclass, field

from swarmd import sockdiag, synfilter
from swarmd.logs import LogLimiter

log = logging.getLogger(__name__)

Key = tuple[str, int]                    # (source ip, source port)
Seen = tuple[str, int, int]              # (source ip, source port, socket inode)


@dataclass(frozen=True)
class Limits:
    """The policy; the defaults are the daemon's."""

    threshold: int = 10                  # failures in ``window`` that start a backoff
    trusted_threshold: int = 50          # the same for a source that authenticated recently
    global_threshold: int = 1000         # failures in ``window`` from all sources: one then suffices
    window: float = 60.0
    backoff: float = 1.0                 # the first backoff; each further failure doubles it
    max_backoff: float = 60.0
    forgive_after: float = 120.0         # no failure for this long: the source starts from nothing
    trust_period: float = 600.0          # how long an authenticated call vouches for its source
    grace: float = 10.0                  # an open connection without a call by then has failed
    max_unproven_per_source: int = 128   # open connections without an authenticated call
    max_unproven_trusted: int = 1024     # the same for a source that authenticated recently
    max_unproven: int = 1024             # the same, all sources together
    young: float = 1.0                   # a connection this new is not cut for a cap
    max_sources: int = 32768
    max_connections: int = 65536
    max_targeted: int = 64               # sources a lookup between full ones filters for
    lookup_share: float = 0.2            # of one core, at most, for full lookups
    pass_interval: float = 0.001         # the guard's passes are at least this far apart
    log_burst: int = 10                  # warnings per ``log_period``; the rest are counted
    log_period: float = 60.0


PENDING, CALLED, IDLE, REFUSED = range(4)   # IDLE: open past the grace without a call (counted)


def source_of(ip: str) -> str:
    """The unit a limit applies to: an IPv4 address, or the /64 of an IPv6 one (written
    ``2001:db8:1:2::/64``, which the kernel filter understands)."""
    if ":" not in ip:
        return ip  # IPv4 as the kernel writes it
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return f"{ipaddress.IPv6Network((int(addr) >> 64 << 64, 64))}"
    return ip


@dataclass(slots=True)
class _Conn:
    ip: str
    port: int
    source: str
    since: float
    state: int = PENDING
    trusted: bool = False
    peer: str = ""                       # gRPC's peer text, once a call named it

    @property
    def unproven(self) -> bool:
        return self.state != REFUSED and not self.trusted


@dataclass(slots=True)
class _Source:
    failures: list[float] = field(default_factory=list)  # in the window, oldest first
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
        self._sources: collections.OrderedDict[str, _Source] = collections.OrderedDict()  # least recent first
        # Sources in backoff or not yet forgiven, by last failure: never evicted (a flood of
        # other sources must not reset a backoff), bounded by ``max_sources`` of their own.
        self._penalised: collections.OrderedDict[str, _Source] = collections.OrderedDict()
        self._suspects: collections.OrderedDict[str, float] = collections.OrderedDict()  # source -> last failure
        self._by_source: dict[str, set[int]] = {}            # source -> inodes of its tracked connections
        self._unproven: collections.Counter[str] = collections.Counter()  # source -> unproven connections
        self._recent: collections.deque[float] = collections.deque(maxlen=max(limits.global_threshold, 1))
        self.confirmed: dict[str, int] = {}                 # peer text -> inode, for connections that made a call
        # With the kernel's reports of closed connections, those decide what failed; a lookup
        # that misses a connection first only notes whether it was waiting for its first call.
        self.counts_closings = False
        self._gone: collections.OrderedDict[Key, bool] = collections.OrderedDict()
        self._closed_sources: set[str] = set()              # put in backoff by a closing, since the last lookup
        self._backoffs_changed = False                      # for gated(): a backoff started
        self._gated_blocked: list[str] = []
        self._gated_ends = float("inf")
        self._gated_limit = 0

    # -- sources -----------------------------------------------------------------------------------
    def _record(self, source: str) -> _Source | None:
        return self._penalised.get(source) or self._sources.get(source)

    def _source(self, source: str) -> _Source:
        """The record of ``source``, made if need be. A penalised source keeps its own record;
        of the others, past ``max_sources``, the least recently seen one makes room (one that
        holds an authenticated connection is passed over)."""
        record = self._penalised.get(source)
        if record is not None:
            return record
        record = self._sources.get(source)
        if record is not None:
            self._sources.move_to_end(source)
            return record
        record = self._sources[source] = _Source()
        for _ in range(8):
            if len(self._sources) <= self.limits.max_sources:
                break
            oldest, old = next(iter(self._sources.items()))
            if old.live_trusted:
                self._sources.move_to_end(oldest)
            else:
                del self._sources[oldest]
        return record

    def _forgive(self, now: float) -> None:
        """Penalised sources whose last failure is older than ``forgive_after`` start from
        nothing (their backoff ended long before: it is at most ``max_backoff``)."""
        penalised = self._penalised
        while penalised:
            source, record = next(iter(penalised.items()))
            if now - record.last_bad < self.limits.forgive_after or now < record.blocked_until:
                break
            del penalised[source]

    def blocked(self, ip: str, now: float) -> bool:
        record = self._penalised.get(source_of(ip))
        return record is not None and now < record.blocked_until

    def suspects(self, now: float, limit: int) -> list[str]:
        """Sources in backoff, then those with an unproven connection, then those with failures
        in the window, most recent first."""
        self._forgive(now)
        while self._suspects:
            key, last = next(iter(self._suspects.items()))
            if last > now - self.limits.window:
                break
            del self._suspects[key]
        found: dict[str, None] = {}
        oldest_blocked = now - self.limits.max_backoff  # a source that failed before is not in backoff
        for key in reversed(self._penalised):
            record = self._penalised[key]
            if record.last_bad <= oldest_blocked or len(found) >= limit:
                break
            if now < record.blocked_until:
                found[key] = None
        for inode in self._pending:
            if len(found) >= limit:
                break
            found[self._conns[inode].source] = None
        for key in reversed(self._suspects):
            if len(found) >= limit:
                break
            found[key] = None
        return list(found)[:limit]

    def gated(self, now: float, limit: int) -> tuple[list[str], float]:
        """The sources whose new connections the kernel should refuse (in backoff, longest
        remaining first, then those holding as many unproven connections as their cap allows),
        and when the earliest of those backoffs ends. The backoffs are gathered again only when
        one started or ended, so a pass pays for this when something changed."""
        if self._backoffs_changed or now >= self._gated_ends or limit != self._gated_limit:
            self._gated_limit = limit
            oldest_blocked = now - self.limits.max_backoff
            blocked: list[tuple[float, str]] = []
            for key in reversed(self._penalised):
                record = self._penalised[key]
                if record.last_bad <= oldest_blocked:
                    break
                if now < record.blocked_until:
                    blocked.append((record.blocked_until, key))
            chosen = heapq.nlargest(limit, blocked)
            self._gated_blocked = [key for _, key in chosen]
            self._gated_ends = min((until for until, _ in chosen), default=float("inf"))
            self._backoffs_changed = False
        found = dict.fromkeys(self._gated_blocked)
        for key, count in self._unproven.items():
            if len(found) >= limit:
                break
            if count >= self.limits.max_unproven_per_source and count >= self._source_cap(key, now):
                found[key] = None
        return list(found), self._gated_ends

    def failures(self, ip: str, now: float) -> int:
        record = self._record(source_of(ip))
        if record is None:
            return 0
        self._expire(record, now)
        return len(record.failures)

    def flooded(self, now: float) -> bool:
        """True while the failures of all sources in the window have used up the global budget."""
        recent = self._recent
        return len(recent) == recent.maxlen and recent[0] > now - self.limits.window

    def _expire(self, record: _Source, now: float) -> None:
        if now - record.last_bad >= self.limits.forgive_after:
            record.failures.clear()
            record.level = record.total = 0
        cutoff = now - self.limits.window
        stale = 0
        for at in record.failures:
            if at > cutoff:
                break
            stale += 1
        if stale:
            del record.failures[:stale]

    def failed(self, ip: str, now: float) -> bool:
        """One failed handshake from ``ip``; True if it started (or, after one ended, doubled) a
        backoff of its source."""
        limits = self.limits
        key = source_of(ip)
        self._recent.append(now)
        self._forgive(now)
        record = self._source(key)
        self._expire(record, now)
        record.last_bad = now
        record.total += 1
        if key in self._penalised:
            self._penalised.move_to_end(key)   # ordered by last failure, for _forgive
        self._suspects[key] = now
        self._suspects.move_to_end(key)
        while len(self._suspects) > limits.max_sources:
            self._suspects.popitem(last=False)
        record.failures.append(now)
        if len(record.failures) > max(limits.threshold, limits.trusted_threshold):
            del record.failures[0]
        if now < record.blocked_until:
            return False  # admitted before the backoff started: counted, not escalated
        trusted = record.live_trusted > 0 or now < record.trusted_until
        threshold = limits.trusted_threshold if trusted else 1 if self.flooded(now) else limits.threshold
        if record.level == 0 and len(record.failures) < threshold:
            return False
        if key not in self._penalised:
            if len(self._penalised) >= limits.max_sources:
                return False  # no room: the ledger is full of sources in backoff; the budget still counts it
            self._penalised[key] = self._sources.pop(key)
        # Over the threshold once, each further failure (until forgiven) starts a longer backoff.
        duration = min(limits.backoff * 2 ** min(record.level, 32), limits.max_backoff)
        record.level += 1
        record.blocked_until = now + duration
        self._backoffs_changed = True
        self._warn(f"refusing connections from {key} for {duration:g}s after {record.total} "
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
                record = self._source(source_of(ip))
                record.trusted_until = max(record.trusted_until, now + self.limits.trust_period)
            return
        self._mark_called(inode, self._conns[inode], peer, trusted, now)

    def closed(self, ip: str, port: int, now: float) -> None:
        """The kernel freed the connection from ip:port (after ``called`` learnt of any call
        on it): one that never made a call failed, whether or not a lookup ever saw it."""
        key = (ip, port)
        inode = self._by_key.get(key)
        if inode is not None:
            failed = self._drop(inode, now).state == PENDING
        elif key in self._gone:
            failed = self._gone.pop(key)
        elif key in self._early:
            del self._early[key]
            failed = False
        else:
            failed = True
        if failed and self.failed(ip, now):
            self._closed_sources.add(source_of(ip))

    def _set_state(self, inode: int, conn: _Conn, state: int, trusted: bool) -> None:
        """The one place a connection changes state, so the unproven counts stay true."""
        was = conn.unproven
        self._pending.pop(inode, None)
        self._idle.pop(inode, None)
        conn.state, conn.trusted = state, trusted
        if state == PENDING:
            self._pending[inode] = None
        elif state == IDLE:
            self._idle[inode] = None
        now_unproven = conn.unproven
        if was != now_unproven:
            self._count(conn.source, 1 if now_unproven else -1)

    def _count(self, source: str, delta: int) -> None:
        left = self._unproven[source] + delta
        if left > 0:
            self._unproven[source] = left
        else:
            del self._unproven[source]

    def _mark_called(self, inode: int, conn: _Conn, peer: str, trusted: bool, now: float) -> None:
        newly_trusted = trusted and not conn.trusted
        if conn.state != REFUSED:
            self._set_state(inode, conn, CALLED, conn.trusted or trusted)
        if conn.peer != peer:
            self.confirmed.pop(conn.peer, None)
            conn.peer = peer
            self.confirmed[peer] = inode
        if trusted:
            record = self._source(conn.source)
            record.trusted_until = max(record.trusted_until, now + self.limits.trust_period)
            if newly_trusted and conn.state != REFUSED:
                record.live_trusted += 1

    def _drop(self, inode: int, now: float) -> _Conn:
        conn = self._conns.pop(inode)
        key = (conn.ip, conn.port)
        if self._by_key.get(key) == inode:
            del self._by_key[key]
        mine = self._by_source.get(conn.source)
        if mine is not None:
            mine.discard(inode)
            if not mine:
                del self._by_source[conn.source]
        self._pending.pop(inode, None)
        self._idle.pop(inode, None)
        if conn.unproven:
            self._count(conn.source, -1)
        if conn.peer and self.confirmed.get(conn.peer) == inode:
            del self.confirmed[conn.peer]
        if conn.trusted and conn.state != REFUSED:
            record = self._record(conn.source)
            if record is not None:
                record.live_trusted = max(record.live_trusted - 1, 0)
                record.trusted_until = max(record.trusted_until, now + self.limits.trust_period)
        return conn

    def _add(self, inode: int, ip: str, port: int, state: int, now: float) -> _Conn:
        old = self._by_key.get((ip, port))
        if old is not None and old in self._conns:
            self._drop(old, now)
        conn = self._conns[inode] = _Conn(ip=ip, port=port, source=source_of(ip), since=now, state=state)
        self._by_key[(ip, port)] = inode
        self._by_source.setdefault(conn.source, set()).add(inode)
        if state == PENDING:
            self._pending[inode] = None
        if conn.unproven:
            self._count(conn.source, 1)
        while len(self._conns) > self.limits.max_connections:
            self._drop(next(iter(self._conns)), now)
        return conn

    def _refuse(self, inode: int, conn: _Conn, refuse: list[Seen]) -> None:
        self._set_state(inode, conn, REFUSED, conn.trusted)
        refuse.append((conn.ip, conn.port, inode))

    def observe(self, seen: Iterable[Seen], now: float, scope: Collection[str] | None = None) -> list[Seen]:
        """Reconcile with the kernel's list of open connections (inode 0 = already let go): all
        of them, or only those from the sources in ``scope``.

        Returns the connections to shut down: new ones from a source in backoff, unproven ones
        of a source that has just been put in backoff, and the newest unproven ones past a cap."""
        current: dict[int, Key] = {inode: (ip, port) for ip, port, inode in seen if inode}
        newly_blocked: set[str] = set()
        if scope is None:
            tracked: Collection[int] = self._conns.keys()
        else:
            tracked = set().union(*(self._by_source.get(key, ()) for key in scope))
        for inode in tracked - current.keys():
            conn = self._drop(inode, now)
            if self.counts_closings:
                self._gone[(conn.ip, conn.port)] = conn.state == PENDING
                while len(self._gone) > self.limits.max_connections:
                    self._gone.popitem(last=False)
            elif conn.state == PENDING and self.failed(conn.ip, now):
                newly_blocked.add(conn.source)
        newly_blocked.update(self._closed_sources)
        self._closed_sources.clear()
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
            self._set_state(inode, conn, IDLE, conn.trusted)  # counted once, kept till it closes or calls
            if self.failed(conn.ip, now):
                newly_blocked.add(conn.source)
        while self._early and next(iter(self._early.values()))[2] <= deadline:
            self._early.popitem(last=False)        # its connection closed before a lookup saw it
        for key in newly_blocked:
            for inode in list(self._by_source.get(key, ())):
                conn = self._conns[inode]
                if conn.unproven:
                    self._refuse(inode, conn, refuse)
        self._enforce_caps(now, refuse)
        return refuse

    # -- caps on unproven connections -------------------------------------------------------------
    def _source_cap(self, source: str, now: float) -> int:
        record = self._record(source)
        trusted = record is not None and (record.live_trusted > 0 or now < record.trusted_until)
        return self.limits.max_unproven_trusted if trusted else self.limits.max_unproven_per_source

    def _cut_newest(self, source: str, now: float, refuse: list[Seen], count: int | None = None,
                    keep: int = 0) -> int:
        """Shut down the newest unproven connections of ``source`` that are no longer young:
        ``count`` of them, or all but ``keep``; returns how many."""
        spare_after = now - self.limits.young
        candidates = sorted(((self._conns[i].since, i) for i in self._by_source.get(source, ())
                             if self._conns[i].unproven and self._conns[i].since <= spare_after), reverse=True)
        if count is None:
            count = len(candidates) - keep
        for _, inode in candidates[:max(count, 0)]:
            self._refuse(inode, self._conns[inode], refuse)
        return min(max(count, 0), len(candidates))

    def _enforce_caps(self, now: float, refuse: list[Seen]) -> None:
        limits = self.limits
        for source, count in list(self._unproven.items()):
            if count > limits.max_unproven_per_source:
                cap = self._source_cap(source, now)
                cut = self._cut_newest(source, now, refuse, keep=cap)
                if cut:
                    self._warn(f"closed {cut} connections from {source}: over the limit of {cap} "
                               "connections without an authenticated call", now)
        excess = sum(self._unproven.values()) - limits.max_unproven
        if excess <= 0:
            return
        # All sources together: cut from whichever source holds the most, so that a flood from
        # many addresses costs each of them, and a source with one connection is cut last.
        heap = [(-count, source) for source, count in self._unproven.items()]
        heapq.heapify(heap)
        cuts: collections.Counter[str] = collections.Counter()
        while excess > 0 and heap:
            negative, source = heapq.heappop(heap)
            cuts[source] += 1
            excess -= 1
            if negative < -1:
                heapq.heappush(heap, (negative + 1, source))
        cut = sum(self._cut_newest(source, now, refuse, count=count) for source, count in cuts.items())
        if cut:
            self._warn(f"closed {cut} connections from {len(cuts)} sources: over the limit of "
                       f"{limits.max_unproven} connections without an authenticated call", now)

    def unproven(self, ip: str | None = None) -> int:
        """Open connections without an authenticated call: of ``ip``'s source, or in all."""
        if ip is None:
            return sum(self._unproven.values())
        return self._unproven[source_of(ip)]

    def known(self) -> Container[int]:
        """The inodes of the connections being tracked (a live view): a lookup need not decode
        their addresses, which this ledger already has."""
        return self._conns.keys()

    def tracked(self) -> int:
        return len(self._conns)

    def sources(self) -> int:
        return len(self._sources) + len(self._penalised)


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
# the sources whose new connections the kernel drops from now on (replacing the previous set)
Gate = Callable[[Sequence[str]], None]


class HandshakeGuard:
    """The ledger wired to the kernel, to gRPC's two hooks and to a thread of its own.

    ``on_connection`` runs on a gRPC I/O thread before each handshake and only wakes the
    guard's thread; ``on_call`` runs on every call and only looks the peer up in a dict,
    queueing the first call of each connection for the next pass. ``poll`` is one pass: a
    kernel lookup, the ledger's verdicts, the refusals; the thread runs it, tests call it."""

    def __init__(self, limits: Limits = Limits(), clock: Callable[[], float] = time.monotonic,
                 lister: Lister | None = None, refuser: Refuser | None = None, gate: Gate | None = None) -> None:
        self._clock = clock
        self._gate = gate
        self._gated: list[str] = []
        self._gate_ends = float("inf")
        self._closings: sockdiag.Closings | None = None
        self._closings_local: str | None = None
        self._logs = LogLimiter(limits.log_burst, limits.log_period, lambda m: log.warning("%s", m))
        self.ledger = Ledger(limits, self._logs.warn)
        self._limits = limits
        self._lister = lister
        self._refuser = refuser or _Refuser()
        self._calls: dict[str, tuple[bool, float]] = {}  # first calls not yet reconciled, by peer
        self._lock = threading.Lock()
        self._woken = False                     # a wake-up is pending: the next ones need no syscall
        self._wake_fd = -1                      # an eventfd the guard's thread waits on, once bound
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._broken = False
        self._next_full = float("-inf")
        self._next_pass = float("-inf")        # every lookup's cost counts against the share
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
        self._gate = _ListenerGate(port, listen_ip)
        try:
            self._closings = sockdiag.Closings(port)
            self._closings_local = local
            self.ledger.counts_closings = True
        except OSError as e:  # without CAP_NET_ADMIN: failures are what lookups see
            log.info("closed connections are counted as lookups see them: %s", e.strerror or e)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="handshake-guard", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the guard's thread (bounded: a pass never blocks for long)."""
        self._closing.set()
        if self._wake_fd >= 0:
            os.eventfd_write(self._wake_fd, 1)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return
        if self._closings is not None:
            self._closings.close()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def _run(self) -> None:
        """Wake on a new connection or a closed one (so a backoff starts, and the gate shuts,
        right after the failure that earns it), else now and then."""
        limits = self._limits
        with selectors.DefaultSelector() as waiting:
            waiting.register(self._wake_fd, selectors.EVENT_READ)
            if self._closings is not None:
                waiting.register(self._closings.fileno(), selectors.EVENT_READ)
            lookup_due = False
            while not self._closing.is_set():
                # Unproven connections need looking at again soon (they may close, outstay the
                # grace or pass a cap once no longer young) even when nothing new arrives.
                timeout = limits.young / 4 if self.ledger.unproven() else limits.grace / 4
                if lookup_due:
                    timeout = min(timeout, self._next_pass - self._clock())
                timeout = min(timeout, self._gate_ends - self._clock())
                if not waiting.select(max(0.0, timeout)):
                    lookup_due = True
                try:
                    os.eventfd_read(self._wake_fd)
                    lookup_due = True
                except BlockingIOError:
                    pass
                self._woken = False
                if self._closing.is_set():
                    return
                if lookup_due and self._clock() >= self._next_pass:
                    lookup_due = False
                    self.poll()
                else:  # a lookup must wait for the CPU share; closings cost next to nothing
                    self.poll(lookup=False)
                self._closing.wait(limits.pass_interval)

    def _disable(self, e: OSError) -> None:
        self._broken = True
        log.warning("failed TLS handshakes are not rate-limited: %s", e.strerror or e)

    def _failed_lookup(self, e: OSError) -> None:
        """A kernel that cannot list sockets at all switches the guard off; anything else (out of
        descriptors in a flood, a timeout) costs one pass."""
        if e.errno in _UNSUPPORTED:
            self._disable(e)
            return
        self._log_error(f"could not check a new connection for failed TLS handshakes: {e.strerror or e}")

    def _log_error(self, message: str, exc_info: bool = False) -> None:
        """At most one such line per log period: this runs on every pass."""
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
        """gRPC is about to handshake a new connection: wake the guard, nothing more (this runs
        on one of gRPC's few I/O threads, which every connection of the process shares)."""
        if not self._woken:
            self._woken = True
            fd = self._wake_fd
            if fd >= 0:
                try:
                    os.eventfd_write(fd, 1)
                except OSError:
                    pass  # closed meanwhile: the guard is stopping

    def poll(self, lookup: bool = True) -> None:
        """One pass: see what is open (without ``lookup``, only what closed), decide, shut
        down what the ledger refuses."""
        lister = self._lister
        if lister is None or self._broken:
            return
        with self._lock:  # one lookup at a time, so an older list never overrides a newer one
            try:
                refuse = self._look(lister) if lookup else self._closed_only()
            except OSError as e:
                self._failed_lookup(e)
                return
            except Exception:  # noqa: BLE001 - a defect must cost a check, not the guard or a log flood
                self._log_error("the failed-handshake guard failed", exc_info=True)
                return
        if refuse:
            try:
                self._refuser(refuse)
            except Exception:  # noqa: BLE001 - as above
                self._log_error("the failed-handshake guard failed", exc_info=True)
        self._update_gate()

    def _update_gate(self) -> None:
        """Refusing a connection after gRPC accepted it races its handshake; the gate refuses
        the next ones of the same sources in the kernel, before the accept."""
        gate = self._gate
        if gate is None:
            return
        with self._lock:
            sources, self._gate_ends = self.ledger.gated(self._clock(), synfilter.MAX_SOURCES)
        if sources == self._gated:
            return
        try:
            gate(sources)
            self._gated = sources
        except OSError as e:
            self._gate = None
            log.warning("new connections of refused sources are shut down after the accept: %s", e.strerror or e)
        except Exception:  # noqa: BLE001 - a defect must cost the gate, not the guard
            self._gate = None
            self._log_error("the failed-handshake guard failed", exc_info=True)

    def _look(self, lister: Lister) -> list[Seen]:
        started = self._clock()
        # Read before the list is taken, applied after the calls: a call always precedes the
        # closing of its connection, and a closing read here is of a connection in no later list.
        closed = self._closings.drain() if self._closings is not None else []
        try:
            if started < self._next_full:
                # Over the budget for a full lookup: watch only the sources that are refused, have
                # an unproven connection or failed lately (the kernel filters for them, so this
                # costs little); a connection from another source that opens and closes before
                # the next full lookup goes unseen.
                scope = self.ledger.suspects(started, self._limits.max_targeted)
                if not scope:
                    self._reconcile_calls()
                    self._apply_closings(closed)
                    return self.ledger.observe([], self._clock(), ())
                seen = list(lister(scope))
                self._reconcile_calls()
                self._apply_closings(closed)
                return self.ledger.observe(seen, self._clock(), scope)
            seen = list(lister(None))
            self._reconcile_calls()
            self._apply_closings(closed)
            refuse = self.ledger.observe(seen, self._clock())
            self._next_full = started + (self._clock() - started) / self._limits.lookup_share
            return refuse
        finally:
            self._next_pass = started + (self._clock() - started) / self._limits.lookup_share

    def _closed_only(self) -> list[Seen]:
        closed = self._closings.drain() if self._closings is not None else []
        self._reconcile_calls()
        self._apply_closings(closed)
        return self.ledger.observe([], self._clock(), ())

    def _apply_closings(self, closed: list[sockdiag.Connection]) -> None:
        now, local = self._clock(), self._closings_local
        for c in closed:
            if c.peer_port and (local is None or c.local_ip == local):
                self.ledger.closed(c.peer_ip, c.peer_port, now)

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


class _ListenerGate:
    """The kernel filter on this process's listening sockets of the remote API."""

    def __init__(self, port: int, listen_ip: str) -> None:
        self._port, self._ip = port, listen_ip
        self._fds = sockdiag.FdFinder()

    def __call__(self, sources: Sequence[str]) -> None:
        for fd in self._fds.find(sockdiag.listener_inodes(self._port, self._ip)).values():
            synfilter.attach(fd, sources)


class _Refuser:
    def __init__(self) -> None:
        self._fds = sockdiag.FdFinder()

    def __call__(self, conns: list[Seen]) -> None:
        for inode, fd in self._fds.find({inode for _, _, inode in conns if inode}).items():
            sockdiag.shut_down(fd, inode)
