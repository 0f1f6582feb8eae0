"""The orchestrators' decisions: replicated slots, global placement, restarts, the reaper, and
their plans applied to a real store."""

from __future__ import annotations

import itertools
from typing import Any

from swarmd.manager.orchestrator import global_, reaper, replicated
from swarmd.manager.orchestrator.restart import OLD_TASK_TIMEOUT_NS, Restarts
from swarmd.manager.orchestrator.tasks import Plan
from swarmd.store.objects import Service, Task
from tests.servicelib import SECOND, T0, apply, machine, node, propose_plan, service, task

STOPPED_AT = "2026-01-01T00:00:10Z"
T10 = 10 * SECOND + 1_767_225_600 * SECOND   # STOPPED_AT in nanoseconds


def ids(prefix: str = "new") -> Any:
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


def slots_created(plan: Plan) -> list[int]:
    return [item["slot"] for item in plan.create]


def desired(plan: Plan) -> dict[str, str]:
    return {item["id"]: item["desired_state"] for item in plan.desired}


def at(seconds: float) -> str:
    whole, frac = divmod(int(seconds * 1_000_000_000), 1_000_000_000)
    return f"2026-01-01T00:{whole // 60:02d}:{whole % 60:02d}.{frac:09d}Z"


def ns(seconds: float) -> int:
    return 1_767_225_600 * SECOND + int(seconds * SECOND)


# -- replicated ------------------------------------------------------------------------------------

def test_scaling_up_fills_the_lowest_free_slots() -> None:
    svc = service(replicas=4)
    plan = replicated.reconcile(svc, [task(svc, "a", slot=2, state="running")], Restarts(), ids())
    assert slots_created(plan) == [1, 3, 4]
    assert [i["desired_state"] for i in plan.create] == ["running"] * 3
    assert [[t["id"] for t in slot] for slot in plan.update] == [["a"]]
    assert replicated.reconcile(svc, [], Restarts(), ids()).create[0] == \
        {"id": "new1", "service_id": svc["id"], "slot": 1, "node_id": "", "desired_state": "running"}


def test_scaling_down_leaves_the_service_balanced_over_its_nodes() -> None:
    svc = service(replicas=2)
    tasks = [task(svc, f"t{i}", slot=i, node_id=n, state="running")
             for i, n in [(1, "n0"), (2, "n0"), (3, "n0"), (4, "n1"), (5, "n2")]]
    plan = replicated.reconcile(svc, tasks, Restarts(), ids())
    assert desired(plan) == {"t5": "remove", "t2": "remove", "t3": "remove"}
    assert [slot[0]["id"] for slot in plan.update] == ["t1", "t4"] and plan.create == []


def test_scaling_down_removes_tasks_that_are_not_running_first_then_the_highest_slots() -> None:
    svc = service(replicas=2)
    tasks = [task(svc, "t1", slot=1, node_id="n0", state="starting"),
             task(svc, "t2", slot=2, node_id="n1", state="running"),
             task(svc, "t3", slot=3, node_id="n2", state="running")]
    assert desired(replicated.reconcile(svc, tasks, Restarts(), ids())) == {"t1": "remove"}
    svc1 = service(replicas=1)
    assert desired(replicated.reconcile(svc1, tasks[1:], Restarts(), ids())) == {"t3": "remove"}


def test_a_slot_whose_task_stopped_for_good_stays_a_slot_and_dead_slots_are_deleted() -> None:
    none = service(replicas=1, task_template={"restart_policy": {"condition": "none"}})
    finished = task(none, "t1", slot=1, node_id="n0", state="failed", desired="shutdown")
    plan = replicated.reconcile(none, [finished], Restarts(), ids())
    assert plan.create == [] and plan.delete == [] and plan.update == [[finished]]
    anyway = service(replicas=1)
    leftover = task(anyway, "t2", slot=2, node_id="n0", state="shutdown", desired="remove")
    running = task(anyway, "t1", slot=1, node_id="n0", state="running")
    plan = replicated.reconcile(anyway, [running, leftover], Restarts(), ids())
    assert plan.delete == ["t2"] and plan.create == []


