"""The guard's accounting: connections, sources, caps, failures and backoffs, without I/O.

Every method takes ``now`` (seconds, monotonic), so the policy is tested on a clock of its own;
``guard.py`` feeds it what the kernel and gRPC report and carries out its verdicts. The policy
itself is described there and in docs/security.md.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable, Collection, Container, Iterable
from dataclasses import dataclass, field

from swarmd.ratelimit import source_of

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
