"""The leader's scheduler and orchestrator against a real single-member store: the nodes'
reports are the ``report_task_status`` ops the dispatcher writes, so restarts, rolling
replacements, the reaper and node changes run end to end, in one process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.ca import ids
from swarmd.manager.manager import Manager
from swarmd.manager.orchestration import Orchestrator
from swarmd.store import specs
from swarmd.store.objects import Task
from swarmd.timeutil import now_rfc3339
from tests.harness import wait_for
from tests.servicelib import CLUSTER, node, raw_spec
from tests.storelib import INGRESS

SETTLE = 20
SECOND = 1_000_000_000


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager("n0", tmp_path / "raft", data_key=bytes(range(32)))
    m.start()
    try:
        assert m.propose("bootstrap", cluster={**CLUSTER, "spec": {"task_history_limit": 2}},
                         node=node("n0", role="manager", manager={"addr": "10.0.0.1:2377"}), ingress=INGRESS)["ok"]
        for name in ("n1", "n2"):
            assert m.propose("add_node", node=node(name))["ok"]
        yield m
    finally:
        m.stop()


def create(m: Manager, name: str, **fields: Any) -> str:
    spec = specs.normalize(raw_spec(name, **fields))
    return str(m.propose("create_service", id=ids.new_id(), spec=spec, now=now_rfc3339())["service_id"])


def update(m: Manager, service_id: str, **template: Any) -> None:
    current = m.machine.read(lambda s: s["services"][service_id])
    spec = {**current["spec"], "task_template": {**current["spec"]["task_template"], **template}}
    m.propose("update_service", id=service_id, spec=spec, now=now_rfc3339())


def tasks_of(m: Manager, service_id: str) -> list[Task]:
    return m.machine.read(lambda s: [s["tasks"][i] for i in s["tasks"].lookup("service", service_id)])


def live(m: Manager, service_id: str) -> list[Task]:
    return [t for t in tasks_of(m, service_id) if t["desired_state"] in ("running", "ready")]


def report(m: Manager, task: Task, state: str, **status: Any) -> None:
    m.propose("report_task_status", node_id=task["node_id"], now=now_rfc3339(), updates=[{
        "id": task["id"], "status": {"state": state, "timestamp": now_rfc3339(), "message": state, **status}}])


def run_assigned(m: Manager, service_id: str) -> int:
    """What an agent does: start what it was given to run, stop what it was told to stop."""
    count = 0
    for task in tasks_of(m, service_id):
        if task["status"]["state"] == "assigned" and task["desired_state"] == "running":
            report(m, task, "running")
            count += 1
        elif task["desired_state"] in ("shutdown", "remove") and task["status"]["state"] in ("assigned", "running"):
            report(m, task, "shutdown")
            count += 1
    return count


def running(m: Manager, service_id: str) -> list[Task]:
    return [t for t in tasks_of(m, service_id) if t["status"]["state"] == "running"
            and t["desired_state"] == "running"]


def converge(m: Manager, service_id: str, want: int) -> list[Task]:
    def done() -> list[Task] | None:
        run_assigned(m, service_id)
        now = running(m, service_id)
        return now if len(now) == want and len(live(m, service_id)) == want else None
    result: list[Task] = wait_for(done, SETTLE, step=0.05, what=f"{want} tasks running")
    return result


def test_a_failed_task_is_replaced_after_its_restart_delay_in_its_slot(manager: Manager) -> None:
    service_id = create(manager, "web", replicas=2,
                        task_template={"restart_policy": {"delay_ns": SECOND // 5, "condition": "on-failure"}})
    first = converge(manager, service_id, 2)
    victim = first[0]
    report(manager, victim, "failed", exit_code=3, err="task: non-zero exit (3)")
    replaced = converge(manager, service_id, 2)
    new = [t for t in replaced if t["id"] not in {x["id"] for x in first}]
    assert [t["slot"] for t in new] == [victim["slot"]]
    old = next(t for t in tasks_of(manager, service_id) if t["id"] == victim["id"])
    assert old["desired_state"] == "shutdown" and old["status"]["exit_code"] == 3
    # A task that completes (exit 0) under on-failure stays completed: nothing replaces it.
    done = replaced[0]
    report(manager, done, "complete")
    wait_for(lambda: len(live(manager, service_id)) == 1, SETTLE, what="the completed task shut down")
    assert next(t for t in tasks_of(manager, service_id) if t["id"] == done["id"])["desired_state"] == "shutdown"
    assert len(running(manager, service_id)) == 1


def test_history_beyond_the_limit_is_reaped(manager: Manager) -> None:
    service_id = create(manager, "web", replicas=1, task_template={"restart_policy": {"delay_ns": 0}})
    for _ in range(4):
        [task] = converge(manager, service_id, 1)
        report(manager, task, "failed", exit_code=1)
    converge(manager, service_id, 1)
    # task_history_limit 2: the running task and one stopped one are kept in the slot.
    wait_for(lambda: len(tasks_of(manager, service_id)) == 2, SETTLE, what="history trimmed to the limit")


def test_a_rolling_update_replaces_tasks_parallelism_at_a_time(manager: Manager) -> None:
    service_id = create(manager, "web", replicas=4, update_config={"parallelism": 2, "monitor_ns": SECOND // 5})
    before = {t["id"] for t in converge(manager, service_id, 4)}
    update(manager, service_id, args=["2000"])
    wait_for(lambda: len([t for t in live(manager, service_id) if t["id"] not in before]) == 2, SETTLE,
             what="the first two replaced")
    # No more than two are replaced until the new ones run.
    assert len([t for t in live(manager, service_id) if t["id"] not in before]) == 2

    def updated() -> list[Task] | None:
        now = converge(manager, service_id, 4)
        return now if all(t["spec"]["args"] == ["2000"] for t in now) else None
    after: list[Task] = wait_for(updated, SETTLE, what="every task replaced")
    assert not {t["id"] for t in after} & before
    wait_for(lambda: update_status(manager, service_id).get("state") == "completed", SETTLE,
             what="the update completed")
    assert update_status(manager, service_id)["message"] == "update completed"


def update_status(m: Manager, service_id: str) -> dict[str, Any]:
    return dict(m.machine.read(lambda s: s["services"][service_id]["update_status"]) or {})


def fail_new(m: Manager, service_id: str, before: set[str]) -> str:
    """The node's side: every new task fails as soon as it is assigned."""
    def failed() -> str | None:
        for task in tasks_of(m, service_id):
            if task["id"] not in before and task["status"]["state"] == "assigned":
                report(m, task, "failed", exit_code=1)
                return task["id"]
        return None
    task_id: str = wait_for(failed, SETTLE, what="a new task to fail")
    return task_id


