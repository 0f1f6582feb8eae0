"""The task runner with the real process executor and real processes: Assignments messages in,
status reports out through the runner's real reporting path (a send function that records what
a manager would receive), adoption by a new runner, leave.

Every task is removed at teardown (shim and process group killed); every wait is bounded.
"""

from __future__ import annotations

import itertools
import subprocess
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from swarmd.agent.exec.cgroups import Cgroups, Layout
from swarmd.agent.exec.none import REFUSAL, NoExecutor
from swarmd.agent.exec.process import ProcessExecutor, ProcessExecutorConfig
from swarmd.agent.worker import TaskRunner
from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.store import taskstate
from tests.harness import wait_for
from tests.integration.test_executor import ME
from tests.tasklib import kill_leftovers

WAIT = 20.0
NODE = "node0123456789abcdefghijk"
_ids = itertools.count(1)


class Manager:
    """What UpdateTaskStatus calls deliver, as the dispatcher would take them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[list[tuple[str, spb.TaskStatus]]] = []
        self.failures = 0           # the next calls that fail as with no session
        self.refuse: set[str] = set()  # tasks "not assigned this node"

    def send(self, updates: list[spb.TaskStatusUpdate]) -> None:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("no session")
            if any(u.task_id in self.refuse for u in updates):
                raise _Refused()
            self.calls.append([(u.task_id, u.status) for u in updates])

    def states(self, task_id: str) -> list[str]:
        with self.lock:
            return [s.state for call in self.calls for i, s in call if i == task_id]

    def last(self, task_id: str) -> spb.TaskStatus | None:
        with self.lock:
            found = [s for call in self.calls for i, s in call if i == task_id]
        return found[-1] if found else None

    def wait_state(self, task_id: str, state: str) -> spb.TaskStatus:
        def reached() -> spb.TaskStatus | None:
            last = self.last(task_id)
            return last if last is not None and last.state == state else None
        return wait_for(reached, WAIT, what=f"{task_id} reported {state} (got {self.states(task_id)})")


class _Refused(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.PERMISSION_DENIED

    def details(self) -> str:
        return "cannot update a task not assigned this node"


def task(program: str, *args: str, desired: str = "running", task_id: str | None = None,
         **template: Any) -> spb.Task:
    return spb.Task(id=task_id or f"task{next(_ids):021d}", service_id="svc", service_name="web", slot=1,
                    node_id=NODE, desired_state=desired, spec_version=1,
                    spec=spb.TaskTemplate(program=program, args=args, **template),
                    status=spb.TaskStatus(state="assigned", message="scheduler assigned task to node"))


class Session:
    """Feeds a runner as a session does: a full set first, then numbered changes."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self.sequence = 0
        runner.session_started()

    def full(self, *tasks: spb.Task) -> None:
        self.sequence += 1
        assert self.runner.assignments(spb.Assignments(sequence=self.sequence, full=True, tasks=tasks))

    def change(self, *tasks: spb.Task, removed: tuple[str, ...] = ()) -> None:
        self.sequence += 1
        assert self.runner.assignments(spb.Assignments(sequence=self.sequence, tasks=tasks, removed=removed))


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "executor"
    yield state
    kill_leftovers(state, Cgroups(Layout(0)))


