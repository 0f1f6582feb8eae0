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

import errno
import ipaddress
import logging
import os
import selectors
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence

from swarmd import sockdiag, synfilter
from swarmd.logs import LogLimiter
from swarmd.manager.ledger import Key, Ledger, Limits, Seen
from swarmd.ratelimit import source_of

__all__ = ["HandshakeGuard", "Ledger", "Limits", "Seen", "peer_key", "source_of"]

log = logging.getLogger(__name__)


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