def test_tasks_to_restart_stopped_or_lost_their_node() -> None:
    svc = service()
    nodes = {"ok": node("ok"), "down": node("down", state="down"), "drained": node("drained", availability="drain")}
    tasks = [task(svc, "failed", node_id="ok", state="failed"),
             task(svc, "running", node_id="ok", state="running"),
             task(svc, "on-down", node_id="down", state="running"),
             task(svc, "on-drained", node_id="drained", state="running"),
             task(svc, "on-gone", node_id="gone", state="running"),
             task(svc, "unassigned", state="pending"),
             task(svc, "told-to-stop", node_id="ok", state="failed", desired="shutdown")]
    assert [t["id"] for t in replicated.to_restart(tasks, nodes)] == ["failed", "on-down", "on-drained", "on-gone"]


# -- restarts --------------------------------------------------------------------------------------

def failed(svc: Service, task_id: str = "t1", stopped: str = STOPPED_AT, state: str = "failed", **kw: Any) -> Task:
    return task(svc, task_id, slot=1, node_id="n0", state=state, timestamp=stopped, **kw)


def test_a_failed_task_is_shut_down_and_replaced_in_its_slot_after_the_delay() -> None:
    svc = service()
    restarts = Restarts()
    old = failed(svc)
    plan = restarts.restart(old, svc, node("n0"), ns(10), ids())
    assert desired(plan) == {"t1": "shutdown"}
    assert plan.create == [{"id": "new1", "service_id": svc["id"], "slot": 1, "node_id": "",
                            "desired_state": "ready"}]
    replacement = task(svc, "new1", slot=1, desired="ready")
    tasks = {"t1": old, "new1": replacement}
    assert restarts.due(ns(14.9), tasks, {}).start == []
    assert restarts.next_wakeup_ns() == ns(15)
    due = restarts.due(ns(15), tasks, {})
    assert due.start == [{"id": "new1", "version": 1, "desired_state": "running"}] and due.restart == []
    assert restarts.next_wakeup_ns() is None


def test_the_restart_condition() -> None:
    for condition, state, replaced in [("any", "complete", True), ("any", "failed", True),
                                       ("on-failure", "complete", False), ("on-failure", "failed", True),
                                       ("on-failure", "rejected", True), ("none", "failed", False)]:
        svc = service(task_template={"restart_policy": {"condition": condition}})
        plan = Restarts().restart(failed(svc, state=state), svc, node("n0"), ns(10), ids())
        assert desired(plan) == {"t1": "shutdown"}
        assert bool(plan.create) is replaced, (condition, state)


def test_max_attempts_count_restarts_of_the_slot_at_its_spec_version() -> None:
    svc = service(task_template={"restart_policy": {"condition": "on-failure", "max_attempts": 2}})
    restarts = Restarts()
    made = [restarts.restart(failed(svc, f"t{i}"), svc, node("n0"), ns(10 + i), ids(f"r{i}-")) for i in range(3)]
    assert [bool(p.create) for p in made] == [True, True, False]
    updated = service(spec_version=11, task_template={"restart_policy": {"condition": "on-failure",
                                                                         "max_attempts": 2}})
    assert restarts.restart(failed(updated, "t9"), updated, node("n0"), ns(20), ids()).create


def test_max_attempts_within_a_window_count_only_recent_restarts() -> None:
    svc = service(task_template={"restart_policy": {"max_attempts": 1, "window_ns": 10 * SECOND}})
    restarts = Restarts()
    assert restarts.restart(failed(svc, "t1", stopped=at(0)), svc, node("n0"), ns(0), ids("a")).create
    assert not restarts.restart(failed(svc, "t2", stopped=at(5)), svc, node("n0"), ns(5), ids("b")).create
    assert restarts.restart(failed(svc, "t3", stopped=at(30)), svc, node("n0"), ns(30), ids("c")).create


