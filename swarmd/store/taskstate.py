"""Task states and their order (swarmkit's ``api.TaskState``).

A task's observed state is a Lamport clock: of two observations, the later state wins, so a
state may only move forward. The ranks are swarmkit's enum values (64 apart, room for states in
between), so the order is theirs exactly; the store keeps the names, which read as Docker
prints them (``Running``, ``Shutdown``, ...).

Desired states use the same scale: an orchestrator sets ``ready`` (prepare, then wait: a restart
delay), ``running``, ``shutdown`` or ``remove``, and never moves one back either.
"""

from __future__ import annotations

from typing import Final

NEW: Final = "new"
PENDING: Final = "pending"        # waiting for the scheduler
ASSIGNED: Final = "assigned"
ACCEPTED: Final = "accepted"      # the node has it
PREPARING: Final = "preparing"
READY: Final = "ready"
STARTING: Final = "starting"
RUNNING: Final = "running"
COMPLETE: Final = "complete"      # ran and exited 0
SHUTDOWN: Final = "shutdown"      # stopped on an orchestrator's request
FAILED: Final = "failed"
REJECTED: Final = "rejected"      # could not run on its node
REMOVE: Final = "remove"          # a desired state: shut down, then the reaper deletes it
ORPHANED: Final = "orphaned"      # its node went away for too long

RANK: Final[dict[str, int]] = {
    NEW: 0, PENDING: 64, ASSIGNED: 192, ACCEPTED: 256, PREPARING: 320, READY: 384, STARTING: 448,
    RUNNING: 512, COMPLETE: 576, SHUTDOWN: 640, FAILED: 704, REJECTED: 768, REMOVE: 800, ORPHANED: 832,
}
STATES: Final = tuple(RANK)       # in order
DESIRED_STATES: Final = frozenset({READY, RUNNING, COMPLETE, SHUTDOWN, REMOVE})


def rank(state: str) -> int:
    """The state's place in the order; an unknown name (a hand-edited state) sorts first."""
    return RANK.get(state, -1)


def is_known(state: object) -> bool:
    return isinstance(state, str) and state in RANK


def moves_back(current: str, new: str) -> bool:
    """``new`` is earlier than ``current`` (equal is not a move back: same state, new message)."""
    return rank(new) < rank(current)


def is_terminal(state: str) -> bool:
    """Past running: the task will not run again."""
    return rank(state) > RANK[RUNNING]


def is_active_desired(desired: str) -> bool:
    """A task whose desired state still lets it run (or complete): counted on its node."""
    return rank(desired) <= RANK[COMPLETE]
