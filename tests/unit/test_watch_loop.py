"""The leader components' event loop: a full pass first, then one pass per burst of events,
a full pass again after the watch overflowed or the state was replaced, timers when asked."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from swarmd.manager.leadership import WatchLoop
from swarmd.store.watch import RESET, Event, Hub

WAIT = 10.0


class Recorder(WatchLoop):
    name = "recorder"
    QUEUE = 50

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub)
        self.passes: queue.Queue[tuple[bool, int]] = queue.Queue()
        self.gate = threading.Event()
        self.gate.set()
        self.again: float | None = None

    def step(self, full: bool, events: list[Event]) -> float | None:
        self.gate.wait(WAIT)
        self.passes.put((full, len(events)))
        return self.again


def event(n: int) -> Event:
    return Event("tasks", "update", {"id": str(n)}, n)


def passes_until(loop: Recorder, done: Callable[[list[tuple[bool, int]]], bool], most: int) -> list[tuple[bool, int]]:
    seen: list[tuple[bool, int]] = []
    while not done(seen):
        assert len(seen) < most, seen
        seen.append(loop.passes.get(timeout=WAIT))
    return seen


def test_a_burst_is_one_pass_and_an_overflow_or_reset_a_full_one() -> None:
    hub = Hub()
    loop = Recorder(hub)
    loop.start()
    try:
        assert loop.passes.get(timeout=WAIT) == (True, 0)   # the first pass reads everything
        loop.gate.clear()
        hub.publish([event(1)])
        # While that pass runs, a burst queues up: the next pass takes all of it.
        hub.publish([event(n) for n in range(2, 12)])
        loop.gate.set()
        seen = passes_until(loop, lambda seen: sum(n for _, n in seen) == 11, 2)
        assert not any(full for full, _ in seen)
        # More than the queue holds: the watch is dropped, and the loop reads everything again.
        loop.gate.clear()
        hub.publish([event(100)])
        hub.publish([event(n) for n in range(200, 300)])
        loop.gate.set()
        passes_until(loop, lambda seen: (True, 0) in seen, 3)
        hub.publish([Event("", RESET, {}, 400)])
        assert loop.passes.get(timeout=WAIT) == (True, 0)
    finally:
        loop.stop()


def test_a_pass_that_asks_runs_again_without_events() -> None:
    hub = Hub()
    loop = Recorder(hub)
    loop.again = 0.01
    loop.start()
    try:
        assert loop.passes.get(timeout=WAIT) == (True, 0)
        assert loop.passes.get(timeout=WAIT) == (False, 0)   # the timer, no event
    finally:
        loop.stop()