def test_no_delay_on_a_drained_node_and_no_wait_for_a_task_on_a_down_one() -> None:
    svc = service()
    restarts = Restarts()
    running = task(svc, "t1", slot=1, node_id="n0", state="running")
    plan = restarts.restart(running, svc, node("n0", availability="drain"), ns(0), ids("d"))
    replacement = task(svc, plan.create[0]["id"], slot=1, desired="ready")
    tasks = {"t1": running, replacement["id"]: replacement}
    nodes = {"n0": node("n0", availability="drain")}
    assert restarts.due(ns(0), tasks, nodes).start == []          # the old task still runs
    assert restarts.next_wakeup_ns() == ns(0) + OLD_TASK_TIMEOUT_NS
    tasks["t1"] = {**running, "status": {**running["status"], "state": "shutdown"}}
    assert [s["id"] for s in restarts.due(ns(1), tasks, nodes).start] == ["d1"]
    down = Restarts()
    plan = down.restart(running, svc, node("n0", state="down"), ns(0), ids("x"))
    replacement = task(svc, "x1", slot=1, desired="ready")
    assert down.due(ns(5), {"t1": running, "x1": replacement}, {"n0": node("n0", state="down")}).start
    stuck = Restarts()
    stuck.restart(running, svc, node("n0"), ns(0), ids("s"))
    waiting = {"t1": running, "s1": task(svc, "s1", slot=1, desired="ready")}
    assert stuck.due(ns(30), waiting, {"n0": node("n0")}).start == []
    assert stuck.due(ns(0) + OLD_TASK_TIMEOUT_NS, waiting, {"n0": node("n0")}).start   # waited long enough


def test_a_replacement_that_fails_before_its_start_is_restarted_once_its_delay_is_over() -> None:
    svc = service()
    restarts = Restarts()
    restarts.restart(failed(svc), svc, node("n0"), ns(10), ids("r"))
    rejected = task(svc, "r1", slot=1, node_id="n0", state="rejected", desired="ready", timestamp=at(11))
    assert restarts.restart(rejected, svc, node("n0"), ns(11), ids("x")) == Plan()
    due = restarts.due(ns(15), {"r1": rejected}, {"n0": node("n0")})
    assert due.start == [{"id": "r1", "version": 1, "desired_state": "running"}] and due.restart == ["r1"]
    again: Task = {**rejected, "desired_state": "running"}
    assert restarts.restart(again, svc, node("n0"), ns(15), ids("x")).create   # the next attempt


def test_a_new_leader_rebuilds_restart_counts_and_pending_starts_from_the_store() -> None:
    svc = service(task_template={"restart_policy": {"max_attempts": 2}})
    history = [task(svc, f"t{i}", slot=1, node_id="n0", state="failed", desired="shutdown", created_at=at(i))
               for i in range(3)]
    waiting = task(svc, "t3", slot=1, desired="ready", state="new", created_at=at(3), timestamp=at(3))
    restarts = Restarts()
    starts = restarts.rebuild([*history, waiting], {svc["id"]: svc}, ns(4))
    assert starts == [] and restarts.delayed("t3")
    assert not restarts.should_restart(failed(svc, "t4"), svc)   # t1, t2, t3 were restarts: 3 > 2
    assert restarts.rebuild([waiting], {svc["id"]: svc}, ns(60)) == \
        [{"id": "t3", "version": 1, "desired_state": "running"}]


# -- global ----------------------------------------------------------------------------------------

def test_one_task_per_eligible_node() -> None:
    glob = service("glob", mode="global")
    nodes = [node("a"), node("b"), node("paused", availability="pause"), node("drained", availability="drain"),
             node("down", state="down")]
    tasks = [task(glob, "on-b", slot=0, node_id="b", state="running"),
             task(glob, "on-drained", slot=0, node_id="drained", state="running"),
             task(glob, "on-down", slot=0, node_id="down", state="running"),
             task(glob, "on-gone", slot=0, node_id="gone", state="running")]
    plan = global_.reconcile(glob, nodes, tasks, Restarts(), ids())
    assert plan.create == [{"id": "new1", "service_id": glob["id"], "slot": 0, "node_id": "a",
                            "desired_state": "running"}]
    assert desired(plan) == {"on-drained": "shutdown", "on-down": "shutdown", "on-gone": "shutdown"}
    assert [[t["id"] for t in slot] for slot in plan.update] == [["on-b"]]


