"""The node's task runner: assignments in, executor calls, status reports out (DESIGN §10).

The session hands over each ``Assignments`` message; the runner makes the executor match them,
one task at a time through swarmkit's states (its agent's ``exec.Do``): a task desired running is
``accepted``, ``preparing`` (``prepare``; a refusal rejects it), ``ready`` (``prepared``; a task
desired ``ready`` waits there, as during a restart delay), ``starting``, ``running``
(``started``), then ``complete`` (``finished``) or ``failed`` with the exit code and the
executor's error text; a task desired ``shutdown`` or ``remove`` is stopped (its stop signal,
SIGKILL after its grace period) and reported ``shutdown``. A task that leaves the node's set
(the store deleted it) is stopped if it still runs, then removed with all its state.

One thread owns the tasks and decides (``_run``); the executor's calls run on a few pool threads,
never more than one at a time per task; one thread waits for every running task's end on an
epoll set of the executor's exit descriptors (``_ExitWaiter``); one thread sends the reports
(``_Reporter``): batched, the latest per task, retried until a manager took them, and all of
them again on each new session (the new leader may not have had the last ones).

At start the runner adopts what the executor kept (tasks that outlived a daemon restart or
crash). They are left alone until the first full set arrives: those the swarm still assigns
here go on, the others are stopped and removed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from swarmd.agent.exec.api import ExecError, Executor, TaskRuntimeSpec, TaskState, TaskStatus, \
    DEFAULT_STOP_GRACE_SECONDS
from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.store import taskstate as ts
from swarmd.timeutil import now_rfc3339

log = logging.getLogger(__name__)

EXEC_THREADS = 4           # executor calls at once (a start waits ~30 ms for the program to exec)
MAX_REPORT_BATCH = 500     # reports per UpdateTaskStatus call
RECHECK = 1.0              # a task whose executor has no exit descriptor is looked at this often
REPORT_BACKOFF = (0.05, 2.0)
LEAVE_WAIT = 15.0          # a leave waits this long for the tasks to stop, then kills the rest

Send = Callable[[list[spb.TaskStatusUpdate]], None]


@dataclass
class _Task:
    id: str
    assignment: spb.Task | None      # None: no longer (or, after an adoption, not yet) assigned
    state: str
    message: str = ""
    err: str = ""
    exit_code: int = 0
    pid: int = 0
    timestamp: str = ""
    busy: bool = False               # an executor call is under way
    prepared: bool = False           # the executor holds its state
    stopping: bool = False
    swarm: bool = False              # assigned by the swarm (an adopted task waits for the full set)

    def status_pb(self) -> spb.TaskStatus:
        return spb.TaskStatus(state=self.state, timestamp=self.timestamp, message=self.message, err=self.err,
                              exit_code=self.exit_code, pid=self.pid)


def runtime_spec(task: spb.Task, node_id: str, hostname: str) -> TaskRuntimeSpec:
    spec = task.spec
    grace = spec.stop_grace_period_ns / 1e9 if spec.HasField("stop_grace_period_ns") else DEFAULT_STOP_GRACE_SECONDS
    return TaskRuntimeSpec(
        task_id=task.id, service_id=task.service_id, service_name=task.service_name, slot=task.slot,
        node_id=node_id, node_hostname=hostname, program=spec.program, args=tuple(spec.args), env=tuple(spec.env),
        workdir=spec.workdir, user=spec.user, stop_signal=spec.stop_signal, stop_grace_seconds=grace,
        cpu_nanos=spec.resources.limits.nano_cpus, memory_bytes=spec.resources.limits.memory_bytes)


class TaskRunner:
    def __init__(self, executor: Executor, node_id: str, hostname: str, send: Send) -> None:
        self.executor = executor
        self.node_id = node_id
        self.hostname = hostname
        self._tasks: dict[str, _Task] = {}                 # owned by the runner thread
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._pool = concurrent.futures.ThreadPoolExecutor(EXEC_THREADS, thread_name_prefix="task-exec")
        self._waiter = _ExitWaiter(lambda task_id: self._events.put(("exited", task_id)))
        self._reporter = _Reporter(send)
        self._synced = False        # a full set arrived since the start
        self._leaving = False
        self._expected = 1          # the next assignments' sequence (1: a full set)
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-runner", daemon=True)

    # -- the session's side (any thread) -------------------------------------------------------
    def start(self) -> TaskRunner:
        """Adopt what the executor kept, then run."""
        for task_id, status in self.executor.adopt().items():
            self._tasks[task_id] = self._adopted(task_id, status)
        self._waiter.start()
        self._reporter.start()
        self._thread.start()
        return self

    def session_started(self) -> None:
        """A new session: its first assignments are a full set."""
        self._expected = 1

    def assignments(self, message: spb.Assignments) -> bool:
        """Take one message of the session (its thread); False when it is out of sequence (the
        session must start again for a full set)."""
        if message.sequence != self._expected or (message.sequence == 1) != message.full:
            log.warning("assignments out of sequence (got %d, full=%s; expected %d): asking for the full set",
                        message.sequence, message.full, self._expected)
            return False
        self._expected = message.sequence + 1
        self._events.put(("assign", message))
        return True

    def stop_all(self, timeout: float = LEAVE_WAIT) -> None:
        """The node leaves the swarm or was removed: every task is stopped and removed. Waits up to
        ``timeout`` for them to stop on their own terms, then kills what is left."""
        self._idle.clear()
        self._events.put(("leave",))
        if not self._idle.wait(timeout):
            log.warning("tasks still running %.0fs after the leave: killing them", timeout)
            for task_id in list(self.executor.adopt()):
                try:
                    self.executor.remove(task_id)
                except ExecError as e:
                    log.warning("could not remove task %s: %s", task_id, e)

    def close(self) -> None:
        """The daemon stops: the tasks go on running (a restarted daemon adopts them)."""
        self._events.put(("close",))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        self._waiter.close()
        self._reporter.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def reporting_idle(self, timeout: float) -> bool:
        """Whether every report was sent within ``timeout`` seconds (for tests and a leave)."""
        return self._reporter.wait_idle(timeout)

    # -- the runner thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            event = self._events.get()
            kind = event[0]
            if kind == "close":
                return
            try:
                getattr(self, f"_on_{kind}")(*event[1:])
            except Exception:  # noqa: BLE001 - one task's trouble must not stop the others
                log.exception("task runner: handling %s failed", kind)
            if self._leaving and not self._tasks:
                self._idle.set()

    def _on_assign(self, message: spb.Assignments) -> None:
        if self._leaving:
            return
        if message.full:
            self._synced = True
            current = {t.id for t in message.tasks}
            for task in self._tasks.values():
                if task.id not in current:
                    task.assignment = None
        for assigned in message.tasks:
            self._take(assigned)
        for task_id in message.removed:
            gone = self._tasks.get(task_id)
            if gone is not None:
                gone.assignment = None
        if message.full:  # a new session, maybe a new leader: everything it should know again
            for task in self._tasks.values():
                if task.assignment is not None:
                    self._reporter.put(task.id, task.status_pb())
            self._reporter.kick()
        for task in list(self._tasks.values()):
            self._step(task)

    def _on_leave(self) -> None:
        self._leaving = self._synced = True
        for task in list(self._tasks.values()):
            task.assignment = None
            self._step(task)

    def _on_exited(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is None or ts.is_terminal(task.state):
            return
        try:
            status = self.executor.status(task_id)
        except ExecError as e:
            self._set(task, ts.FAILED, err=str(e))
            self._step(task)
            return
        if status is None or not status.final:
            self._recheck_later(task_id)
            return
        self._ended(task, status)
        self._step(task)

    def _on_recheck(self, task_id: str) -> None:
        self._on_exited(task_id)

    def _on_done(self, task_id: str, call: str, future: concurrent.futures.Future[Any]) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        task.busy = False
        error = future.exception()
        if call == "prepare":
            if error is None:
                task.prepared = True
                self._set(task, ts.READY, "prepared")
            else:
                self._set(task, ts.REJECTED, err=_text(error))  # swarmkit: a failure before starting
        elif call == "start":
            if error is not None:
                self._set(task, ts.FAILED, err=_text(error))
            else:
                status: TaskStatus = future.result()
                if status.final:
                    if status.started_at is not None:
                        task.message = "started"  # it ran, briefly
                    self._ended(task, status)
                else:
                    self._set(task, ts.RUNNING, "started", pid=status.pid or 0)
                    self._watch(task)
        elif call == "shutdown" and error is not None:
            log.warning("could not stop task %s: %s", task_id, _text(error))
        elif call == "remove":
            if error is not None:
                log.warning("could not remove task %s: %s", task_id, _text(error))
            del self._tasks[task_id]
            return
        self._step(task)

    # -- deciding -----------------------------------------------------------------------------
    def _take(self, assigned: spb.Task) -> None:
        task = self._tasks.get(assigned.id)
        if task is not None:
            task.assignment, task.swarm = assigned, True
            return
        state = assigned.status.state
        task = _Task(assigned.id, assigned, state, assigned.status.message, assigned.status.err,
                     assigned.status.exit_code, assigned.status.pid, assigned.status.timestamp, swarm=True)
        self._tasks[assigned.id] = task
        if state in (ts.STARTING, ts.RUNNING):
            # The swarm believes it runs here, and this node has no trace of it (its state was lost).
            self._set(task, ts.FAILED, err="task: the node has no record of the task (its state was lost)")
        elif state == ts.READY:
            task.state = ts.PREPARING  # prepared once and lost since: prepare again (nothing is reported)

    def _step(self, task: _Task) -> None:
        """Move one task on as far as it goes without waiting; an executor call ends the step."""
        if task.busy:
            return
        assigned = task.assignment
        if assigned is None:
            if not self._synced:
                return  # adopted: the first full set says whether it stays
            if self._live(task):
                self._shutdown(task)
            else:
                self._call(task, "remove", self.executor.remove, task.id)
            return
        desired = assigned.desired_state
        if ts.rank(desired) >= ts.RANK[ts.SHUTDOWN]:
            if ts.is_terminal(task.state):
                return
            if self._live(task):
                self._shutdown(task)
            else:
                self._set(task, ts.SHUTDOWN, "shutdown")
            return
        while not task.busy and not ts.is_terminal(task.state):
            state = task.state
            if ts.rank(state) < ts.RANK[ts.ACCEPTED]:
                self._set(task, ts.ACCEPTED, "accepted")
            elif state == ts.ACCEPTED:
                self._set(task, ts.PREPARING, "preparing")
            elif state == ts.PREPARING:
                try:
                    spec = runtime_spec(assigned, self.node_id, self.hostname)
                except (ValueError, TypeError) as e:
                    self._set(task, ts.REJECTED, err=str(e))
                    return
                self._call(task, "prepare", self.executor.prepare, spec)
            elif state == ts.READY:
                if ts.rank(ts.READY) >= ts.rank(desired):
                    return  # desired ready: prepared, waiting to be told to run
                self._set(task, ts.STARTING, "starting")
                self._call(task, "start", self.executor.start, task.id)
            else:
                return  # starting or running: its end comes through the waiter

    def _live(self, task: _Task) -> bool:
        return task.state in (ts.STARTING, ts.RUNNING)

    def _shutdown(self, task: _Task) -> None:
        if task.stopping:
            return
        task.stopping = True
        self._call(task, "shutdown", self.executor.shutdown, task.id)

    def _ended(self, task: _Task, status: TaskStatus) -> None:
        exit_code = status.exit_code or 0
        if status.stop_requested or task.stopping:
            self._set(task, ts.SHUTDOWN, "shutdown", exit_code=exit_code)
        elif status.state == TaskState.COMPLETE:
            self._set(task, ts.COMPLETE, "finished", exit_code=exit_code)
        else:
            self._set(task, ts.FAILED, err=status.error or f"task: non-zero exit ({exit_code})", exit_code=exit_code)

    def _watch(self, task: _Task) -> None:
        try:
            fd = self.executor.exit_fd(task.id)
        except ExecError:
            fd = None
        if fd is not None:
            self._waiter.watch(task.id, fd)
        else:
            self._events.put(("exited", task.id))  # ended already, or no descriptor: look now

    def _recheck_later(self, task_id: str) -> None:
        timer = threading.Timer(RECHECK, lambda: self._events.put(("recheck", task_id)))
        timer.daemon = True
        timer.start()

    def _call(self, task: _Task, name: str, fn: Callable[..., Any], *args: Any) -> None:
        task.busy = True
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda f: self._events.put(("done", task.id, name, f)))

    def _set(self, task: _Task, state: str, message: str | None = None, err: str = "",
             exit_code: int | None = None, pid: int | None = None) -> None:
        """A new state (never an earlier one), reported."""
        if ts.moves_back(task.state, state):
            return
        task.state = state
        if message is not None:
            task.message = message
        task.err = err
        if exit_code is not None:
            task.exit_code = exit_code
        task.pid = pid if pid is not None else (task.pid if state == ts.RUNNING else 0)
        task.timestamp = now_rfc3339()
        if task.swarm:
            self._reporter.put(task.id, task.status_pb())

    def _adopted(self, task_id: str, status: TaskStatus | None) -> _Task:
        task = _Task(task_id, None, ts.READY, "prepared", prepared=True, timestamp=now_rfc3339())
        if status is None:
            return task
        if status.final:
            self._ended(task, status)
        else:
            task.state, task.message, task.pid = ts.RUNNING, "started", status.pid or 0
            self._watch(task)
        log.info("adopted task %s (%s)", task_id, task.state)
        return task


def _text(error: BaseException) -> str:
    return str(error) if isinstance(error, ExecError) else f"{type(error).__name__}: {error}"


class _ExitWaiter:
    """One thread waits for the end of every running task: an epoll set of exit descriptors."""

    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit
        self._epoll = select.epoll()
        self._lock = threading.Lock()
        self._fds: dict[int, str] = {}
        self._stop_r, self._stop_w = os.pipe()
        self._epoll.register(self._stop_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="task-exits", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, task_id: str, fd: int) -> None:
        with self._lock:
            self._fds[fd] = task_id
            self._epoll.register(fd, select.EPOLLIN)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join(2.0)
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()

    def _run(self) -> None:
        while True:
            try:
                ready = self._epoll.poll()
            except InterruptedError:
                continue
            for fd, _ in ready:
                if fd == self._stop_r:
                    return
                with self._lock:
                    task_id = self._fds.pop(fd, None)
                    self._epoll.unregister(fd)
                    os.close(fd)
                if task_id is not None:
                    self._on_exit(task_id)


class _Reporter:
    """Sends the latest status of each task, batched, until a manager took it."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._pending: dict[str, spb.TaskStatus] = {}
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._sending = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-reports", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, task_id: str, status: spb.TaskStatus) -> None:
        with self._lock:
            self._pending[task_id] = status
        self._wake.set()

    def kick(self) -> None:
        """Try now (a new session), whatever the backoff."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending and not self._sending, timeout)

    def _run(self) -> None:
        backoff = REPORT_BACKOFF[0]
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set():
                with self._lock:
                    batch = dict(list(self._pending.items())[:MAX_REPORT_BATCH])
                    self._sending = bool(batch)
                    if not batch:
                        self._idle.notify_all()
                        break
                sent = self._try(batch)
                with self._lock:
                    for task_id in sent:
                        if self._pending.get(task_id) is batch[task_id]:
                            del self._pending[task_id]
                    self._sending = False
                    if not self._pending:
                        self._idle.notify_all()
                if len(sent) < len(batch):
                    if self._wake.wait(backoff):
                        self._wake.clear()
                        backoff = REPORT_BACKOFF[0]
                    else:
                        backoff = min(backoff * 2, REPORT_BACKOFF[1])
                else:
                    backoff = REPORT_BACKOFF[0]

    def _try(self, batch: dict[str, spb.TaskStatus]) -> list[str]:
        """The task IDs whose reports are done with (sent, or refused for good)."""
        updates = [spb.TaskStatusUpdate(task_id=i, status=s) for i, s in batch.items()]
        try:
            self._send(updates)
            return list(batch)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                log.debug("task reports not sent (%s); retrying", e.details() or e.code())
                return []
        except Exception as e:  # noqa: BLE001 - no session now: retried
            log.debug("task reports not sent (%s); retrying", e)
            return []
        # Refused as a whole (swarmkit refuses a call naming any task that is not this node's):
        # one at a time, so the others get through and only the refused ones are dropped.
        done = []
        for update in updates:
            try:
                self._send([update])
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
                    continue
                log.warning("report of task %s refused: %s", update.task_id, e.details())
            except Exception:  # noqa: BLE001
                continue
            done.append(update.task_id)
        return done