@pytest.fixture
def make(state: Path) -> Iterator[Callable[..., tuple[TaskRunner, Manager]]]:
    runners: list[TaskRunner] = []

    def factory(cgroups: Cgroups | None = None) -> tuple[TaskRunner, Manager]:
        manager = Manager()
        executor = ProcessExecutor(state, ProcessExecutorConfig(task_user=ME), cgroups or Cgroups(Layout(0)))
        runner = TaskRunner(executor, NODE, "host-a", manager.send).start()
        runners.append(runner)
        return runner, manager

    yield factory
    for runner in runners:
        runner.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def test_a_task_runs_through_its_states_and_reports_its_failure(make: Callable[..., Any]) -> None:
    runner, manager = make()
    t = task("/bin/sh", "-c", "exit 3")
    Session(runner).full(t)
    status = manager.wait_state(t.id, "failed")
    assert (status.message, status.err, status.exit_code) == ("started", "task: non-zero exit (3)", 3)
    states = manager.states(t.id)
    assert states == sorted(states, key=taskstate.rank), states  # only ever forward
    # Reports are coalesced (the latest state of a task wins while a report is in flight), so
    # which intermediate states reach the manager depends on timing; the last one does not.
    assert states[-1] == "failed" and set(states) <= {"accepted", "preparing", "ready", "starting", "running",
                                                      "failed"}, states


def test_exit_0_completes_and_a_missing_program_fails_with_dockers_text(make: Callable[..., Any]) -> None:
    runner, manager = make()
    ok, missing = task("/bin/true"), task("/nonexistent")
    Session(runner).full(ok, missing)
    done = manager.wait_state(ok.id, "complete")
    assert (done.message, done.exit_code, done.err) == ("finished", 0, "")
    failed = manager.wait_state(missing.id, "failed")
    assert failed.message == "starting" and failed.exit_code == 127
    assert failed.err == 'starting container failed: exec: "/nonexistent": stat /nonexistent: no such file or directory'


def test_shutdown_stops_the_task_and_removal_releases_it(make: Callable[..., Any], state: Path) -> None:
    runner, manager = make()
    t = task("/bin/sleep", "1000", stop_grace_period_ns=5 * 10**9)
    session = Session(runner)
    session.full(t)
    running = manager.wait_state(t.id, "running")
    assert running.message == "started" and running.pid > 0 and alive(running.pid)
    stopping = spb.Task()
    stopping.CopyFrom(t)
    stopping.desired_state = "shutdown"
    session.change(stopping)
    stopped = manager.wait_state(t.id, "shutdown")
    assert stopped.message == "shutdown" and stopped.exit_code == 128 + 15  # SIGTERM ended it
    wait_for(lambda: not alive(running.pid), WAIT, what="the program gone")
    assert (state / "tasks" / t.id).exists()  # history: kept until the store deletes the task
    session.change(removed=(t.id,))
    wait_for(lambda: not (state / "tasks" / t.id).exists(), WAIT, what="the task's state removed")


def test_desired_ready_prepares_and_waits_then_running_starts(make: Callable[..., Any]) -> None:
    runner, manager = make()
    t = task("/bin/sleep", "1000", desired="ready")
    session = Session(runner)
    session.full(t)
    ready = manager.wait_state(t.id, "ready")
    assert ready.message == "prepared"
    assert runner.reporting_idle(WAIT) and manager.last(t.id).state == "ready"  # type: ignore[union-attr]
    go = spb.Task()
    go.CopyFrom(t)
    go.desired_state = "running"
    session.change(go)
    manager.wait_state(t.id, "running")


def test_limits_without_a_cgroup_reject_the_task(make: Callable[..., Any]) -> None:
    runner, manager = make(Cgroups(Layout(0)))
    t = task("/bin/sleep", "1000", resources=spb.ResourceRequirements(limits=spb.Resources(memory_bytes=64 << 20)))
    Session(runner).full(t)
    rejected = manager.wait_state(t.id, "rejected")
    assert rejected.message == "preparing"
    assert rejected.err == "cannot enforce the task's memory limit: no cgroup memory controller on this node"


def test_a_node_without_an_executor_rejects_its_tasks(state: Path) -> None:
    manager = Manager()
    runner = TaskRunner(NoExecutor(), NODE, "host-a", manager.send).start()
    try:
        t = task("/bin/true")
        Session(runner).full(t)
        assert manager.wait_state(t.id, "rejected").err == REFUSAL
    finally:
        runner.close()