def test_a_node_that_no_longer_matches_the_constraints_loses_its_task() -> None:
    glob = service("glob", mode="global", task_template={"placement": {"constraints": ["node.labels.gpu==yes"]}})
    nodes = [node("a", labels={"gpu": "yes"}), node("b")]
    plan = global_.reconcile(glob, nodes, [task(glob, "on-b", slot=0, node_id="b", state="running")], Restarts(), ids())
    assert [i["node_id"] for i in plan.create] == ["a"] and desired(plan) == {"on-b": "shutdown"}


def test_a_failed_global_task_is_replaced_on_its_node_or_shut_down_on_a_paused_one() -> None:
    glob = service("glob", mode="global")
    dead = task(glob, "g1", slot=0, node_id="a", state="failed", timestamp=STOPPED_AT)
    plan = global_.restart_or_shutdown(dead, glob, node("a"), Restarts(), ns(10), ids())
    assert plan.create == [{"id": "new1", "service_id": glob["id"], "slot": 0, "node_id": "a",
                            "desired_state": "ready"}]
    paused = global_.restart_or_shutdown(dead, glob, node("a", availability="pause"), Restarts(), ns(10), ids())
    assert paused.create == [] and desired(paused) == {"g1": "shutdown"}
    assert global_.restart_or_shutdown(dead, glob, node("a", state="down"), Restarts(), ns(10), ids()) == Plan()
    assert [t["id"] for t in global_.to_restart([dead, task(glob, "g2", slot=0, node_id="b", state="running")])] == \
        ["g1"]


# -- reaper ----------------------------------------------------------------------------------------

def test_history_beyond_the_limit_goes_oldest_first_and_never_a_running_task() -> None:
    svc = service()
    tasks = [task(svc, f"old{i}", slot=1, node_id="n0", state="failed", desired="shutdown", timestamp=at(i))
             for i in range(6)]
    tasks.append(task(svc, "current", slot=1, node_id="n0", state="running", timestamp=at(0)))
    tasks.append(task(svc, "other-slot", slot=2, node_id="n0", state="failed", desired="shutdown"))
    assert reaper.reap({svc["id"]: svc}, tasks, 5) == ["old0", "old1"]
    assert reaper.reap({svc["id"]: svc}, tasks, -1) == []
    assert reaper.reap({svc["id"]: svc}, tasks, 0) == [*(f"old{i}" for i in range(6)), "other-slot"]


def test_max_attempts_keep_their_history_whatever_the_limit() -> None:
    svc = service(task_template={"restart_policy": {"max_attempts": 3}})
    tasks = [task(svc, f"old{i}", slot=1, state="failed", desired="shutdown", timestamp=at(i)) for i in range(6)]
    assert reaper.reap({svc["id"]: svc}, tasks, 1) == ["old0", "old1"]
    assert reaper.reap({svc["id"]: svc}, tasks, -1) == ["old0", "old1"]


def test_tasks_told_to_go_are_deleted_once_stopped_or_if_never_placed() -> None:
    svc = service()
    tasks = [task(svc, "stopped", slot=1, node_id="n0", state="shutdown", desired="remove"),
             task(svc, "still-running", slot=2, node_id="n0", state="running", desired="remove"),
             task(svc, "never-placed", slot=3, state="pending", desired="remove")]
    assert reaper.reap({svc["id"]: svc}, tasks, 5) == ["never-placed", "stopped"]
    assert reaper.reap({}, tasks, 5) == ["never-placed", "stopped"]   # the service is gone


def test_a_global_services_history_is_kept_per_node() -> None:
    glob = service("glob", mode="global")
    tasks = [task(glob, f"{n}{i}", slot=0, node_id=n, state="failed", desired="shutdown", timestamp=at(i))
             for n in ("a", "b") for i in range(3)]
    assert reaper.reap({glob["id"]: glob}, tasks, 2) == ["a0", "b0"]


# -- plans applied to a store ----------------------------------------------------------------------

