"""Which of the fitting nodes is best for a service's next task (swarmkit's ``nodeLess``).

Fewest tasks of the service first, then fewest tasks in all; a node where the service failed
``MAX_FAILURES`` times in the last ``FAILURE_WINDOW_NS`` sorts after every node that failed
less (a task that cannot run there is tried elsewhere first). swarmkit leaves ties to map
order; here the node ID breaks them, so every run of the same input places the same way.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from swarmd.manager.scheduler.filters import NodeInfo

FAILURE_WINDOW_NS: Final = 5 * 60 * 1_000_000_000   # swarmkit's monitorFailures
MAX_FAILURES: Final = 5                             # swarmkit's maxFailures
MAX_REMEMBERED: Final = 64                          # failures kept per (node, service, version)

Key = tuple[int, int, int, str]


class FailureHistory:
    """Recent failures (or rejections) of a service's tasks per node and spec version.

    The leader's scheduler component records one whenever a task it placed fails; time is
    always given, never read, so the history is plain data."""

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str, int], deque[int]] = {}

    def record(self, node_id: str, service_id: str, spec_version: int, at_ns: int) -> None:
        times = self._failures.setdefault((node_id, service_id, spec_version), deque(maxlen=MAX_REMEMBERED))
        times.append(at_ns)

    def recent(self, node_id: str, service_id: str, spec_version: int, now_ns: int) -> int:
        times = self._failures.get((node_id, service_id, spec_version))
        if not times:
            return 0
        return sum(1 for at in times if now_ns - at <= FAILURE_WINDOW_NS)

    def forget_before(self, now_ns: int) -> None:
        """Drop what no longer counts (call now and then: the history stays small)."""
        for key in [k for k, times in self._failures.items() if all(now_ns - t > FAILURE_WINDOW_NS for t in times)]:
            del self._failures[key]

    def forget_service(self, service_id: str) -> None:
        for key in [k for k in self._failures if k[1] == service_id]:
            del self._failures[key]


def node_key(info: NodeInfo, service_id: str, recent_failures: int) -> Key:
    """Sorts best first. Failures count only from ``MAX_FAILURES`` on, as in swarmkit's
    comparison (below that, two nodes compare by their tasks alone)."""
    downweight = recent_failures if recent_failures >= MAX_FAILURES else 0
    return downweight, info.active_by_service.get(service_id, 0), info.active_tasks, info.id
