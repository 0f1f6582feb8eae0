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
from typing import Protocol

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