def test_a_services_life_through_the_store() -> None:
    m = machine(node("n0"), node("n1"))
    assert apply(m, "create_service", id="web", spec={"name": "web", "replicas": 2,
                                                      "task_template": {"program": "/bin/sleep"}})["ok"]
    restarts = Restarts()

    def state() -> tuple[Service, list[Task]]:
        return m.read(lambda s: (s["services"]["web"], [s["tasks"][i] for i in s["tasks"].lookup("service", "web")]))

    svc, tasks = state()
    propose_plan(m, replicated.reconcile(svc, tasks, restarts, ids("a")).ops(T0))
    svc, tasks = state()
    assert sorted(t["slot"] for t in tasks) == [1, 2]
    assert replicated.reconcile(svc, tasks, restarts, ids("b")).ops(T0) == []   # converged
    # Slot 1's task fails on its node: it is replaced in the same slot.
    assert apply(m, "update_tasks", updates=[{"id": "a1", "node_id": "n0", "status": {"state": "assigned"}}])["ok"]
    assert apply(m, "report_task_status", node_id="n0", updates=[{"id": "a1", "status": {
        "state": "failed", "timestamp": STOPPED_AT, "exit_code": 1}}])["refused"] == {}
    svc, tasks = state()
    nodes = m.read(lambda s: dict(s["nodes"].items()))
    (stopped,) = replicated.to_restart(tasks, nodes)
    propose_plan(m, restarts.restart(stopped, svc, nodes["n0"], T10, ids("c")).ops(T0))
    svc, tasks = state()
    by_id = {t["id"]: t for t in tasks}
    assert by_id["a1"]["desired_state"] == "shutdown" and by_id["c1"]["slot"] == 1
    assert by_id["c1"]["desired_state"] == "ready"
    propose_plan(m, [("update_tasks", {"updates": restarts.due(T10 + 5 * SECOND, by_id, nodes).start, "now": T0})])
    assert m.read(lambda s: s["tasks"]["c1"]["desired_state"]) == "running"
    # Scaled to zero, then the stopped tasks are reaped.
    assert apply(m, "update_service", id="web", spec={"name": "web", "replicas": 0,
                                                      "task_template": {"program": "/bin/sleep"}})["ok"]
    svc, tasks = state()
    propose_plan(m, replicated.reconcile(svc, tasks, restarts, ids("d")).ops(T0))
    svc, tasks = state()
    assert {t["desired_state"] for t in tasks} <= {"remove", "shutdown"}
    doomed = reaper.reap({"web": svc}, tasks, 5)
    assert set(doomed) == {"a2", "c1"}   # desired remove and never placed; a1 is history of slot 1
    propose_plan(m, [("remove_tasks", {"ids": doomed, "now": T0})])
    assert [t["id"] for t in state()[1]] == ["a1"]


def test_task_times_are_read_as_rfc3339_and_unreadable_ones_sort_first() -> None:
    from swarmd.manager.orchestrator.tasks import by_time
    from swarmd.timeutil import parse_rfc3339_ns
    assert parse_rfc3339_ns("2026-01-01T00:00:10Z") == T10
    assert parse_rfc3339_ns("2026-01-01T01:00:10.5+01:00") == T10 + SECOND // 2
    assert parse_rfc3339_ns("2026-01-01T00:00:10") is None and parse_rfc3339_ns("2026-02-30T00:00:00Z") is None
    svc = service()
    tasks = [task(svc, "late", timestamp=at(9)), task(svc, "bad", timestamp="yesterday"),
             task(svc, "early", timestamp=at(1), applied_at=at(2)), task(svc, "mid", timestamp=at(5))]
    assert [t["id"] for t in by_time(tasks)] == ["bad", "early", "mid", "late"]


def test_a_dead_slot_keeps_a_task_that_has_not_stopped_on_its_node() -> None:
    svc = service(replicas=1)
    kept = task(svc, "t1", slot=1, node_id="n0", state="running")
    going = task(svc, "t2", slot=2, node_id="n1", state="running", desired="remove")
    never_placed = task(svc, "t3", slot=3, state="pending", desired="remove")
    plan = replicated.reconcile(svc, [kept, going, never_placed], Restarts(), ids())
    assert plan.delete == ["t3"] and plan.create == [] and plan.desired == []
