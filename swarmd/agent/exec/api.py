"""The executor interface: what the agent asks of whatever runs its tasks (DESIGN §10).

The agent hands an executor a ``TaskRuntimeSpec`` (everything a task needs to run on this node,
already resolved from the service and the node) and reads back ``TaskStatus`` (what the node
observed). An executor keeps its own durable state, so a restarted daemon finds its tasks again
with ``adopt``; a container executor (Docker Engine, podman) fits behind the same methods.
"""

from __future__ import annotations

import abc
import enum
import math
import re
import signal
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_STOP_SIGNAL = "SIGTERM"
DEFAULT_STOP_GRACE_SECONDS = 10.0  # Docker's default --stop-grace-period
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a task's directory name: nothing to escape


class ExecError(Exception):
    """A task the executor refuses or cannot find; the message is the task error, one line."""


class TaskState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


FINAL_STATES = frozenset({TaskState.COMPLETE, TaskState.FAILED})


@dataclass(frozen=True)
class TaskRuntimeSpec:
    """One task as this node runs it. ``program`` is the service's IMAGE: a path, or a name looked
    up on the task's PATH; ``args`` follow it (COMMAND ARG...). ``env`` holds ``KEY=VALUE``
    entries. Empty ``user``/``workdir``/``stop_signal`` mean the executor's defaults; zero limits
    mean unlimited (``cpu_nanos`` is Docker's NanoCPUs: 10**9 is one CPU)."""

    task_id: str
    service_id: str
    service_name: str
    slot: int
    node_id: str
    node_hostname: str
    program: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    stop_signal: str = ""
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS
    cpu_nanos: int = 0
    memory_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["args"], out["env"] = list(self.args), list(self.env)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRuntimeSpec:
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        known["args"] = tuple(known.get("args", ()))
        known["env"] = tuple(known.get("env", ()))
        return cls(**known)


@dataclass(frozen=True)
class TaskStatus:
    """What the node observed of one task. ``exit_code`` follows Docker: 128 + N when signal N
    ended the task. ``error`` is the task error as Docker words it (``task: non-zero exit (3)``,
    ``starting container failed: ...``). Times are nanoseconds since the epoch."""

    task_id: str
    state: TaskState
    exit_code: int | None = None
    error: str = ""
    pid: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    signal: int | None = None
    stop_requested: bool = False
    oom_killed: bool = False

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class Executor(abc.ABC):
    """Runs tasks on this node. Every method is safe to call again (a retried call after a
    restart must not start a task twice); unknown task IDs raise ``ExecError``."""

    @abc.abstractmethod
    def prepare(self, spec: TaskRuntimeSpec) -> None:
        """Check the spec and reserve what the task needs (its state, its cgroup and limits).
        Raises ``ExecError`` when the task cannot run here as asked: the agent rejects it."""

    @abc.abstractmethod
    def start(self, task_id: str) -> TaskStatus:
        """Start a prepared task; returns once it runs or has failed to start."""

    @abc.abstractmethod
    def status(self, task_id: str) -> TaskStatus | None:
        """The task's current status without waiting; None while prepared and not started."""

    @abc.abstractmethod
    def wait(self, task_id: str, timeout: float) -> TaskStatus | None:
        """Block until the task has ended or ``timeout`` seconds passed; then as ``status``."""

    @abc.abstractmethod
    def shutdown(self, task_id: str) -> None:
        """Ask the task to stop: its stop signal, then SIGKILL after its grace period. Returns at
        once; ``wait`` sees the end."""

    @abc.abstractmethod
    def remove(self, task_id: str) -> None:
        """Kill the task if it still runs and release all it holds (state, logs, cgroup)."""

    @abc.abstractmethod
    def adopt(self) -> dict[str, TaskStatus | None]:
        """Find the tasks a previous daemon left: those still running are supervised again, those
        that ended meanwhile report their final status. Keyed by task ID."""

    def exit_fd(self, task_id: str) -> int | None:
        """A file descriptor that becomes readable once the task has ended, so that one waiter
        can watch every task (the caller closes it). None when the task has already ended, or
        when the executor has no such descriptor: the agent then asks ``status`` again later."""
        return None


def check_task_id(task_id: str) -> str:
    if not _TASK_ID.fullmatch(task_id):
        raise ExecError(f"invalid task ID {task_id[:80]!r}")
    return task_id


def parse_stop_signal(text: str) -> int:
    """``SIGTERM``, ``TERM``, ``term`` or ``15`` to a signal number; Docker's text otherwise."""
    raw = text.strip()
    if not raw:
        return int(signal.SIGTERM)
    if raw.isdigit():
        number = int(raw)
        if number in {int(s) for s in signal.valid_signals()} and number != 0:
            return number
        raise ExecError(f"Invalid signal: {raw[:32]}")
    name = raw.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    value = getattr(signal.Signals, name, None) if name.isidentifier() else None
    if value is None:
        raise ExecError(f"Invalid signal: {raw[:32]}")
    return int(value)


def check_spec(spec: TaskRuntimeSpec) -> int:
    """Refuse what cannot be executed as written; returns the stop signal's number."""
    check_task_id(spec.task_id)
    if not spec.program:
        raise ExecError("task has no program to run")
    texts = [spec.program, spec.workdir, spec.user, *spec.args, *spec.env]
    if any("\0" in t for t in texts):
        raise ExecError("task program, arguments, environment, user and workdir cannot contain NUL")
    for entry in spec.env:
        key, sep, _ = entry.partition("=")
        if not sep or not key:
            raise ExecError(f"invalid environment variable {key[:64]!r}: expected KEY=VALUE")
    if spec.workdir and not spec.workdir.startswith("/"):
        raise ExecError(f"the working directory '{spec.workdir[:256]}' is invalid, "
                        "it needs to be an absolute path")
    if not math.isfinite(spec.stop_grace_seconds) or spec.stop_grace_seconds < 0:
        raise ExecError("stop grace period must be a non-negative duration")
    if spec.cpu_nanos < 0 or spec.memory_bytes < 0:
        raise ExecError("resource limits cannot be negative")
    return parse_stop_signal(spec.stop_signal)
