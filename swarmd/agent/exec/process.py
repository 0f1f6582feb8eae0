"""The process executor: each task is a program run as a supervised host process.

A task's state lives in its directory under ``<state>/tasks/<task id>/``:

- ``task.json``   the spec and the task's cgroup, written by ``prepare``
- ``shim.conf``   what the shim needs to start the program (marshal), written by ``start``
- ``status.json`` the observed status, written by the shim (by the executor only before the
                  shim runs or after it is gone)
- ``lock``        flocked by the shim while it lives
- ``output.log``  stdout/stderr records, rotated to ``output.log.1`` …

Nothing ties a task to the daemon's process: the shim is detached, and the directory holds all
that a later daemon needs to find the task again (``adopt``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import marshal
import os
import py_compile
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmd.agent.exec import logs
from swarmd.agent.exec.api import (ExecError, Executor, TaskRuntimeSpec, TaskState, TaskStatus, check_spec,
                                   check_task_id)
from swarmd.agent.exec.cgroups import Cgroups, TaskCgroup
from swarmd.agent.exec.user import TaskUser, default_task_user, resolve_user

log = logging.getLogger(__name__)

SHIM = Path(__file__).with_name("shim.py")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's default PATH
SHIM_DETACH_TIMEOUT = 10.0  # the shim's first process only forks and exits
REMOVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class ProcessExecutorConfig:
    """``task_user``: who runs tasks whose spec names no user (see ``default_task_user``).
    Logs: at most ``log_max_files`` files of ``log_max_bytes`` per task."""

    task_user: str | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_max_files: int = 3
    start_timeout: float = 30.0
    python: str = sys.executable


def task_environment(spec: TaskRuntimeSpec, user: TaskUser) -> dict[str, str]:
    """Docker's base (PATH, HOME), then the spec's entries, then the SWARM_* identity of the
    task, which the spec cannot override."""
    env = {"PATH": DEFAULT_PATH, "HOME": user.home}
    for entry in spec.env:
        key, _, value = entry.partition("=")
        env[key] = value
    env.update(SWARM_SERVICE_ID=spec.service_id, SWARM_SERVICE_NAME=spec.service_name,
               SWARM_TASK_ID=spec.task_id, SWARM_TASK_SLOT=str(spec.slot),
               SWARM_NODE_ID=spec.node_id, SWARM_NODE_HOSTNAME=spec.node_hostname)
    return env


def _write(path: Path, data: bytes) -> None:
    """Replace a file atomically. No fsync: these files matter across a daemon crash, which
    keeps the page cache; a host crash ends the tasks anyway."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"state": "failed", "error": f"task status unreadable: {path.name}"}
    return data if isinstance(data, dict) else {"state": "failed", "error": "task status unreadable"}


def _to_status(task_id: str, raw: dict[str, Any]) -> TaskStatus:
    try:
        state = TaskState(raw.get("state"))
    except ValueError:
        return TaskStatus(task_id, TaskState.FAILED, error="task status unreadable")

    def number(key: str) -> int | None:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return TaskStatus(task_id, state, exit_code=number("exit_code"), error=str(raw.get("error") or ""),
                      pid=number("pid"), started_at=number("started_at"), finished_at=number("finished_at"),
                      signal=number("signal"), stop_requested=bool(raw.get("stop_requested")),
                      oom_killed=bool(raw.get("oom_killed")))


def _start_ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2:].split()[19])


