"""The failed-handshake guard's accounting and backoff, on an injected clock (no sockets)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest

from swarmd.logs import LogLimiter
from swarmd.manager.guard import (
    HandshakeGuard,
    Ledger,
    Limits,
    Seen,
    peer_key,
    source_of,
)

A, B = "127.0.0.9", "127.0.0.10"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Book:
    """A ledger with a kernel view the test edits: ``open``/``close`` connections, then ``look``."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.clock = Clock()
        self.warnings: list[str] = []
        self.ledger = Ledger(limits or Limits(), lambda message, now: self.warnings.append(message))
        self.live: dict[tuple[str, int], int] = {}
        self._next = 100

    def open(self, ip: str) -> tuple[str, int]:
        self._next += 1
        key = (ip, self._next)
        self.live[key] = self._next  # inode
        return key

    def close(self, key: tuple[str, int]) -> None:
        del self.live[key]

    def look(self) -> list[Seen]:
        return self.ledger.observe([(ip, port, inode) for (ip, port), inode in self.live.items()], self.clock.now)

    def fail(self, ip: str, times: int = 1) -> list[Seen]:
        """``times`` connections from ``ip`` that are seen, then close without a call."""
        refused: list[Seen] = []
        for _ in range(times):
            key = self.open(ip)
            refused += self.look()
            self.close(key)
        refused += self.look()
        return refused

    def succeed(self, ip: str, trusted: bool = True) -> tuple[str, int]:
        key = self.open(ip)
        assert self.look() == []
        self.ledger.called(key[0], key[1], f"ipv4:{key[0]}:{key[1]}", trusted, self.clock.now)
        return key


def test_connections_that_close_without_a_call_are_failures_and_calls_are_not() -> None:
    book = Book()
    book.fail(A, 3)
    assert book.ledger.failures(A, book.clock.now) == 3
    key = book.succeed(A)
    book.close(key)
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 3
    assert book.ledger.failures(B, book.clock.now) == 0
    assert book.warnings == []


def test_threshold_starts_a_backoff_that_refuses_new_connections_at_once() -> None:
    book = Book()
    book.fail(A, 9)
    assert not book.ledger.blocked(A, book.clock.now)
    book.fail(A)
    assert book.ledger.blocked(A, book.clock.now)
    assert book.warnings == [f"refusing connections from {A} for 1s after 10 failed TLS handshakes"]
    key = book.open(A)
    assert book.look() == [(A, key[1], book.live[key])]
    assert book.look() == []  # refused once, then only waited for
    other = book.open(B)
    assert book.look() == []  # another source is not affected
    book.ledger.called(B, other[1], f"ipv4:{B}:{other[1]}", True, book.clock.now)
    book.close(key)
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 10  # a refused connection is no further failure
    assert len(book.warnings) == 1


def test_each_failure_after_a_backoff_doubles_it_up_to_the_cap() -> None:
    book = Book()
    book.fail(A, 10)
    durations = [1.0]
    for _ in range(8):
        book.clock.now += durations[-1]
        assert not book.ledger.blocked(A, book.clock.now)
        book.fail(A)
        assert book.ledger.blocked(A, book.clock.now)
        durations.append(min(durations[-1] * 2, 60.0))
        book.clock.now += 0.5  # failures during the backoff itself are waited out, not escalated
    assert [w.split(" for ")[1].split("s ")[0] for w in book.warnings] == ["1", "2", "4", "8", "16", "32", "60",
                                                                          "60", "60"]


def test_failures_expire_with_the_window_and_a_quiet_source_is_forgiven() -> None:
    limits = Limits()
    book = Book(limits)
    book.fail(A, 9)
    book.clock.now += limits.window + 1
    book.fail(A)
    assert not book.ledger.blocked(A, book.clock.now)
    assert book.ledger.failures(A, book.clock.now) == 1
    book.fail(A, 9)  # ten in the window again
    assert book.ledger.blocked(A, book.clock.now)
    book.clock.now += 1
    book.fail(A)
    assert book.warnings[-1].startswith(f"refusing connections from {A} for 2s")
    book.clock.now += limits.forgive_after + 1
    book.fail(A, 9)
    assert not book.ledger.blocked(A, book.clock.now)
    book.fail(A)
    assert book.warnings[-1].startswith(f"refusing connections from {A} for 1s")  # the level started over


