"""End-to-end dispatch through the CLI: replicas spread over real workers, a killed task
replaced with its error in ``service ps``, a global task kept across a worker restart, and
kill -9 of the leader with nothing restarted or duplicated. (``test_dispatch.py`` covers the
same paths with tasks written into an in-process manager's store.)

Every daemon is stopped and every task process killed at teardown; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, join, wait_for
from tests.tasklib import stop_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="worker daemons run tasks as nobody: needs root")

WAIT = 30.0


def running_tasks(d: Daemon) -> dict[str, int]:
    """The tasks a node runs, from its executor's own state: task ID -> PID."""
    found = {}
    tasks = d.state_dir / "executor" / "tasks"
    for task_dir in tasks.iterdir() if tasks.exists() else ():
        try:
            raw = json.loads((task_dir / "status.json").read_text())
        except (OSError, ValueError):
            continue
        if raw.get("state") == "running" and isinstance(raw.get("pid"), int):
            found[task_dir.name] = raw["pid"]
    return found


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Daemon]]:
    mgr, w1, w2 = Daemon(tmp_path, "mgr"), Daemon(tmp_path, "w1"), Daemon(tmp_path, "w2")
    started = [mgr, w1, w2]
    try:
        for d in started:
            d.start()
        mgr.init()
        join(w1, mgr)
        join(w2, mgr)
        yield started
    finally:
        stop_all(started)


def total_running(nodes: list[Daemon]) -> int:
    return sum(len(running_tasks(d)) for d in nodes)


def test_service_create_runs_its_replicas_on_the_nodes(nodes: list[Daemon]) -> None:
    mgr = nodes[0]
    mgr.ok("service", "create", "-d", "--name", "web", "--replicas", "6", "/bin/sleep", "1000")
    wait_for(lambda: total_running(nodes) == 6, WAIT, what="6 replicas running")
    assert all(len(running_tasks(d)) == 2 for d in nodes)  # spread evenly
    mgr.ok("service", "scale", "web=0")
    wait_for(lambda: total_running(nodes) == 0, WAIT, what="no replica left")


def test_a_killed_task_is_replaced(nodes: list[Daemon]) -> None:
    mgr = nodes[0]
    mgr.ok("service", "create", "-d", "--name", "web", "--replicas", "1", "--restart-delay", "0s",
           "/bin/sleep", "1000")
    wait_for(lambda: total_running(nodes) == 1, WAIT, what="the replica running")
    (node,) = [d for d in nodes if running_tasks(d)]
    (old_task, pid), = running_tasks(node).items()
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        return any(t != old_task for d in nodes for t in running_tasks(d))
    wait_for(replaced, WAIT, what="a new task in the slot")
    ps = mgr.ok("service", "ps", "--no-trunc", "web")
    assert "task: non-zero exit (137)" in ps


def test_a_worker_restart_keeps_its_tasks(nodes: list[Daemon]) -> None:
    mgr, w1 = nodes[0], nodes[1]
    mgr.ok("service", "create", "-d", "--name", "web", "--mode", "global", "/bin/sleep", "1000")
    wait_for(lambda: len(running_tasks(w1)) == 1, WAIT, what="w1's global task running")
    before = running_tasks(w1)
    w1.restart()
    wait_for(lambda: "Ready" in mgr.ok("node", "ls"), WAIT, what="w1 back")
    assert running_tasks(w1) == before  # adopted: the same task, the same process


def test_a_new_leader_keeps_the_tasks_running(tmp_path: Path, nodes: list[Daemon]) -> None:
    mgr = nodes[0]
    extra = [Daemon(tmp_path, "m2"), Daemon(tmp_path, "m3")]
    nodes += extra
    for d in extra:
        d.start()
        join(d, mgr, "manager")
    mgr.ok("service", "create", "-d", "--name", "web", "--replicas", "4", "--constraint", "node.role==worker",
           "/bin/sleep", "1000")
    wait_for(lambda: total_running(nodes) == 4, WAIT, what="4 replicas running")
    before = {d.hostname: running_tasks(d) for d in nodes}
    mgr.kill9()  # the leader: the workers move to the new one and get their full sets from it
    wait_for(lambda: "Leader" in extra[0].ok("node", "ls"), WAIT, what="a new leader")
    assert {d.hostname: running_tasks(d) for d in nodes if d is not mgr} == {
        h: t for h, t in before.items() if h != mgr.hostname}  # nothing restarted, nothing duplicated


