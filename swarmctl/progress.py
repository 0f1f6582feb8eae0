"""Waiting for a service to converge, the way Docker's client does (cli/command/service/progress):
poll the service, its up-to-date tasks and the nodes five times a second, draw a row per slot
(or per node for a global service), and return once every task has been running for the
update monitor period (5 s by default).

Unlike Docker, the wait is bounded: a service whose rows do not change for ``STALL_SECONDS``
while it is not converged (a task nothing can schedule, a global service no node can run), or
whose up-to-date tasks failed ``FAILED_TASKS_LIMIT`` times (a crash loop), ends the wait with
the reason; the swarm keeps trying in the background either way.

``Tracker`` is the decision, fed with what was read and the time; ``watch`` does the reading.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from swarmctl import PROG
from swarmctl.errors import CLIError
from swarmctl.render_service import (MAX_PROGRESS, NUMBERED_STATES, VERIFY_CONVERGED, VERIFY_FAILURE,
                                     Frame, FrameWriter, overall_frame, task_frame, verify_waiting)

if TYPE_CHECKING:
    from swarmd.api.swarm.v1 import services_pb2 as spb

POLL_SECONDS = 0.2
MAX_PROGRESS_BARS = 20
STALL_SECONDS = 10.0
FAILED_TASKS_LIMIT = 3
DEFAULT_MONITOR_NS = 5 * 10**9


def _rank(state: str) -> int:
    return NUMBERED_STATES.get(state, 0)


def _terminal(state: str) -> bool:
    return _rank(state) > MAX_PROGRESS


def _shown(candidate: spb.Task, existing: spb.Task | None) -> bool:
    """Of two tasks in one slot (or on one node), Docker shows the one with the lower desired
    state, then the one with the lower state (a restarting slot shows its new task)."""
    if existing is None:
        return True
    if _rank(existing.desired_state) != _rank(candidate.desired_state):
        return _rank(candidate.desired_state) < _rank(existing.desired_state)
    return _rank(candidate.status.state) < _rank(existing.status.state)


def up_to_date(service: spb.Service, tasks: Sequence[spb.Task]) -> list[spb.Task]:
    """Docker's ``_up-to-date`` filter: the tasks made from the service's current template."""
    template = service.spec.task_template.SerializeToString(deterministic=True)
    return [t for t in tasks if t.spec.SerializeToString(deterministic=True) == template]


@dataclass
class Updater:
    """Docker's replicated and global progress updaters (rows, overall line, converged?)."""

    initialized: bool = False
    done: bool = False
    slot_map: dict[int, int] = field(default_factory=dict)

    def update(self, service: spb.Service, tasks: Sequence[spb.Task], active: set[str],
               rollback: bool) -> tuple[list[Frame], bool, list[str]]:
        if service.spec.mode == "global":
            return self._global(tasks, active, rollback)
        return self._replicated(service, tasks, active, rollback)

    def _replicated(self, service: spb.Service, tasks: Sequence[spb.Task], active: set[str],
                    rollback: bool) -> tuple[list[Frame], bool, list[str]]:
        replicas = service.spec.replicas if service.spec.HasField("replicas") else 1
        frames: list[Frame] = []
        if not self.initialized:
            frames.append(overall_frame(0, replicas, rollback))
            if replicas <= MAX_PROGRESS_BARS:
                frames += [Frame(f"{i}/{replicas}", " ") for i in range(1, replicas + 1)]
            self.initialized = True
        by_slot: dict[int, spb.Task] = {}
        for t in tasks:
            if not _rank(t.desired_state) or not _rank(t.status.state):
                continue
            if not _shown(t, by_slot.get(t.slot)):
                continue
            if t.node_id and t.node_id not in active:
                continue
            by_slot[t.slot] = t
        if self.done and any(t.status.state != "running" for t in by_slot.values()):
            self.done = False
        running = 0
        for slot in sorted(by_slot):
            t = by_slot[slot]
            mapped = self.slot_map.setdefault(slot, len(self.slot_map) + 1)
            if not _terminal(t.desired_state) and t.status.state == "running":
                running += 1
            if not self.done and replicas <= MAX_PROGRESS_BARS and mapped <= replicas:
                frame = task_frame(f"{mapped}/{replicas}", t, rollback)
                if frame is not None:
                    frames.append(frame)
        if not self.done:
            frames.append(overall_frame(running, replicas, rollback))
            self.done = running == replicas
        return frames, running == replicas, [t.status.err for t in by_slot.values() if t.status.err]

    def _global(self, tasks: Sequence[spb.Task], active: set[str],
                rollback: bool) -> tuple[list[Frame], bool, list[str]]:
        by_node: dict[str, spb.Task] = {}
        for t in tasks:
            if not _rank(t.desired_state) or not _rank(t.status.state):
                continue
            if not _shown(t, by_node.get(t.node_id)):
                continue
            by_node[t.node_id] = t
        count = len(by_node)
        frames: list[Frame] = []
        if not self.initialized:
            if count == 0:
                return [Frame("overall progress", "waiting for new tasks")], False, []
            frames.append(overall_frame(0, count, rollback))
            self.initialized = True
        if self.done and any(t.status.state != "running" for t in by_node.values()):
            self.done = False
        running = 0
        for node_id in sorted(by_node):
            t = by_node[node_id]
            if node_id not in active:
                continue
            if not self.done and count <= MAX_PROGRESS_BARS:
                frame = task_frame(node_id[:12], t, rollback)
                if frame is not None:
                    frames.append(frame)
            if not _terminal(t.desired_state) and t.status.state == "running":
                running += 1
        if not self.done:
            frames.append(overall_frame(running, count, rollback))
            self.done = running == count
        return frames, running == count, [t.status.err for t in by_node.values() if t.status.err]


