"""Automatic renewal of the node certificate (swarm-behaviour.md §2.3).

A certificate is renewed at a random point between 50 % and 80 % of its lifetime, so a swarm's
nodes do not all come back to the CA at once; a failed renewal is retried with exponential
backoff (1 s doubling to 5 min). ``renew_now`` forces a renewal (role change, root rotation).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

LOWER, UPPER = 0.5, 0.8
MIN_BACKOFF, MAX_BACKOFF = 1.0, 300.0


def renewal_time(not_before: datetime, not_after: datetime, rng: random.Random | None = None) -> datetime:
    """When to renew a certificate valid from ``not_before`` to ``not_after`` (minute granularity,
    as Docker)."""
    lifetime = (not_after - not_before).total_seconds()
    fraction = (rng or random).uniform(LOWER, UPPER)
    minutes = int(lifetime * fraction // 60)
    return not_before + timedelta(minutes=minutes) if minutes else not_before + timedelta(seconds=lifetime * fraction)


class Renewer:
    """One thread per node. ``validity()`` gives the current certificate's (not_before, not_after);
    ``renew()`` gets and installs a new one (raising on failure)."""

    def __init__(self, validity: Callable[[], tuple[datetime, datetime]], renew: Callable[[], None],
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._validity = validity
        self._renew = renew
        self._now = now
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._forced = False
        self._thread = threading.Thread(target=self._run, name="cert-renewal", daemon=True)
        self.renewals = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def renew_now(self) -> None:
        self._forced = True
        self._wake.set()

    def _run(self) -> None:
        backoff = MIN_BACKOFF
        due: datetime | None = None
        while not self._stopping.is_set():
            if due is None:
                try:
                    due = renewal_time(*self._validity())
                except Exception as e:  # noqa: BLE001 - no certificate to look at (leaving): stop
                    log.debug("certificate renewal stops: %s", e)
                    return
                log.debug("node certificate renewal due at %s", due.isoformat())
            wait = (due - self._now()).total_seconds()
            if wait > 0 and not self._forced:
                self._wake.wait(min(wait, 3600))
                self._wake.clear()
                continue
            if self._stopping.is_set():
                return
            self._forced = False
            try:
                self._renew()
                self.renewals += 1
                backoff, due = MIN_BACKOFF, None
                log.info("node certificate renewed")
            except Exception as e:  # noqa: BLE001 - retried with backoff
                log.warning("could not renew the node certificate (retrying in %.0fs): %s", backoff, e)
                self._forced = True  # a renewal that was due (or asked for) stays due
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, MAX_BACKOFF)
