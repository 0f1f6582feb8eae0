"""Assignments follow the store's task events: which tasks a node is sent, full set then numbered
changes, and whose sessions wake (status reports wake nobody)."""

from __future__ import annotations

from typing import Any

from swarmd.manager.dispatcher.assignments import SessionAssignments
from swarmd.manager.dispatcher.view import ALL, ViewKeeper
from swarmd.store.machine import StateMachine, encode_op
from tests.servicelib import raw_spec
from tests.unit.test_session_view import apply, keeper, worker

W1, W2 = worker(1)["id"], worker(2)["id"]


def setup() -> tuple[StateMachine, ViewKeeper]:
    machine, k = keeper()
    apply(machine, "add_node", node=worker(1))
    apply(machine, "add_node", node=worker(2))
    apply(machine, "create_service", id="svc", spec=raw_spec("web", replicas=3), now="t")
    apply(machine, "create_tasks", now="t", tasks=[{"id": f"t{i}", "service_id": "svc", "slot": i}
                                                     for i in (1, 2, 3)])
    k.update()
    return machine, k


def assign(machine: StateMachine, task_id: str, node_id: str) -> None:
    apply(machine, "update_tasks", now="t", updates=[{"id": task_id, "node_id": node_id, "status": {
        "state": "assigned", "message": "scheduler assigned task to node"}}])


def report(machine: StateMachine, node_id: str, task_id: str, state: str, **fields: Any) -> dict[str, Any]:
    result = machine.apply(encode_op("report_task_status", node_id=node_id, now="t",
                               updates=[{"id": task_id, "status": {"state": state, **fields}}]))
    assert result.get("ok"), result
    return result


def ids(k: ViewKeeper, node_id: str) -> set[str]:
    assert k.view is not None
    return set(k.view.tasks_of(node_id))


def test_a_node_is_sent_its_tasks_from_assigned_on() -> None:
    machine, k = setup()
    assert ids(k, W1) == set()  # new tasks, unscheduled: nobody's
    assign(machine, "t1", W1)
    assign(machine, "t2", W2)
    assert k.update() == {W1, W2}
    assert ids(k, W1) == {"t1"} and ids(k, W2) == {"t2"}
    assert k.view is not None
    task = k.view.tasks_of(W1)["t1"].task
    assert (task.service_name, task.slot, task.desired_state, task.spec.program, list(task.spec.args)) == (
        "web", 1, "running", "/bin/sleep", ["1000"])


def test_status_reports_wake_nobody_and_a_desired_state_change_wakes_the_node() -> None:
    machine, k = setup()
    assign(machine, "t1", W1)
    k.update()
    for state in ("accepted", "preparing", "starting", "running"):
        report(machine, W1, "t1", state)
        assert k.update() == frozenset()
    apply(machine, "update_tasks", now="t", updates=[{"id": "t1", "desired_state": "shutdown"}])
    assert k.update() == {W1}
    assert k.view is not None and k.view.tasks_of(W1)["t1"].task.desired_state == "shutdown"


def test_a_stopped_task_stays_in_the_set_until_the_store_deletes_it() -> None:
    machine, k = setup()
    assign(machine, "t1", W1)
    report(machine, W1, "t1", "running")
    apply(machine, "update_tasks", now="t", updates=[{"id": "t1", "desired_state": "shutdown"}])
    report(machine, W1, "t1", "shutdown")
    k.update()
    assert ids(k, W1) == {"t1"}  # its state and logs stay on the node, as Docker keeps the container
    apply(machine, "remove_tasks", now="t", ids=["t1"])
    assert k.update() == {W1}
    assert ids(k, W1) == set()


def test_a_session_gets_the_full_set_then_numbered_changes() -> None:
    machine, k = setup()
    assign(machine, "t1", W1)
    assign(machine, "t2", W1)
    k.update()
    assert k.view is not None
    session = SessionAssignments()
    first = session.next(k.view.tasks_of(W1))
    assert first is not None and first.full and first.sequence == 1
    assert sorted(t.id for t in first.tasks) == ["t1", "t2"] and not first.removed
    assert session.next(k.view.tasks_of(W1)) is None  # nothing new: nothing sent

    report(machine, W1, "t1", "running")
    k.update()
    assert session.next(k.view.tasks_of(W1)) is None  # its own report is no news to the node

    assign(machine, "t3", W1)
    apply(machine, "update_tasks", now="t", updates=[{"id": "t1", "desired_state": "shutdown"}])
    apply(machine, "remove_tasks", now="t", ids=["t2"])
    k.update()
    second = session.next(k.view.tasks_of(W1))
    assert second is not None and not second.full and second.sequence == 2
    assert sorted((t.id, t.desired_state) for t in second.tasks) == [("t1", "shutdown"), ("t3", "running")]
    assert list(second.removed) == ["t2"]


def test_an_empty_node_still_gets_a_full_set_and_a_new_session_starts_over() -> None:
    machine, k = setup()
    assert k.view is not None
    session = SessionAssignments()
    first = session.next(k.view.tasks_of(W1))
    assert first is not None and first.full and first.sequence == 1 and not first.tasks
    assign(machine, "t1", W1)
    k.update()
    assert session.next(k.view.tasks_of(W1)) is not None
    again = SessionAssignments().next(k.view.tasks_of(W1))  # a reconnect, maybe to a new leader
    assert again is not None and again.full and again.sequence == 1 and [t.id for t in again.tasks] == ["t1"]


def test_a_reload_reads_the_tasks_again() -> None:
    machine, k = setup()
    assign(machine, "t1", W1)
    k.close()  # a dropped watch: the next round reads everything
    assert k.update() == ALL
    assert ids(k, W1) == {"t1"}
    fresh = ViewKeeper(machine, lambda: None)
    fresh.update()
    assert ids(fresh, W1) == {"t1"}


def test_a_removed_service_tells_its_tasks_to_go() -> None:
    machine, k = setup()
    assign(machine, "t1", W1)
    report(machine, W1, "t1", "running")
    k.update()
    apply(machine, "remove_service", id="svc", now="t")
    assert k.update() == {W1}
    assert k.view is not None and k.view.tasks_of(W1)["t1"].task.desired_state == "remove"
