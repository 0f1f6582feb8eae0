"""Tasks reach nodes and run there: a real manager (run in this process, so the test can write
services into its store and read its tasks directly, see tests/inproc.py), real worker daemons,
real task processes. Assignments over the session, status reports through UpdateTaskStatus and
their authorization, adoption after a worker restart, leave.

Every daemon is stopped and every task process killed at teardown, by PID; every wait is bounded.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from swarmd.agent.exec.none import REFUSAL
from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.store.services import NOT_ASSIGNED_HERE
from tests.harness import Daemon, join, node_tls, wait_for
from tests.inproc import InProcessManager
from tests.tasklib import stop_all
from tests.servicelib import raw_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="worker daemons run tasks as nobody: needs root")

WAIT = 30.0
_ids = itertools.count(1)


class Swarm:
    def __init__(self, manager: InProcessManager) -> None:
        self.manager = manager
        self.workers: list[Daemon] = []

    def node_id(self, d: Daemon) -> str:
        return d.info().node_id

    def run(self, node: Daemon, program: str = "/bin/sleep", *args: str, **template: Any) -> str:
        """A service of one task, placed on ``node`` by a constraint (the leader's orchestrator
        and scheduler make and assign it) and never restarted, so the test follows one task."""
        n = next(_ids)
        service_id = f"svc{n:022d}"
        self.manager.propose("create_service", id=service_id, spec=raw_spec(
            f"web{n}", task_template={"program": program, "args": list(args or ("1000",)),
                                      "placement": {"constraints": [f"node.id=={self.node_id(node)}"]},
                                      "restart_policy": {"condition": "none"}, **template}))

        def made() -> str | None:
            ids = self.manager.manager.machine.read(lambda state: state["tasks"].lookup("service", service_id))
            return ids[0] if ids else None
        task_id: str = wait_for(made, WAIT, what=f"the task of service {service_id}")
        return task_id

    def status(self, task_id: str) -> dict[str, Any]:
        task = self.manager.task(task_id)
        assert task is not None
        return dict(task["status"])

    def wait_state(self, task_id: str, state: str) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(task_id)
            return status if status["state"] == state else None
        return wait_for(reached, WAIT, what=f"task {task_id} {state} (now {self.status(task_id)['state']})")

    def desire(self, task_id: str, desired: str) -> None:
        self.manager.propose("update_tasks", updates=[{"id": task_id, "desired_state": desired}])


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    manager = InProcessManager(tmp_path).start()
    s = Swarm(manager)
    try:
        manager.init()
        yield s
    finally:
        stop_all([*s.workers, manager])


def worker(s: Swarm, tmp_path: Path, name: str) -> Daemon:
    d = Daemon(tmp_path, name)
    s.workers.append(d)
    d.start()
    join(d, s.manager)
    return d


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_a_worker_runs_its_task_stops_it_and_removes_it(swarm: Swarm, tmp_path: Path) -> None:
    w1 = worker(swarm, tmp_path, "w1")
    task_id = swarm.run(w1)
    running = swarm.wait_state(task_id, "running")
    assert running["message"] == "started" and alive(running["pid"])
    swarm.desire(task_id, "shutdown")
    stopped = swarm.wait_state(task_id, "shutdown")
    assert stopped["message"] == "shutdown"
    wait_for(lambda: not alive(running["pid"]), WAIT, what="the task's process gone")
    task_dir = w1.state_dir / "executor" / "tasks" / task_id
    assert task_dir.exists()  # a stopped task keeps its state and logs until the store deletes it
    swarm.manager.propose("remove_tasks", ids=[task_id])
    wait_for(lambda: not task_dir.exists(), WAIT, what="the task's state removed from the worker")


def test_a_failing_program_is_reported_with_its_exit_code(swarm: Swarm, tmp_path: Path) -> None:
    w1 = worker(swarm, tmp_path, "w1")
    failing = swarm.run(w1, "/bin/sh", "-c", "exit 3")
    missing = swarm.run(w1, "/nonexistent")
    failed = swarm.wait_state(failing, "failed")
    assert (failed["err"], failed["exit_code"]) == ("task: non-zero exit (3)", 3)
    failed = swarm.wait_state(missing, "failed")
    assert failed["err"] == ('starting container failed: exec: "/nonexistent": stat /nonexistent: '
                             "no such file or directory") and failed["exit_code"] == 127


def test_a_node_reports_only_its_own_tasks(swarm: Swarm, tmp_path: Path) -> None:
    w1, w2 = worker(swarm, tmp_path, "w1"), worker(swarm, tmp_path, "w2")
    task_id = swarm.run(w1)
    swarm.wait_state(task_id, "running")
    root, cert, key = node_tls(w2.state_dir)
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    forged = spb.UpdateTaskStatusRequest(updates=[spb.TaskStatusUpdate(
        task_id=task_id, status=spb.TaskStatus(state="failed", err="forged"))])
    with grpc.secure_channel(swarm.manager.listen, creds,
                             options=[("grpc.ssl_target_name_override", "swarm-manager")]) as channel:
        stub = pb_grpc.DispatcherStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.UpdateTaskStatus(forged, timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.details() == NOT_ASSIGNED_HERE
        too_many = spb.UpdateTaskStatusRequest(updates=[forged.updates[0]] * 1001)
        with pytest.raises(grpc.RpcError) as refused:
            stub.UpdateTaskStatus(too_many, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A task the store does not hold is skipped, as swarmkit does: nothing to refuse.
        stub.UpdateTaskStatus(spb.UpdateTaskStatusRequest(updates=[spb.TaskStatusUpdate(
            task_id="gone", status=spb.TaskStatus(state="running"))]), timeout=10)
    assert swarm.status(task_id)["state"] == "running"


def test_tasks_outlive_a_worker_restart_and_are_adopted(swarm: Swarm, tmp_path: Path) -> None:
    w1 = worker(swarm, tmp_path, "w1")
    task_id = swarm.run(w1)
    pid = swarm.wait_state(task_id, "running")["pid"]
    w1.stop()
    assert alive(pid)  # the daemon stopped; its task did not
    w1.start()
    assert alive(pid)
    os.kill(pid, signal.SIGKILL)  # the restarted daemon supervises the adopted task
    failed = swarm.wait_state(task_id, "failed")
    assert (failed["exit_code"], failed["err"]) == (137, "task: non-zero exit (137)")


def test_leave_stops_the_nodes_tasks(swarm: Swarm, tmp_path: Path) -> None:
    w1 = worker(swarm, tmp_path, "w1")
    task_id = swarm.run(w1)
    pid = swarm.wait_state(task_id, "running")["pid"]
    w1.ok("leave")
    assert not alive(pid)
    assert swarm.status(task_id)["state"] == "shutdown"  # reported before the session closed
    assert not (w1.state_dir / "executor").exists()  # the state dir is left empty, as after any leave


def test_a_node_without_an_executor_rejects_its_tasks(swarm: Swarm) -> None:
    task_id = swarm.run(swarm.manager)  # the in-process manager runs with --executor none
    rejected = swarm.wait_state(task_id, "rejected")
    assert (rejected["message"], rejected["err"]) == ("preparing", REFUSAL)


def test_a_node_keeps_its_tasks_when_the_leader_changes(swarm: Swarm, tmp_path: Path) -> None:
    """The worker moves to the new leader, whose first message is the full set: the task runs
    on (not started again), and what it reports next is written by the new leader (read here
    from this manager's replicated copy, now a follower's)."""
    for name in ("m2", "m3"):
        d = Daemon(tmp_path, name)
        swarm.workers.append(d)
        d.start()
        join(d, swarm.manager, "manager")
    w1 = worker(swarm, tmp_path, "w1")
    task_id = swarm.run(w1)
    pid = swarm.wait_state(task_id, "running")["pid"]
    store = swarm.manager.manager.store
    assert store.transfer_leadership(timeout=WAIT)
    wait_for(lambda: not store.is_leader() and store.leader_id() is not None, WAIT, what="a new leader")
    os.kill(pid, signal.SIGKILL)
    failed = swarm.wait_state(task_id, "failed")
    assert (failed["exit_code"], failed["err"]) == (137, "task: non-zero exit (137)")
    raw = (w1.state_dir / "executor" / "tasks" / task_id / "status.json").read_text()
    assert f'"pid": {pid},' in raw or f'"pid":{pid},' in raw  # the one process it ever started


def test_a_node_removed_from_the_swarm_stops_its_tasks(swarm: Swarm, tmp_path: Path) -> None:
    w1 = worker(swarm, tmp_path, "w1")
    task_id = swarm.run(w1)
    pid = swarm.wait_state(task_id, "running")["pid"]
    swarm.manager.ok("node", "rm", "--force", swarm.node_id(w1))
    wait_for(lambda: not alive(pid), WAIT, what="the removed node's task stopped")
    wait_for(lambda: not any((w1.state_dir / "executor" / "tasks").iterdir()), WAIT, what="its state removed")
