"""``swarmd --executor none``: a node that runs no tasks.

As swarmkit's agent does with a task its executor cannot run (``exec: unsupported runtime``),
the node rejects what it is assigned, so the orchestrator places the task elsewhere; it never
leaves a task assigned and unanswered.
"""

from __future__ import annotations

from swarmd.agent.exec.api import ExecError, Executor, TaskRuntimeSpec, TaskStatus

REFUSAL = "this node runs no tasks (swarmd --executor none)"


class NoExecutor(Executor):
    def prepare(self, spec: TaskRuntimeSpec) -> None:
        raise ExecError(REFUSAL)

    def start(self, task_id: str) -> TaskStatus:
        raise ExecError(REFUSAL)

    def status(self, task_id: str) -> TaskStatus | None:
        raise ExecError(f"no such task: {task_id}")

    def wait(self, task_id: str, timeout: float) -> TaskStatus | None:
        raise ExecError(f"no such task: {task_id}")

    def shutdown(self, task_id: str) -> None:
        raise ExecError(f"no such task: {task_id}")

    def remove(self, task_id: str) -> None:
        """Nothing was ever kept."""

    def adopt(self) -> dict[str, TaskStatus | None]:
        return {}