@dataclass
class Step:
    frames: list[Frame]
    finished: bool = False
    error: str | None = None


@dataclass
class Tracker:
    """One poll's decision: what to draw, and whether the wait is over (and how)."""

    name: str
    updater: Updater = field(default_factory=Updater)
    converged: bool = False
    converged_at: float | None = None
    rollback: bool = False
    signature: Any = None
    changed_at: float | None = None
    failed: set[str] = field(default_factory=set)
    rolled_back: Frame | None = None

    def before_tasks(self, service: spb.Service, now: float) -> Step | None:
        """Docker's checks of the update status and of the monitor period, made before the
        tasks are read; a Step ends or reports, None goes on to ``after_tasks``."""
        frames: list[Frame] = []
        u = service.update_status if service.HasField("update_status") else None
        state = u.state if u is not None else ""
        if state == "updating":
            self.rollback = False
        elif state == "completed" and not self.converged:
            return Step([], finished=True)
        elif state == "paused":
            return Step([], finished=True, error=f"service update paused: {u.message if u else ''}")
        elif state == "rollback_started":
            if not self.rollback and u is not None and u.message:
                frames.append(Frame("rollback", u.message))
            if not self.rollback:
                self.failed.clear()
            self.rollback = True
        elif state == "rollback_paused":
            return Step([], finished=True, error=f"service rollback paused: {u.message if u else ''}")
        elif state == "rollback_completed":
            if not self.converged and u is not None:
                self.rolled_back = Frame("rollback", u.message, message=True)
            self.rollback = True
        if self.converged and self.converged_at is not None and now - self.converged_at >= _monitor(service):
            done = [*frames, VERIFY_CONVERGED] + ([self.rolled_back] if self.rolled_back else [])
            return Step(done, finished=True)
        return Step(frames) if frames else None

    def after_tasks(self, service: spb.Service, tasks: Sequence[spb.Task], active: set[str], now: float) -> Step:
        current = up_to_date(service, tasks)
        frames, self.converged, errs = self.updater.update(service, current, active, self.rollback)
        if self.converged:
            if self.converged_at is None:
                self.converged_at = now
            wait = _monitor(service) - (now - self.converged_at)
            if wait >= 0:
                frames.append(verify_waiting(max(1, math.ceil(wait))))  # Go: wait/time.Second + 1
        else:
            if self.converged_at is not None:
                frames.append(VERIFY_FAILURE)
            self.converged_at = None
        return Step(frames, error=self._bounded(current, errs, now))

    def _bounded(self, tasks: Sequence[spb.Task], errs: list[str], now: float) -> str | None:
        """The reason to stop waiting on a service that is not converging, if there is one."""
        signature = sorted((t.id, t.status.state, t.status.err) for t in tasks)
        if self.converged or signature != self.signature:
            self.signature, self.changed_at = signature, now
        failures = [t for t in tasks if t.status.state in ("failed", "rejected")]
        self.failed.update(t.id for t in failures)
        reason = errs[0] if errs else next((t.status.err for t in reversed(failures) if t.status.err), "")
        if len(self.failed) >= FAILED_TASKS_LIMIT:
            return (f"service {self.name} is not converging: {len(self.failed)} of its tasks failed"
                    + (f" ({reason})" if reason else "") + _background(self.name))
        if self.changed_at is not None and now - self.changed_at >= STALL_SECONDS:
            why = reason or "no task changed state"
            return (f"service {self.name} is not converging after {STALL_SECONDS:g} seconds without a change: "
                    f"{why}" + _background(self.name))
        return None


def _background(name: str) -> str:
    return f"; the swarm keeps trying in the background (see `{PROG} service ps {name}`)"


def _monitor(service: spb.Service) -> float:
    c = service.spec.update_config
    monitor = c.monitor_ns if c.HasField("monitor_ns") and c.monitor_ns else DEFAULT_MONITOR_NS
    return monitor / 1e9


def _terminal_width(stream: TextIO) -> int:
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 200


def watch(call: Callable[[str, Any], Any], service_id: str, name: str, quiet: bool,
          stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Draw the progress until the service converged; raise CLIError when it cannot."""
    from swarmctl.wire import pb, spb

    out = stream if stream is not None else sys.stdout
    tty = not quiet and out.isatty()
    writer = FrameWriter(tty, _terminal_width(out) if tty else 200)
    tracker = Tracker(name)

    def draw(frames: list[Frame]) -> None:
        if quiet:
            return
        text = "".join(writer.write(f) for f in frames)
        if text:
            out.write(text)
            out.flush()

    try:
        while True:
            service = call("GetService", spb.GetServiceRequest(ref=service_id)).service
            step = tracker.before_tasks(service, clock())
            if step is not None:
                draw(step.frames)
                if step.error:
                    raise CLIError(step.error)
                if step.finished:
                    return
            tasks = call("ListTasks", spb.ListTasksRequest(services=[service.id])).tasks
            nodes = call("ListNodes", pb.ListNodesRequest()).nodes
            active = {n.id for n in nodes if n.state != "down"}
            step = tracker.after_tasks(service, tasks, active, clock())
            draw(step.frames)
            if step.error:  # on a terminal the cursor already sits below the last row
                raise CLIError(step.error)
            sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        if not tracker.converged and not quiet:
            draw([Frame("", "Operation continuing in background.", message=True),
                  Frame("", f"Use `{PROG} service ps {service_id}` to check progress.", message=True)])
