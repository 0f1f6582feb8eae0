"""Leader-scoped components (DESIGN §11): started when this manager becomes the Raft leader,
stopped, bounded, when it stops being leader.

The store reports leadership changes on its tick thread, which must never wait; the
supervisor hands each change to its own thread, which starts or stops the components in order.
A component is anything with ``start()`` and ``stop()``; ``stop`` must return within a few
seconds.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from swarmd.store.watch import RESET, Event, Hub, Watch

log = logging.getLogger(__name__)


class LeaderComponent(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class LeaderLoop:
    """A leader component that is one thread: ``step()`` runs when woken (``kick``) and then
    again after the number of seconds it returns (None: only when woken again)."""

    name = "leader loop"

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> float | None:
        raise NotImplementedError

    def kick(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stop.clear()
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def _run(self) -> None:
        again: float | None = None
        while not self._stop.is_set():
            self._wake.wait(again)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                again = self.step()
            except Exception:  # noqa: BLE001 - one failed step must not end the component
                log.exception("%s failed; trying again in a second", self.name)
                again = 1.0


class LeaderSupervisor:
    def __init__(self, components: list[LeaderComponent]) -> None:
        self._components = components
        self._changes: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._running = False
        self._thread = threading.Thread(target=self._run, name="leader-supervisor", daemon=True)
        self._thread.start()

    def add(self, component: LeaderComponent) -> None:
        """One more component; only before the store starts (it reports leadership from then)."""
        self._components.append(component)

    def leadership_changed(self, leader: bool) -> None:
        """From the store's tick thread: queue the change and return at once."""
        self._changes.put(leader)

    def close(self, timeout: float = 5.0) -> None:
        self._changes.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            leader = self._changes.get()
            while True:  # only the latest of a burst of changes matters
                try:
                    leader = self._changes.get_nowait()
                except queue.Empty:
                    break
                if leader is None:
                    break
            if leader is None:
                self._stop_all()
                return
            if leader and not self._running:
                self._running = True
                for component in self._components:
                    try:
                        component.start()
                    except Exception:  # noqa: BLE001 - one component must not keep the others off
                        log.exception("could not start the leader component %s", component.name)
                log.info("leader components started")
            elif not leader and self._running:
                self._stop_all()
                log.info("leader components stopped")

    def _stop_all(self) -> None:
        if not self._running:
            return
        self._running = False
        for component in reversed(self._components):
            try:
                component.stop()
            except Exception:  # noqa: BLE001
                log.exception("could not stop the leader component %s", component.name)


class Retry(Exception):
    """A pass that could not finish (its write did not commit: the leadership is moving, say):
    logged in one line, and a full pass follows."""


class WatchLoop:
    """A leader component that is one thread reacting to store events (never polling): it
    subscribes when started, makes a full pass first (and whenever its watch overflowed or
    the state was replaced), then one pass per burst of events: it wakes on the first one and
    takes every event already queued, up to ``MAX_BATCH``, into the same pass. ``step``
    returns when it must run again without any event (a timer), in seconds, or None."""

    name = "watch loop"
    MAX_BATCH = 10_000
    QUEUE = 100_000   # a service of 10,000 tasks made and placed is 20,000 events in a second

    def __init__(self, hub: Hub, accept: Callable[[Event], bool] | None = None) -> None:
        self._hub = hub
        self._accept = accept
        self._stopping = threading.Event()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None

    def step(self, full: bool, events: list[Event]) -> float | None:
        raise NotImplementedError

    def start(self) -> None:
        self._stopping.clear()
        self._watch = self._hub.subscribe(self.QUEUE, self._accept)
        self._thread = threading.Thread(target=self._run, name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        watch = self._watch
        if watch is not None:
            watch.close()   # wakes the thread
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def _run(self) -> None:
        full, again = True, None
        while not self._stopping.is_set():
            watch = self._watch
            if watch is None:
                return
            if watch.closed:
                if not watch.overflowed:
                    return   # closed by stop()
                watch = self._watch = self._hub.subscribe(self.QUEUE, self._accept)
                if self._stopping.is_set():
                    watch.close()
                    return
                full = True
            events: list[Event] = []
            if not full:
                first = watch.get(timeout=again)
                if self._stopping.is_set():
                    return
                if first is not None:
                    events.append(first)
                    while len(events) < self.MAX_BATCH:
                        more = watch.get(timeout=0)
                        if more is None:
                            break
                        events.append(more)
                if any(e.action == RESET for e in events):
                    full, events = True, []
            try:
                again = self.step(full, events)
                full = False
            except Retry as e:
                log.info("%s: %s; a full pass again in a second", self.name, e)
                full, again = True, None
                self._stopping.wait(1.0)
            except Exception:  # noqa: BLE001 - one failed pass must not end the component
                log.exception("%s failed; a full pass again in a second", self.name)
                full, again = True, None
                self._stopping.wait(1.0)
