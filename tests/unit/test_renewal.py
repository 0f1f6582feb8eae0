"""Certificate renewal timing: 50–80 % of the lifetime, forced renewals, backoff on failure."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone

from swarmd.node.renewal import Renewer, renewal_time
from tests.harness import wait_for

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def test_renewal_time_is_between_half_and_four_fifths_of_the_lifetime() -> None:
    rng = random.Random(7)
    nb, na = T0, T0 + timedelta(days=90)
    times = [renewal_time(nb, na, rng) for _ in range(500)]
    assert all(nb + timedelta(days=45) <= t <= nb + timedelta(days=72) for t in times)
    assert all(t.second == 0 and t.microsecond == 0 for t in times)  # minute granularity, as Docker
    assert max(times) - min(times) > timedelta(days=20)  # really spread, not one fixed point


class FakeCA:
    """A certificate that is renewed for real by the renewer's callback (no network)."""

    def __init__(self, now: datetime, lifetime: timedelta, failures: int = 0) -> None:
        self.now = now
        self.lifetime = lifetime
        self.validity = (now - timedelta(hours=1), now + lifetime)
        self.failures = failures
        self.calls = 0
        self.renewed = threading.Event()

    def renew(self) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("no manager answered")
        self.validity = (self.now - timedelta(hours=1), self.now + self.lifetime)
        self.renewed.set()


def test_an_overdue_certificate_is_renewed_at_once_and_then_rescheduled() -> None:
    ca = FakeCA(T0, timedelta(hours=2))
    ca.validity = (T0 - timedelta(days=80), T0 + timedelta(days=10))  # 89 % through its life
    renewer = Renewer(lambda: ca.validity, ca.renew, now=lambda: ca.now)
    renewer.start()
    try:
        assert ca.renewed.wait(5)
        assert renewer.renewals == 1
        # The new certificate is young: nothing more happens until it is due.
        assert not wait_for_calls(ca, 2, 0.3)
    finally:
        renewer.stop()


def test_renew_now_forces_a_renewal_of_a_young_certificate() -> None:
    ca = FakeCA(T0, timedelta(days=90))
    renewer = Renewer(lambda: ca.validity, ca.renew, now=lambda: ca.now)
    renewer.start()
    try:
        assert not ca.renewed.wait(0.2)
        renewer.renew_now()
        assert ca.renewed.wait(5)
    finally:
        renewer.stop()


def test_failed_renewals_are_retried_with_backoff() -> None:
    ca = FakeCA(T0, timedelta(days=90), failures=1)
    renewer = Renewer(lambda: ca.validity, ca.renew, now=lambda: ca.now)
    renewer.start()
    try:
        renewer.renew_now()
        wait_for(lambda: ca.calls >= 1, 5, what="the first attempt")
        assert not ca.renewed.is_set()
        assert ca.renewed.wait(5)  # the retry after the first backoff (1 s)
        assert ca.calls == 2
    finally:
        renewer.stop()


def wait_for_calls(ca: FakeCA, n: int, timeout: float) -> bool:
    try:
        wait_for(lambda: ca.calls >= n, timeout, what=f"{n} renewals")
        return True
    except AssertionError:
        return False