class ProcessExecutor(Executor):
    def __init__(self, state_dir: Path, config: ProcessExecutorConfig | None = None,
                 cgroups: Cgroups | None = None) -> None:
        self.config = config or ProcessExecutorConfig()
        self.root = Path(state_dir) / "tasks"
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.cgroups = Cgroups() if cgroups is None else cgroups
        self.shim_code = self._compile_shim(Path(state_dir))
        self._mutex = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._starting: set[str] = set()

    # -- the interface ------------------------------------------------------------------------

    def prepare(self, spec: TaskRuntimeSpec) -> None:
        stop_signal = check_spec(spec)
        with self._task_lock(spec.task_id):
            task_dir = self.root / spec.task_id
            meta = _read_json(task_dir / "task.json")
            if meta is not None:
                if meta.get("spec") != spec.to_dict():
                    raise ExecError(f"task {spec.task_id} is already prepared with another spec")
                return
            task_dir.mkdir(mode=0o700, exist_ok=True)
            try:
                cgroup = self.cgroups.create(spec.task_id, spec.cpu_nanos, spec.memory_bytes)
            except ExecError:
                shutil.rmtree(task_dir, ignore_errors=True)
                raise
            _write(task_dir / "task.json", json.dumps({
                "spec": spec.to_dict(), "stop_signal": stop_signal,
                "cgroup": cgroup.to_dict() if cgroup else None}).encode())

    def start(self, task_id: str) -> TaskStatus:
        with self._task_lock(task_id):
            task_dir, meta = self._load(task_id)
            if (task_dir / "status.json").exists():
                current = self.status(task_id)
                assert current is not None
                return current
            self._starting.add(task_id)
            try:
                self._start(task_dir, meta)
            finally:
                self._starting.discard(task_id)
        current = self.status(task_id)
        assert current is not None
        return current

    def status(self, task_id: str) -> TaskStatus | None:
        task_dir = self._dir(task_id)
        raw = _read_json(task_dir / "status.json")
        if raw is None:
            return None
        status = _to_status(task_id, raw)
        if status.final or task_id in self._starting or self._shim_alive(task_dir):
            return status
        # No shim: it may have written its last status on the way out; if not, it was killed.
        raw = _read_json(task_dir / "status.json") or raw
        status = _to_status(task_id, raw)
        return status if status.final else self._supervisor_lost(task_dir, raw)

    def wait(self, task_id: str, timeout: float) -> TaskStatus | None:
        current = self.status(task_id)
        if current is None or current.final:
            return current
        with self._shim_pidfd(self._dir(task_id)) as pidfd:
            if pidfd is not None:
                select.select([pidfd], [], [], max(0.0, timeout))
        return self.status(task_id)

    def shutdown(self, task_id: str) -> None:
        current = self.status(task_id)
        if current is not None and not current.final:
            self._signal_shim(self._dir(task_id), signal.SIGTERM)

    def remove(self, task_id: str) -> None:
        check_task_id(task_id)
        task_dir = self.root / task_id
        if not task_dir.exists():
            return
        with self._task_lock(task_id):
            meta = _read_json(task_dir / "task.json") or {}
            cgroup = TaskCgroup.from_dict(meta["cgroup"]) if meta.get("cgroup") else self.cgroups.existing(task_id)
            if (task_dir / "status.json").exists() and meta:
                self._kill(task_dir, cgroup)
            if cgroup is not None:
                cgroup.remove()
            shutil.rmtree(task_dir, ignore_errors=True)
        with self._mutex:
            self._locks.pop(task_id, None)

    def adopt(self) -> dict[str, TaskStatus | None]:
        found: dict[str, TaskStatus | None] = {}
        for task_dir in sorted(self.root.iterdir()):
            if not task_dir.is_dir():
                continue
            if not (task_dir / "task.json").exists():  # a prepare the daemon did not finish
                log.info("removing unfinished task state %s", task_dir.name)
                self.remove(task_dir.name)
                continue
            try:
                found[task_dir.name] = self.status(task_dir.name)
            except ExecError as err:
                log.warning("task %s: %s", task_dir.name, err)
        return found

    def exit_fd(self, task_id: str) -> int | None:
        """A pidfd of the task's shim, which exits once the task has ended and its final
        status is written."""
        task_dir = self._dir(task_id)
        raw = _read_json(task_dir / "status.json") or {}
        pid = raw.get("shim_pid")
        if not isinstance(pid, int) or pid <= 0:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        if self._shim_alive(task_dir) and _start_ticks(pid) == raw.get("shim_start"):
            return pidfd
        os.close(pidfd)
        return None

    # -- beyond the interface -----------------------------------------------------------------

    def log_files(self, task_id: str) -> list[Path]:
        """The task's log files, oldest first (records in ``logs``' format)."""
        return logs.log_files(self._dir(task_id))

    def task_dir(self, task_id: str) -> Path:
        return self._dir(task_id)

    # -- starting -----------------------------------------------------------------------------

    def _start(self, task_dir: Path, meta: dict[str, Any]) -> None:
        spec = TaskRuntimeSpec.from_dict(meta["spec"])
        try:
            user = self._task_user(spec)
        except ExecError as err:
            self._save_status(task_dir, state="failed", error=f"starting container failed: {err}",
                              exit_code=127, finished_at=time.time_ns())
            return
        cgroup = TaskCgroup.from_dict(meta["cgroup"]) if meta.get("cgroup") else None
        conf = {
            "program": spec.program, "args": list(spec.args), "env": task_environment(spec, user),
            "workdir": spec.workdir or "/", "uid": user.uid, "gid": user.gid, "groups": list(user.groups),
            "stop_signal": int(meta["stop_signal"]), "stop_grace_seconds": float(spec.stop_grace_seconds),
            "log_max_bytes": self.config.log_max_bytes, "log_max_files": self.config.log_max_files,
            "cgroup_procs": cgroup.procs_files if cgroup else [],
            "oom_events": cgroup.oom_events_file if cgroup else "",
        }
        _write(task_dir / "shim.conf", marshal.dumps(conf))
        self._save_status(task_dir, state="starting")
        ready_r, ready_w = os.pipe()
        try:
            try:
                first = subprocess.Popen(
                    [self.config.python, "-I", "-S", str(self.shim_code), str(task_dir), str(ready_w)],
                    pass_fds=(ready_w,), start_new_session=True, cwd="/", env={},
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except OSError as err:
                self._save_status(task_dir, state="failed", finished_at=time.time_ns(),
                                  error=f"starting container failed: cannot run the task supervisor: {err.strerror}")
                return
            os.close(ready_w)
            ready_w = -1
            try:
                first.wait(SHIM_DETACH_TIMEOUT)
            except subprocess.TimeoutExpired:
                first.kill()
                first.wait()
            # EOF once the shim has written "running" or "failed" (or died).
            deadline = time.monotonic() + self.config.start_timeout
            while (left := deadline - time.monotonic()) > 0:
                if select.select([ready_r], [], [], left)[0] and not os.read(ready_r, 64):
                    break
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)

    @staticmethod
    def _compile_shim(state_dir: Path) -> Path:
        """The shim as bytecode: compiling its source costs each shim about 2 MiB it never
        gives back; a .pyc runs without compiling. Running shims keep the code they loaded."""
        target = state_dir / "shim.pyc"
        py_compile.compile(str(SHIM), cfile=str(target), doraise=True)
        return target

    def _task_user(self, spec: TaskRuntimeSpec) -> TaskUser:
        text = spec.user or default_task_user(self.config.task_user)
        user = resolve_user(text)
        if os.geteuid() != 0 and (user.uid != os.geteuid() or user.gid != os.getegid()):
            raise ExecError(f"cannot run the task as user {text[:64]}: the daemon does not run as root")
        return user

    # -- the shim -----------------------------------------------------------------------------

    @staticmethod
    def _shim_alive(task_dir: Path) -> bool:
        """The shim holds ``lock`` exclusively while it lives, so a free lock means no shim."""
        try:
            fd = os.open(task_dir / "lock", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @contextlib.contextmanager
    def _shim_pidfd(self, task_dir: Path) -> Iterator[int | None]:
        """A pidfd of the live shim: it names that process even if the PID is reused later.
        Opened before the lock is checked, so a PID reused in between is never signalled."""
        raw = _read_json(task_dir / "status.json") or {}
        pid = raw.get("shim_pid")
        if not isinstance(pid, int) or pid <= 0:
            yield None
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            yield None
            return
        try:
            yield pidfd if self._shim_alive(task_dir) and _start_ticks(pid) == raw.get("shim_start") else None
        finally:
            os.close(pidfd)

    def _signal_shim(self, task_dir: Path, sig: int) -> bool:
        with self._shim_pidfd(task_dir) as pidfd:
            if pidfd is None:
                return False
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                return False
            return True

    def _kill(self, task_dir: Path, cgroup: TaskCgroup | None) -> None:
        """End the task now: the shim kills its group and exits; a shim that does not is killed."""
        task_id = task_dir.name
        if self._signal_shim(task_dir, signal.SIGUSR1):
            current = self.wait(task_id, REMOVE_TIMEOUT)
            if current is not None and current.final:
                return
            self._signal_shim(task_dir, signal.SIGKILL)
        raw = _read_json(task_dir / "status.json") or {}
        self._kill_program(raw, cgroup)

    @staticmethod
    def _kill_program(raw: dict[str, Any], cgroup: TaskCgroup | None) -> None:
        pid = raw.get("pid")
        if isinstance(pid, int) and pid > 0 and _start_ticks(pid) == raw.get("pid_start"):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        if cgroup is not None:
            cgroup.kill()

    def _supervisor_lost(self, task_dir: Path, raw: dict[str, Any]) -> TaskStatus:
        """The shim died (killed, OOM, a crash) before the task ended. Nothing supervises the
        program any more and its output has nowhere to go: it is killed and the task fails."""
        meta = _read_json(task_dir / "task.json") or {}
        cgroup = TaskCgroup.from_dict(meta["cgroup"]) if meta.get("cgroup") else None
        self._kill_program(raw, cgroup)
        started = raw.get("state") == TaskState.RUNNING.value
        error = ("task: supervisor exited unexpectedly" if started
                 else "starting container failed: the task supervisor exited before the task started")
        self._save_status(task_dir, **{**raw, "state": "failed", "error": error, "finished_at": time.time_ns()})
        return _to_status(task_dir.name, _read_json(task_dir / "status.json") or {})

    # -- state ------------------------------------------------------------------------------

    @staticmethod
    def _save_status(task_dir: Path, **fields: Any) -> None:
        _write(task_dir / "status.json", json.dumps({"v": 1, **fields}).encode())

    def _dir(self, task_id: str) -> Path:
        task_dir = self.root / check_task_id(task_id)
        if not (task_dir / "task.json").exists():
            raise ExecError(f"no such task: {task_id}")
        return task_dir

    def _load(self, task_id: str) -> tuple[Path, dict[str, Any]]:
        task_dir = self._dir(task_id)
        meta = _read_json(task_dir / "task.json")
        if not meta or "spec" not in meta:
            raise ExecError(f"task {task_id}: its state is unreadable")
        return task_dir, meta

    @contextlib.contextmanager
    def _task_lock(self, task_id: str) -> Iterator[None]:
        check_task_id(task_id)
        with self._mutex:
            lock = self._locks.setdefault(task_id, threading.Lock())
        with lock:
            yield