def test_a_recently_authenticated_source_has_a_higher_threshold() -> None:
    limits = Limits()
    book = Book(limits)
    key = book.succeed(A)
    book.close(key)
    book.look()
    book.fail(A, limits.trusted_threshold - 1)
    assert not book.ledger.blocked(A, book.clock.now)
    book.fail(A)
    assert book.ledger.blocked(A, book.clock.now)
    assert book.warnings == [f"refusing connections from {A} for 1s after 50 failed TLS handshakes"]


def test_trust_lasts_while_an_authenticated_channel_stays_open() -> None:
    limits = Limits()
    book = Book(limits)
    book.succeed(A)  # a node's long-lived channel
    book.clock.now += limits.trust_period * 3
    book.fail(A, 20)
    assert not book.ledger.blocked(A, book.clock.now)


def test_trust_ends_after_the_trust_period() -> None:
    limits = Limits()
    book = Book(limits)
    key = book.succeed(A)
    book.close(key)
    book.look()
    book.clock.now += limits.trust_period + 1
    book.fail(A, 10)
    assert book.ledger.blocked(A, book.clock.now)


def test_an_unauthenticated_caller_is_no_failure_but_earns_no_trust() -> None:
    book = Book()
    book.succeed(A, trusted=False)  # e.g. a removed node: its handshake worked, its calls are refused
    book.fail(A, 10)
    assert book.ledger.blocked(A, book.clock.now)


def test_correct_joins_are_never_penalised() -> None:
    """A join is one token-bound channel that makes calls: no failure, however many."""
    book = Book()
    for _ in range(1000):
        key = book.succeed(A)
        book.close(key)
        book.look()
        book.clock.now += 0.01
    assert book.ledger.failures(A, book.clock.now) == 0
    assert not book.ledger.blocked(A, book.clock.now)
    assert book.warnings == []


def test_a_connection_open_past_the_grace_without_a_call_counts_once() -> None:
    limits = Limits()
    book = Book(limits)
    key = book.open(A)
    book.look()
    book.clock.now += limits.grace - 0.1
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 0
    book.clock.now += 0.2
    book.look()
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 1
    book.close(key)
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 1


def test_waiting_connections_of_a_source_put_in_backoff_are_cut() -> None:
    book = Book()
    waiting = book.open(A)
    book.look()
    assert book.fail(A, 10) == [(A, waiting[1], book.live[waiting])]
    assert book.look() == []


def test_a_reused_source_port_is_a_new_connection() -> None:
    book = Book()
    key = book.succeed(A)
    book.live[key] = 999  # the same ip:port, another socket
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 0  # the old one had made a call
    del book.live[key]
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 1  # the new one never did


def test_a_call_seen_before_its_connection_adopts_the_inode() -> None:
    book = Book()
    book.live[(A, 5)] = 55
    book.ledger.called(A, 5, f"ipv4:{A}:5", True, book.clock.now)
    book.look()
    book.live[(A, 5)] = 55
    book.look()
    del book.live[(A, 5)]
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 0


def test_memory_is_bounded() -> None:
    limits = Limits(max_sources=8, max_connections=16)
    book = Book(limits)
    for i in range(50):
        book.fail(f"127.1.0.{i}")
    assert book.ledger.sources() <= 8
    for i in range(40):
        book.open(f"127.2.0.{i}")
    book.look()
    assert book.ledger.tracked() <= 16
    assert len(book.ledger.confirmed) <= 16


def test_log_limiter_counts_what_it_held_back() -> None:
    sent: list[str] = []
    limiter = LogLimiter(2, 60.0, sent.append)
    for i in range(5):
        limiter.warn(f"w{i}", 0.0)
    limiter.warn("later", 61.0)
    assert sent == ["w0", "w1", "later (3 similar warnings suppressed)"]


def test_many_sources_give_a_bounded_number_of_warnings() -> None:
    book = Book(Limits(log_burst=3))
    limiter = LogLimiter(3, 60.0, book.warnings.append)
    book.ledger = Ledger(book.ledger.limits, limiter.warn)
    for i in range(10):
        book.fail(f"127.3.0.{i}", 10)
    assert len(book.warnings) == 3


