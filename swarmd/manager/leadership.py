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