def test_a_failing_update_pauses(manager: Manager) -> None:
    service_id = create(manager, "web", replicas=2, update_config={"monitor_ns": SECOND})
    before = {t["id"] for t in converge(manager, service_id, 2)}
    update(manager, service_id, args=["2000"])
    failed = fail_new(manager, service_id, before)
    wait_for(lambda: update_status(manager, service_id).get("state") == "paused", SETTLE, what="the update paused")
    assert update_status(manager, service_id)["message"] == \
        f"update paused due to failure or early termination of task {failed}"
    # Paused: the other old task is left as it is.
    assert len([t for t in live(manager, service_id) if t["id"] in before]) == 1


def test_a_failing_update_with_failure_action_rollback_rolls_back(manager: Manager) -> None:
    service_id = create(manager, "web", replicas=2, update_config={"failure_action": "rollback", "monitor_ns": SECOND},
                        rollback_config={"monitor_ns": SECOND // 5})
    before = {t["id"] for t in converge(manager, service_id, 2)}
    update(manager, service_id, args=["2000"])
    failed = fail_new(manager, service_id, before)
    wait_for(lambda: update_status(manager, service_id).get("state") in ("rollback_started", "rollback_completed"),
             SETTLE, what="the rollback")
    assert manager.machine.read(lambda s: s["services"][service_id]["spec"]["task_template"]["args"]) == ["1000"]
    after = converge(manager, service_id, 2)
    assert all(t["spec"]["args"] == ["1000"] for t in after)
    wait_for(lambda: update_status(manager, service_id).get("state") == "rollback_completed", SETTLE,
             what="the rollback completed")
    assert failed not in {t["id"] for t in after}


def test_start_first_starts_the_new_task_before_stopping_the_old(manager: Manager) -> None:
    service_id = create(manager, "web", replicas=1, update_config={"order": "start-first", "monitor_ns": 0})
    [old] = converge(manager, service_id, 1)
    update(manager, service_id, args=["2000"])
    wait_for(lambda: len(live(manager, service_id)) == 2, SETTLE, what="the new task beside the old")
    assert next(t for t in tasks_of(manager, service_id) if t["id"] == old["id"])["desired_state"] == "running"
    [new] = converge(manager, service_id, 1)
    assert new["id"] != old["id"]
    wait_for(lambda: next(t for t in tasks_of(manager, service_id) if t["id"] == old["id"])["desired_state"]
             == "shutdown", SETTLE, what="the old task stopped once the new one runs")


def test_global_follows_nodes_joining_and_going_down(manager: Manager) -> None:
    service_id = create(manager, "glob", mode="global", replicas=0)
    converge(manager, service_id, 3)
    assert manager.propose("add_node", node=node("n3"))["ok"]
    converge(manager, service_id, 4)
    manager.propose("set_node_status", id="n1", state="down", now=now_rfc3339())
    wait_for(lambda: sorted(t["node_id"] for t in live(manager, service_id)) == ["n0", "n2", "n3"], SETTLE,
             what="the down node's task shut down")
    # Paused: keeps what it runs, gets nothing new.
    manager.propose("update_node", id="n2", availability="pause", label_add={}, label_rm=[], now=now_rfc3339())
    assert sorted(t["node_id"] for t in live(manager, service_id)) == ["n0", "n2", "n3"]


def test_removal_deletes_the_tasks_once_stopped(manager: Manager) -> None:
    service_id = create(manager, "web", replicas=3)
    converge(manager, service_id, 3)
    manager.propose("remove_service", id=service_id, now=now_rfc3339())
    assert {t["desired_state"] for t in tasks_of(manager, service_id)} == {"remove"}
    run_assigned(manager, service_id)
    wait_for(lambda: tasks_of(manager, service_id) == [], SETTLE, what="the tasks deleted")


def test_a_thousand_tasks_are_placed_in_few_writes(manager: Manager) -> None:
    for i in range(3, 100):
        assert manager.propose("add_node", node=node(f"n{i}"))["ok"]
    before = manager.store.status()["commit_idx"]
    service_id = create(manager, "big", replicas=1000)
    wait_for(lambda: sum(1 for t in tasks_of(manager, service_id) if t["status"]["state"] == "assigned") == 1000,
             60, step=0.1, what="1000 tasks assigned")
    per_node: dict[str, int] = {}
    for task in tasks_of(manager, service_id):
        per_node[task["node_id"]] = per_node.get(task["node_id"], 0) + 1
    assert sorted(set(per_node.values())) == [10]   # spread evenly over the 100 nodes
    # One create, one batch of creations, one or a few scheduling batches: not a write per task.
    assert manager.store.status()["commit_idx"] - before < 20


def test_a_node_where_a_service_keeps_failing_comes_last_for_it(manager: Manager) -> None:
    service_id = create(manager, "web", replicas=1, task_template={"restart_policy": {"delay_ns": 0}})
    [task] = converge(manager, service_id, 1)
    bad = task["node_id"]
    # Five failures there (swarmkit's maxFailures): the next replacement goes to another node,
    # although that node is as empty as the others.
    for _ in range(5):
        report(manager, task, "failed", exit_code=1)

        def replacement() -> Task | None:
            fresh = [t for t in live(manager, service_id) if t["status"]["state"] == "assigned"]
            return fresh[0] if fresh else None
        task = wait_for(replacement, SETTLE, what="the replacement assigned")
        if task["node_id"] != bad:
            break
        report(manager, task, "running")
    assert task["node_id"] != bad


class Watched(Orchestrator):
    """An orchestrator that tells when its first pass (a new leader's full pass) is done."""

    def __init__(self, manager: Manager) -> None:
        super().__init__(manager)
        self.first_pass = threading.Event()

    def step(self, full: bool, events: list[Any]) -> float | None:
        again = super().step(full, events)
        self.first_pass.set()
        return again


def test_a_new_orchestrator_continues_an_update_where_the_old_one_left(manager: Manager) -> None:
    service_id = create(manager, "web", replicas=3, update_config={"monitor_ns": 0})
    before = {t["id"] for t in converge(manager, service_id, 3)}
    update(manager, service_id, args=["2000"])
    wait_for(lambda: len([t for t in live(manager, service_id) if t["id"] not in before]) == 1, SETTLE,
             what="the first slot replaced")
    # The leader changes while the first new task is not running yet: the next leader's
    # orchestrator waits for it, as the old one would have, before replacing another slot.
    [old] = [c for c in manager.leadership._components if isinstance(c, Orchestrator)]
    old.stop()
    successor = Watched(manager)
    successor.start()
    try:
        assert successor.first_pass.wait(SETTLE)
        assert update_status(manager, service_id).get("state") == "updating"
        assert len([t for t in live(manager, service_id) if t["id"] not in before]) == 1

        def updated() -> list[Task] | None:
            now = converge(manager, service_id, 3)
            return now if all(t["spec"]["args"] == ["2000"] for t in now) else None
        wait_for(updated, SETTLE, what="every slot replaced by the new orchestrator")
        wait_for(lambda: update_status(manager, service_id).get("state") == "completed", SETTLE,
                 what="the update completed")
    finally:
        successor.stop()