@pytest.mark.parametrize(("peer", "key"), [
    ("ipv4:127.0.0.1:5000", ("127.0.0.1", 5000)),
    ("ipv6:[::1]:6000", ("::1", 6000)),
    ("ipv6:%5B::1%5D:6001", ("::1", 6001)),
    ("ipv6:[::ffff:127.0.0.5]:7", ("127.0.0.5", 7)),
    ("unix:/run/x.sock", None),
    ("ipv4:127.0.0.1:notaport", None),
    ("", None),
])
def test_peer_key(peer: str, key: tuple[str, int] | None) -> None:
    assert peer_key(peer) == key


class Kernel:
    """The kernel's view for a guard: open connections, with the peer filter done here."""

    def __init__(self, clock: Clock | None = None, cost: float = 0.0) -> None:
        self.live: dict[tuple[str, int], int] = {}
        self.refused: list[Seen] = []
        self.broken = False
        self.exhausted = False
        self.lookups: list[list[str] | None] = []
        self.clock, self.cost = clock, cost

    def list(self, peers: list[str] | None) -> Iterable[Seen]:
        if self.broken:
            raise PermissionError(1, "Operation not permitted")
        if self.exhausted:
            raise OSError(24, "Too many open files")
        self.lookups.append(peers)
        if self.clock is not None and peers is None:
            self.clock.now += self.cost  # a full lookup takes time
        return [(ip, port, inode) for (ip, port), inode in self.live.items() if peers is None or ip in peers]

    def refuse(self, conns: list[Seen]) -> None:
        self.refused += conns


def test_guard_reconciles_calls_before_it_looks_for_closed_connections() -> None:
    clock, kernel = Clock(), Kernel()
    guard = HandshakeGuard(clock=clock, lister=kernel.list, refuser=kernel.refuse)
    kernel.live[(A, 1)] = 11
    guard.poll()
    guard.on_call(f"ipv4:{A}:1", True)   # the first call on that connection
    guard.on_call(f"ipv4:{A}:1", True)   # queued once only
    del kernel.live[(A, 1)]              # the client closes after its call
    kernel.live[(A, 2)] = 12
    guard.poll()
    assert guard.ledger.failures(A, clock.now) == 0
    guard.on_call(f"ipv4:{A}:1", True)   # known now: a dict lookup and nothing else
    assert f"ipv4:{A}:1" not in guard.ledger.confirmed  # closed, so forgotten
    for port in range(3, 13):
        kernel.live[(B, port)] = 100 + port
        guard.poll()
        del kernel.live[(B, port)]
    guard.poll()
    assert guard.ledger.blocked(B, clock.now)
    kernel.live[(B, 99)] = 199
    guard.poll()
    assert kernel.refused == [(B, 99, 199)]


def test_guard_switches_itself_off_once_when_the_kernel_will_not_list(caplog: pytest.LogCaptureFixture) -> None:
    kernel = Kernel()
    kernel.broken = True
    guard = HandshakeGuard(clock=Clock(), lister=kernel.list, refuser=kernel.refuse)
    with caplog.at_level(logging.WARNING, logger="swarmd.manager.guard"):
        guard.poll()
        guard.poll()
    assert [r.getMessage() for r in caplog.records] == [
        "failed TLS handshakes are not rate-limited: Operation not permitted"]


def test_full_lookups_are_spaced_and_refused_sources_are_still_looked_up_in_between() -> None:
    clock = Clock()
    kernel = Kernel(clock, cost=0.002)
    guard = HandshakeGuard(Limits(lookup_share=0.2), clock=clock, lister=kernel.list, refuser=kernel.refuse)
    for port in range(1, 11):  # ten failures, each seen by a full lookup
        kernel.live[(B, port)] = port
        guard.poll()
        del kernel.live[(B, port)]
        clock.now += 0.01
    guard.poll()
    assert guard.ledger.blocked(B, clock.now)
    assert all(peers is None for peers in kernel.lookups)
    kernel.lookups.clear()
    clock.now += 0.001  # within the 10 ms that the last 2 ms lookup buys
    kernel.live[(B, 50)] = 150
    kernel.live[(A, 51)] = 151
    guard.poll()
    assert kernel.lookups == [[B]]             # only the refused source, filtered in the kernel
    assert kernel.refused == [(B, 50, 150)]
    guard.poll()
    assert kernel.refused == [(B, 50, 150)]    # once
    clock.now += 0.01
    guard.poll()
    assert kernel.lookups[-1] is None          # the budget allows a full lookup again
    assert guard.ledger.tracked() == 2