def test_a_down_workers_tasks_move_and_stop_when_it_returns(nodes: list[Daemon]) -> None:
    """A worker silent for three heartbeat periods is Down: its replicated tasks are replaced on
    the other worker; when it comes back, its full set says its old task is to shut down."""
    mgr, w1, w2 = nodes
    mgr.ok("update", "--dispatcher-heartbeat", "1s")
    mgr.ok("service", "create", "-d", "--name", "web", "--replicas", "2", "--replicas-max-per-node", "1",
           "--constraint", "node.role==worker", "--stop-grace-period", "1s", "/bin/sleep", "1000")
    wait_for(lambda: len(running_tasks(w1)) == 1 and len(running_tasks(w2)) == 1, WAIT, what="one replica per worker")
    (old_task, old_pid), = running_tasks(w1).items()
    assert w1.proc is not None
    os.kill(w1.proc.pid, signal.SIGSTOP)  # the daemon freezes; its task's process runs on
    try:
        def down() -> bool:
            return any("w1" in line and " Down " in line for line in mgr.ok("node", "ls").splitlines())
        wait_for(down, WAIT, what="w1 Down")
        # Max one per node and only two workers: the replacement waits for a node (it cannot
        # go to w2), and the old task is desired shut down.
        listed = [json.loads(line) for line in mgr.ok("service", "ps", "--format", "json", "--no-trunc", "web").splitlines()]
        (task,) = [t for t in listed if t["ID"] == old_task]
        assert task["DesiredState"] == "Shutdown", task
    finally:
        os.kill(w1.proc.pid, signal.SIGCONT)

    def old_task_stopped() -> bool:
        try:
            os.kill(old_pid, 0)
        except ProcessLookupError:
            return True
        return old_task not in running_tasks(w1)
    wait_for(old_task_stopped, WAIT, what="w1's old task stopped after it came back")
    # w1 is Ready again, so the slot's replacement runs there: two replicas again, none of them the old one.
    wait_for(lambda: total_running(nodes) == 2 and old_task not in running_tasks(w1), WAIT, what="2 replicas again")


def test_a_new_leader_finishes_a_rolling_update(tmp_path: Path, nodes: list[Daemon]) -> None:
    """kill -9 of the leader in the middle of a rolling update: the new leader's updater works out
    from the store which slots are done and finishes the rest."""
    mgr, w1, w2 = nodes
    extra = [Daemon(tmp_path, "m2"), Daemon(tmp_path, "m3")]
    nodes += extra
    for d in extra:
        d.start()
        join(d, mgr, "manager")
    mgr.ok("service", "create", "-d", "--name", "web", "--replicas", "4", "--constraint", "node.role==worker",
           "--stop-grace-period", "1s", "--update-delay", "2s", "/bin/sleep", "1000")
    wait_for(lambda: total_running(nodes) == 4, WAIT, what="4 replicas running")
    before = set(running_tasks(w1)) | set(running_tasks(w2))
    mgr.ok("service", "update", "-d", "--env-add", "STEP=2", "web")
    wait_for(lambda: len((set(running_tasks(w1)) | set(running_tasks(w2))) - before) >= 1, WAIT,
             what="the first slot updated")
    mgr.kill9()
    new = extra[0]
    wait_for(lambda: "Leader" in new.ok("node", "ls"), WAIT, what="a new leader")

    def completed() -> bool:
        doc = json.loads(new.ok("service", "inspect", "web"))[0]
        return (doc.get("UpdateStatus") or {}).get("State") == "completed"
    wait_for(completed, 60.0, what="the update completed by the new leader")
    wait_for(lambda: total_running([w1, w2]) == 4, WAIT, what="4 replicas running")
    now = set(running_tasks(w1)) | set(running_tasks(w2))
    assert not now & before  # every slot runs a task of the new spec
    doc = json.loads(new.ok("service", "inspect", "web"))[0]
    assert doc["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["STEP=2"]
