"""Events of committed changes, in commit order, for subscribers on every manager (DESIGN §11).

After each op it applies, the state machine publishes one event per object the op created,
updated or removed: ``Event(table, action, object, version)``. A subscriber reads them from a
bounded queue of its own; one that falls behind by more than its queue holds is dropped (its
``Watch`` is closed with ``overflowed`` set) and must read the state again and subscribe anew:
publishing never waits for a subscriber, so a slow one cannot hold up apply.

A whole new state (a snapshot installed, a forced new cluster) is one ``reset`` event: every
subscriber reads the state again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

CREATE, UPDATE, REMOVE, RESET = "create", "update", "remove", "reset"
DEFAULT_QUEUE = 10_000


@dataclass(frozen=True)
class Event:
    table: str                 # cluster | nodes | networks | services | tasks ("" for a reset)
    action: str                # create | update | remove | reset
    object: dict[str, Any]     # the object after the change (before it, for a remove); read-only
    version: int               # the store's change index of the op that made it


class Watch:
    """One subscriber's queue. Iterate (or ``get``) to read events in commit order."""

    def __init__(self, hub: Hub, maxsize: int, accept: Callable[[Event], bool] | None) -> None:
        self._hub = hub
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize)
        self._accept = accept
        self.closed = False
        self.overflowed = False

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None once the watch is closed (or after ``timeout``)."""
        if self.closed and self._queue.empty():
            return None
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        self._hub.unsubscribe(self)

    def _offer(self, event: Event) -> bool:
        if self._accept is not None and event.action != RESET and not self._accept(event):
            return True
        try:
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            return False

    def _end(self, overflowed: bool) -> None:
        self.closed = True
        self.overflowed = overflowed
        try:
            self._queue.put_nowait(None)  # wakes a reader blocked in get()
        except queue.Full:
            pass


class Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: list[Watch] = []

    def subscribe(self, maxsize: int = DEFAULT_QUEUE, accept: Callable[[Event], bool] | None = None) -> Watch:
        """A new subscriber; ``accept`` filters events before they are queued."""
        watch = Watch(self, maxsize, accept)
        with self._lock:
            self._watches = [*self._watches, watch]
        return watch

    def unsubscribe(self, watch: Watch) -> None:
        with self._lock:
            self._watches = [w for w in self._watches if w is not watch]
        watch._end(overflowed=False)

    def publish(self, events: list[Event]) -> None:
        """From the applying thread, in commit order; never blocks."""
        if not events:
            return
        dropped = []
        for watch in self._watches:  # a copy-on-write list: no lock needed to read it
            for event in events:
                if not watch._offer(event):
                    dropped.append(watch)
                    break
        if dropped:
            with self._lock:
                self._watches = [w for w in self._watches if w not in dropped]
            for watch in dropped:
                watch._end(overflowed=True)