def test_without_refused_sources_a_lookup_over_budget_is_skipped() -> None:
    clock = Clock()
    kernel = Kernel(clock, cost=0.002)
    guard = HandshakeGuard(clock=clock, lister=kernel.list, refuser=kernel.refuse)
    guard.poll()
    guard.poll()
    assert kernel.lookups == [None]


def test_over_budget_a_source_that_waits_or_failed_is_watched_on_every_connection() -> None:
    clock = Clock()
    kernel = Kernel(clock, cost=0.05)  # full lookups at most every 0.25 s
    guard = HandshakeGuard(clock=clock, lister=kernel.list, refuser=kernel.refuse)
    for port in range(1, 11):
        kernel.live[(A, port)] = port
        guard.poll()
        del kernel.live[(A, port)]
        clock.now += 0.01
    kernel.live[(A, 11)] = 11
    guard.poll()
    assert kernel.lookups == [None] + [[A]] * 10
    assert guard.ledger.blocked(A, clock.now)
    assert kernel.refused == [(A, 11, 11)]


def test_a_passing_lookup_failure_skips_one_check_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock, kernel = Clock(), Kernel()
    guard = HandshakeGuard(clock=clock, lister=kernel.list, refuser=kernel.refuse)
    kernel.exhausted = True
    with caplog.at_level(logging.WARNING, logger="swarmd.manager.guard"):
        guard.poll()
        guard.poll()
    assert [r.getMessage() for r in caplog.records] == [
        "could not check a new connection for failed TLS handshakes: Too many open files"]
    kernel.exhausted = False
    kernel.live[(A, 1)] = 11
    guard.poll()
    assert kernel.lookups == [None]  # still on


def test_the_connection_hook_only_wakes_the_guard() -> None:
    """gRPC calls it on an I/O thread before every handshake: no lookup, no lock there."""
    clock, kernel = Clock(), Kernel()
    guard = HandshakeGuard(clock=clock, lister=kernel.list, refuser=kernel.refuse)
    kernel.live[(A, 1)] = 11
    for _ in range(100):
        guard.on_connection()
    assert kernel.lookups == []
    guard.poll()
    assert kernel.lookups == [None]
    assert guard.ledger.tracked() == 1


# -- sources -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ip", "source"), [
    ("127.0.0.9", "127.0.0.9"),
    ("::ffff:10.1.2.3", "10.1.2.3"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::1", "::/64"),
])
def test_sources_are_ipv4_addresses_and_ipv6_64s(ip: str, source: str) -> None:
    assert source_of(ip) == source


def test_ipv6_sources_are_aggregated_by_64() -> None:
    """A host owns its whole /64: ten addresses of it are one source."""
    book = Book()
    for i in range(10):
        book.fail(f"2001:db8:1:2::{i + 1:x}")
    assert book.ledger.blocked("2001:db8:1:2::ffff", book.clock.now)
    assert not book.ledger.blocked("2001:db8:1:3::1", book.clock.now)
    assert book.warnings == ["refusing connections from 2001:db8:1:2::/64 for 1s after 10 failed TLS handshakes"]
    key = book.open("2001:db8:1:2:ffff::1")
    assert book.look() == [("2001:db8:1:2:ffff::1", key[1], book.live[key])]


def test_a_blocked_source_is_never_evicted() -> None:
    limits = Limits(max_sources=64)
    book = Book(limits)
    book.fail(A, 10)
    for i in range(5000):
        book.ledger.failed(f"10.{i // 250 % 250}.{i % 250}.1", book.clock.now)
    assert book.ledger.sources() <= 2 * limits.max_sources  # penalised ones have a bound of their own
    assert book.ledger.blocked(A, book.clock.now)
    book.clock.now += 1
    assert not book.ledger.blocked(A, book.clock.now)
    for i in range(5000, 10000):  # after its backoff, others keep coming; it is not forgiven yet
        book.ledger.failed(f"10.{i // 250 % 250}.{i % 250}.1", book.clock.now)
    book.fail(A)
    assert book.ledger.blocked(A, book.clock.now)
    assert book.warnings[-1] == f"refusing connections from {A} for 2s after 11 failed TLS handshakes"