def test_reports_are_retried_and_sent_again_on_a_new_session(make: Callable[..., Any]) -> None:
    runner, manager = make()
    manager.failures = 3  # no manager takes them at first
    t = task("/bin/sleep", "1000")
    Session(runner).full(t)
    manager.wait_state(t.id, "running")
    sent = len(manager.states(t.id))
    Session(runner).full(t)  # a reconnect, maybe to a new leader: the current status again
    wait_for(lambda: len(manager.states(t.id)) > sent, WAIT, what="the status sent again")
    assert manager.last(t.id).state == "running"  # type: ignore[union-attr]


def test_a_refused_report_does_not_hold_up_the_others(make: Callable[..., Any]) -> None:
    runner, manager = make()
    mine, stolen = task("/bin/true"), task("/bin/true")
    manager.refuse.add(stolen.id)
    Session(runner).full(mine, stolen)
    manager.wait_state(mine.id, "complete")
    assert runner.reporting_idle(WAIT)
    assert manager.states(stolen.id) == []


def test_out_of_sequence_assignments_ask_for_a_new_session(make: Callable[..., Any]) -> None:
    runner, _ = make()
    runner.session_started()
    assert not runner.assignments(spb.Assignments(sequence=1, full=False))  # the first must be full
    assert runner.assignments(spb.Assignments(sequence=1, full=True))
    assert not runner.assignments(spb.Assignments(sequence=3))               # a gap


def test_a_new_runner_adopts_running_tasks_and_reports_those_that_ended(make: Callable[..., Any],
                                                                      tmp_path: Path) -> None:
    runner, manager = make()
    flag = tmp_path / "go"
    keeps, ends = task("/bin/sleep", "1000"), task("/bin/sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.02; done; exit 4")
    Session(runner).full(keeps, ends)
    running = manager.wait_state(keeps.id, "running")
    manager.wait_state(ends.id, "running")
    runner.close()  # the daemon stops (or crashes): the tasks go on
    flag.touch()    # one of them ends while no daemon runs

    again, manager2 = make()
    assert alive(running.pid)
    session = Session(again)
    session.full(keeps, ends)
    assert manager2.wait_state(keeps.id, "running").pid == running.pid  # the same process, adopted
    failed = manager2.wait_state(ends.id, "failed")
    assert (failed.exit_code, failed.err) == (4, "task: non-zero exit (4)")
    Session(again).full()  # a new session: the swarm no longer assigns them here, so they go
    wait_for(lambda: not alive(running.pid), WAIT, what="the adopted task stopped")


def test_adopted_tasks_wait_for_the_first_full_set(make: Callable[..., Any]) -> None:
    runner, manager = make()
    t = task("/bin/sleep", "1000")
    Session(runner).full(t)
    running = manager.wait_state(t.id, "running")
    runner.close()
    again, _ = make()
    assert again.reporting_idle(WAIT)
    assert alive(running.pid)  # not stopped before the swarm said whether it stays


def test_stop_all_stops_and_removes_every_task(make: Callable[..., Any], state: Path) -> None:
    runner, manager = make()
    tasks = [task("/bin/sleep", "1000") for _ in range(3)]
    Session(runner).full(*tasks)
    pids = [manager.wait_state(t.id, "running").pid for t in tasks]
    runner.stop_all(timeout=WAIT)
    assert all(not alive(pid) for pid in pids)
    assert not any((state / "tasks").iterdir())
    assert [manager.last(t.id).state for t in tasks] == ["shutdown"] * 3  # type: ignore[union-attr]


def test_an_unknown_task_user_stops_the_daemon_with_one_line(tmp_path: Path) -> None:
    from tests.harness import SWARMD
    r = subprocess.run([SWARMD, "--state-dir", str(tmp_path / "s"), "--control-socket", str(tmp_path / "sock"),
                        "--task-user", "no-such-user-here"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == ("swarmd: invalid --task-user: unable to find user no-such-user-here: "
                        "no matching entries in passwd file\n")