def test_a_full_ledger_of_penalised_sources_still_counts_newcomers_globally() -> None:
    limits = Limits(max_sources=8, threshold=1, global_threshold=1000)
    book = Book(limits)
    for i in range(8):
        book.ledger.failed(f"10.0.0.{i + 1}", book.clock.now)
    assert all(book.ledger.blocked(f"10.0.0.{i + 1}", book.clock.now) for i in range(8))
    book.ledger.failed(B, book.clock.now)          # no room for another backoff: counted, not refused
    assert not book.ledger.blocked(B, book.clock.now)
    assert book.ledger.sources() == 9
    assert all(book.ledger.blocked(f"10.0.0.{i + 1}", book.clock.now) for i in range(8))


def test_past_the_global_budget_one_failure_starts_a_backoff() -> None:
    limits = Limits(global_threshold=50)
    book = Book(limits)
    trusted = book.succeed(B)                      # a node that authenticated
    for i in range(49):
        book.ledger.failed(f"10.0.1.{i + 1}", book.clock.now)
    assert not book.ledger.flooded(book.clock.now)
    assert not any(book.ledger.blocked(f"10.0.1.{i + 1}", book.clock.now) for i in range(49))
    book.ledger.failed("10.0.2.1", book.clock.now)
    assert book.ledger.flooded(book.clock.now)
    book.fail(A)
    assert book.ledger.blocked(A, book.clock.now)  # one failure is enough now
    book.fail(B)
    assert not book.ledger.blocked(B, book.clock.now)  # but not for a source that authenticated
    book.close(trusted)
    book.clock.now += limits.window + 1
    assert not book.ledger.flooded(book.clock.now)
    book.fail("10.0.3.1")
    assert not book.ledger.blocked("10.0.3.1", book.clock.now)


def feed(ledger: Ledger, start: int, count: int, now: float) -> None:
    """One failure from each of ``count`` distinct IPv4 sources."""
    for i in range(start, start + count):
        ledger.failed(f"10.{i // 62500 % 250}.{i // 250 % 250}.{i % 250}", now + i * 1e-5)


def test_the_ledger_holds_100000_sources_in_bounded_room() -> None:
    """Past the global budget each of them is put in backoff: penalised sources are bounded too."""
    limits = Limits()
    ledger = Ledger(limits, lambda message, now: None)
    feed(ledger, 0, 100_000, 1000.0)
    assert ledger.sources() <= 2 * limits.max_sources
    assert ledger.flooded(1001.0)


def test_a_full_ledger_takes_no_more_memory() -> None:
    import tracemalloc

    ledger = Ledger(Limits(max_sources=1024), lambda message, now: None)
    tracemalloc.start()
    try:
        feed(ledger, 0, 5_000, 1000.0)
        full = tracemalloc.get_traced_memory()[0]
        feed(ledger, 5_000, 20_000, 1000.05)
        grown = tracemalloc.get_traced_memory()[0] - full
    finally:
        tracemalloc.stop()
    assert ledger.sources() <= 2 * 1024
    assert grown < 64 << 10, grown


# -- caps on unproven connections ------------------------------------------------------------------------

def test_unproven_connections_of_a_source_are_capped_newest_first() -> None:
    limits = Limits(max_unproven_per_source=8, max_unproven=100)
    book = Book(limits)
    keys = [book.open(A) for _ in range(12)]
    assert book.look() == []                       # young: they may be mid-handshake
    book.clock.now += limits.young
    refused = book.look()
    assert refused == [(A, k[1], book.live[k]) for k in reversed(keys[8:])]
    assert book.ledger.unproven(A) == 8
    other = book.open(B)
    assert book.look() == []
    book.clock.now += limits.young
    assert book.look() == []                       # another source is not affected
    for k in keys[8:]:
        book.close(k)
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 0  # cut for a cap: no failure
    book.ledger.called(B, other[1], f"ipv4:{B}:{other[1]}", True, book.clock.now)
    assert book.ledger.unproven(B) == 0


def test_a_source_that_authenticated_has_a_higher_cap() -> None:
    limits = Limits(max_unproven_per_source=8, max_unproven_trusted=20, max_unproven=100)
    book = Book(limits)
    book.succeed(A)
    for _ in range(20):
        book.open(A)
    assert book.look() == []
    book.clock.now += limits.young
    assert book.look() == []
    book.open(A)
    assert book.look() == []
    book.clock.now += limits.young
    assert len(book.look()) == 1


def test_the_total_cap_cuts_from_the_sources_that_hold_the_most() -> None:
    limits = Limits(max_unproven_per_source=50, max_unproven=30)
    book = Book(limits)
    for _ in range(20):
        book.open(A)
    for i in range(10):
        for _ in range(2):
            book.open(f"10.0.4.{i + 1}")
    lone = book.open(B)
    assert book.look() == []
    book.clock.now += limits.young
    refused = book.look()
    assert len(refused) == 41 - 30
    assert {ip for ip, _, _ in refused} == {A}
    assert book.ledger.unproven() == 30
    assert book.ledger.unproven(B) == 1 and lone in book.live


def test_authenticated_connections_are_never_cut() -> None:
    limits = Limits(max_unproven_per_source=2, max_unproven=2)
    book = Book(limits)
    nodes = [book.succeed(f"10.0.5.{i + 1}") for i in range(50)]
    for _ in range(5):
        book.open(A)
    assert book.look() == []
    book.clock.now += limits.young
    refused = book.look()
    assert len(refused) == 3 and {ip for ip, _, _ in refused} == {A}
    assert all(book.ledger.unproven(ip) == 0 for ip, _ in nodes)


# -- the kernel's reports of closed connections ---------------------------------------------------------

def test_a_closing_no_lookup_saw_is_still_a_failure_unless_it_made_a_call() -> None:
    book = Book()
    book.ledger.counts_closings = True
    for port in range(1, 11):
        book.ledger.closed(A, port, book.clock.now)        # opened and closed between two lookups
    assert book.ledger.blocked(A, book.clock.now)
    book.ledger.called(B, 7, f"ipv4:{B}:7", True, book.clock.now)
    book.ledger.closed(B, 7, book.clock.now)               # it made a call first
    assert book.ledger.failures(B, book.clock.now) == 0


def test_a_closing_and_a_lookup_that_both_see_it_count_once() -> None:
    book = Book()
    book.ledger.counts_closings = True
    key = book.open(A)
    book.look()
    book.close(key)
    book.look()                                            # the lookup misses it first
    assert book.ledger.failures(A, book.clock.now) == 0
    book.ledger.closed(*key, book.clock.now)               # then the report arrives
    assert book.ledger.failures(A, book.clock.now) == 1
    other = book.open(A)
    book.look()
    book.ledger.closed(*other, book.clock.now)             # the report first
    book.close(other)
    book.look()
    assert book.ledger.failures(A, book.clock.now) == 2
    refused = book.open(B)
    book.look()
    book.ledger.called(B, refused[1], f"ipv4:{B}:{refused[1]}", True, book.clock.now)
    book.ledger.closed(*refused, book.clock.now)
    assert book.ledger.failures(B, book.clock.now) == 0


def test_the_gate_lists_sources_in_backoff_longest_first_and_sources_at_their_cap() -> None:
    limits = Limits(max_unproven_per_source=3)
    book = Book(limits)
    book.fail(A, 10)                                       # 1 s
    book.clock.now += 1
    book.fail(A)                                           # 2 s
    book.fail(B, 10)                                       # 1 s
    for _ in range(3):
        book.open("10.0.6.1")
    book.look()
    sources, ends = book.ledger.gated(book.clock.now, 10)
    assert sources == [A, B, "10.0.6.1"]
    assert ends == book.clock.now + 1
    assert book.ledger.gated(book.clock.now, 1)[0] == [A]
    book.clock.now += 1
    assert book.ledger.gated(book.clock.now, 10)[0] == [A, "10.0.6.1"]
