"""The scheduler: filters and their explanations, spread, batch placement, and its plan applied
to a real store."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from swarmd.manager.scheduler import spread
from swarmd.manager.scheduler.filters import NodeInfo, Pipeline
from swarmd.manager.scheduler.scheduler import ASSIGNED_MESSAGE, CONFIRMED_MESSAGE, PENDING_MESSAGE, Plan, schedule
from swarmd.store.objects import Service, Task
from tests.servicelib import GIB, SECOND, apply, machine, node, service, task

NOW = "2026-01-01T00:01:00Z"


def run(nodes: list[dict[str, Any]], tasks: list[Task], *services: Service, **kw: Any) -> Plan:
    return schedule(nodes, tasks, {s["id"]: s for s in services}, NOW, **kw)


def pending(svc: Service, count: int, start: int = 1, prefix: str = "t") -> list[Task]:
    return [task(svc, f"{prefix}{i:02d}", slot=i) for i in range(start, start + count)]


def running_on(t: Task, node_id: str) -> Task:
    return {**t, "node_id": node_id, "status": {**t["status"], "state": "running"}}


def three_nodes(**fields: Any) -> list[dict[str, Any]]:
    return [node(f"n{i}", **fields) for i in range(3)]


# -- explanations ----------------------------------------------------------------------------------

def test_a_constraint_no_node_satisfies_is_explained_with_the_node_count() -> None:
    svc = service(task_template={"placement": {"constraints": ["node.labels.zone==x"]}})
    plan = run(three_nodes(), pending(svc, 1), svc)
    assert plan.unschedulable == {"t01": "no suitable node (scheduling constraints not satisfied on 3 nodes)"}
    assert plan.assigned == {}
    one = run([node("n0")], pending(svc, 1), svc)
    assert one.unschedulable == {"t01": "no suitable node (scheduling constraints not satisfied on 1 node)"}


def test_a_reservation_no_node_has_is_insufficient_resources() -> None:
    svc = service(task_template={"resources": {"reservations": {"memory_bytes": 500 * GIB}}})
    plan = run(three_nodes(), pending(svc, 1), svc)
    assert plan.unschedulable == {"t01": "no suitable node (insufficient resources on 3 nodes)"}
    cpus = service("cpu", task_template={"resources": {"reservations": {"nano_cpus": 64 * SECOND}}})
    assert run([node("n0")], pending(cpus, 1), cpus).unschedulable == \
        {"t01": "no suitable node (insufficient resources on 1 node)"}


def test_explanations_list_most_failures_first_and_ties_in_filter_order() -> None:
    svc = service(task_template={"placement": {"constraints": ["node.labels.zone==a"]},
                                 "resources": {"reservations": {"memory_bytes": 4 * GIB}}})
    nodes = [node("n0", state="down"), node("n1", labels={"zone": "a"}, memory_bytes=GIB),
             node("n2"), node("n3"), node("n4", availability="drain"), node("n5")]
    assert run(nodes, pending(svc, 1), svc).unschedulable == {"t01": (
        "no suitable node (scheduling constraints not satisfied on 3 nodes; 2 nodes not available for new tasks; "
        "insufficient resources on 1 node)")}
    tie = [node("n0", state="down"), node("n1", labels={"zone": "a"}, memory_bytes=GIB), node("n2")]
    assert run(tie, pending(svc, 1), svc).unschedulable == {"t01": (
        "no suitable node (1 node not available for new tasks; insufficient resources on 1 node; "
        "scheduling constraints not satisfied on 1 node)")}


def test_no_node_at_all_is_no_suitable_node_without_a_reason() -> None:
    svc = service()
    assert run([], pending(svc, 1), svc).unschedulable == {"t01": "no suitable node"}


def test_a_node_that_fits_resets_the_count_as_in_swarmkit() -> None:
    svc = service(task_template={"resources": {"reservations": {"memory_bytes": 3 * GIB}}})
    pipeline = Pipeline()
    pipeline.set_task(pending(svc, 1)[0])
    assert not pipeline.process(NodeInfo.of(node("a", state="down")))
    assert pipeline.explain() == "1 node not available for new tasks"
    assert pipeline.process(NodeInfo.of(node("b")))
    assert pipeline.explain() == ""


def test_max_replicas_per_node_fills_each_node_once_and_says_why_the_rest_waits() -> None:
    svc = service(replicas=4, task_template={"placement": {"max_replicas": 1}})
    plan = run(three_nodes(), pending(svc, 4), svc)
    assert sorted(plan.assigned.values()) == ["n0", "n1", "n2"]
    assert plan.unschedulable == {"t04": "no suitable node (max replicas per node limit exceed)"}


def test_reservations_fill_nodes_until_they_are_full() -> None:
    svc = service(replicas=7, task_template={"resources": {"reservations": {"memory_bytes": 3 * GIB}}})
    plan = run(three_nodes(), pending(svc, 7), svc)   # 8 GiB each: two tasks per node
    assert Counter(plan.assigned.values()) == {"n0": 2, "n1": 2, "n2": 2}
    assert plan.unschedulable == {"t07": "no suitable node (insufficient resources on 3 nodes)"}


def test_running_tasks_hold_their_reservations_and_finished_ones_do_not() -> None:
    svc = service(task_template={"resources": {"reservations": {"memory_bytes": 6 * GIB}}})
    running = task(svc, "old1", slot=1, node_id="n0", state="running")
    done = task(svc, "old2", slot=2, node_id="n1", state="failed", desired="shutdown")
    plan = run([node("n0"), node("n1")], [running, done, *pending(svc, 2, start=3)], svc)
    assert plan.assigned == {"t03": "n1"}
    # swarmkit counts the nodes that failed since the last one that fitted: n0 failed before n1
    # fitted, so only n1, full once it got t03, is told about.
    assert plan.unschedulable == {"t04": "no suitable node (insufficient resources on 1 node)"}


# -- spread ----------------------------------------------------------------------------------------

def test_tasks_spread_evenly_over_empty_nodes() -> None:
    svc = service(replicas=6)
    plan = run(three_nodes(), pending(svc, 6), svc)
    assert Counter(plan.assigned.values()) == {"n0": 2, "n1": 2, "n2": 2}
    assert plan.unschedulable == {}


def test_the_node_with_fewest_tasks_of_the_service_first_then_fewest_in_all() -> None:
    web, other = service("web"), service("other", service_id="svc-other")
    existing = [task(web, "w1", slot=1, node_id="n0", state="running"),
                task(other, "o1", slot=1, node_id="n1", state="running"),
                task(other, "o2", slot=2, node_id="n1", state="running")]
    plan = run(three_nodes(), [*existing, *pending(web, 1, start=5)], web, other)
    assert plan.assigned == {"t05": "n2"}      # no task of web, no task at all
    plan = run([node("n0"), node("n1")], [*existing, *pending(web, 1, start=5)], web, other)
    assert plan.assigned == {"t05": "n1"}      # no task of web there, though more tasks in all


def test_a_task_desired_to_stop_does_not_count_against_its_node() -> None:
    web = service()
    stopping = task(web, "w1", slot=1, node_id="n0", state="running", desired="shutdown")
    assert run([node("n0"), node("n1")], [stopping, *pending(web, 1, start=2)], web).assigned == {"t02": "n0"}


def test_swarmkits_scale_up_after_an_uneven_start() -> None:
    """swarmkit's TestHA: 18 tasks on 5 nodes, then a second service fills the emptiest, then
    three more of the first land on three different nodes."""
    s1, s2 = service("s1"), service("s2", service_id="svc-s2")
    nodes = [node(f"id{i}") for i in range(1, 6)]
    first = run(nodes, pending(s1, 18), s1)
    assert sorted(Counter(first.assigned.values()).values()) == [3, 3, 4, 4, 4]
    placed = [running_on(t, first.assigned[t["id"]]) for t in pending(s1, 18)]
    second = run(nodes, [*placed, *pending(s2, 2, prefix="u")], s1, s2)
    light = {n for n, c in Counter(first.assigned.values()).items() if c == 3}
    assert set(second.assigned.values()) == light
    placed += [running_on(t, second.assigned[t["id"]]) for t in pending(s2, 2, prefix="u")]
    third = run(nodes, [*placed, *pending(s1, 3, start=19)], s1, s2)
    assert len(set(third.assigned.values())) == 3 and light <= set(third.assigned.values())


def test_a_node_where_the_service_keeps_failing_is_tried_last() -> None:
    web = service()
    failures = spread.FailureHistory()
    for i in range(spread.MAX_FAILURES):
        failures.record("n0", web["id"], web["spec_version"], i * SECOND)
    plan = run([node("n0"), node("n1")], pending(web, 1), web, now_ns=10 * SECOND, failures=failures)
    assert plan.assigned == {"t01": "n1"}
    later = run([node("n0"), node("n1")], pending(web, 1), web, now_ns=spread.FAILURE_WINDOW_NS + 5 * SECOND,
                failures=failures)
    assert later.assigned == {"t01": "n0"}   # the failures are old now: back to the node ID order
    other_version = service(spec_version=99)
    assert run([node("n0"), node("n1")], pending(other_version, 1), other_version, now_ns=10 * SECOND,
               failures=failures).assigned == {"t01": "n0"}


def test_the_same_input_in_any_order_gives_the_same_plan() -> None:
    svc = service(replicas=10, task_template={"resources": {"reservations": {"memory_bytes": 2 * GIB}}})
    nodes = [node(f"n{i}", memory_bytes=(i + 2) * GIB) for i in range(6)]
    tasks = pending(svc, 10)
    expected = run(nodes, tasks, svc)
    for seed in range(5):
        rng = random.Random(seed)
        shuffled_nodes, shuffled_tasks = nodes[:], tasks[:]
        rng.shuffle(shuffled_nodes)
        rng.shuffle(shuffled_tasks)
        assert run(shuffled_nodes, shuffled_tasks, svc) == expected


# -- preassigned tasks (global services) -----------------------------------------------------------

def test_a_task_made_for_a_node_is_only_checked_against_it() -> None:
    glob = service("glob", mode="global", task_template={"resources": {"reservations": {"memory_bytes": 6 * GIB}}})
    fits = task(glob, "g0", slot=0, node_id="n0", state="pending")
    small = task(glob, "g1", slot=0, node_id="n1", state="pending")
    plan = run([node("n0"), node("n1", memory_bytes=GIB)], [fits, small], glob)
    assert plan.assigned == {"g0": "n0"}
    assert plan.unschedulable == {"g1": "insufficient resources on 1 node"}
    confirmed = next(u for u in plan.updates if u["id"] == "g0")
    assert confirmed["status"]["message"] == CONFIRMED_MESSAGE and "node_id" not in confirmed


# -- the plan's writes -----------------------------------------------------------------------------

def test_the_plan_writes_each_decision_once_with_the_versions_it_was_made_on() -> None:
    svc = service(task_template={"placement": {"constraints": ["node.role==manager"]}})
    plan = run([node("n0", version=7)], [task(svc, "t1", slot=1)], svc)
    assert plan.updates == [{"id": "t1", "version": 1, "status": {
        "state": "pending", "timestamp": NOW, "message": PENDING_MESSAGE,
        "err": "no suitable node (scheduling constraints not satisfied on 1 node)", "exit_code": 0, "pid": 0,
        "container_id": ""}}]
    waiting = task(svc, "t1", slot=1, state="pending", message=PENDING_MESSAGE,
                   err="no suitable node (scheduling constraints not satisfied on 1 node)")
    assert run([node("n0", version=7)], [waiting], svc).updates == []   # nothing new to say
    ok = service()
    (item,) = run([node("n0", version=7)], [task(ok, "t2", slot=1)], ok).updates
    assert (item["node_id"], item["node_version"], item["status"]["state"], item["status"]["message"]) == \
        ("n0", 7, "assigned", ASSIGNED_MESSAGE)


def test_unassigned_tasks_that_will_never_run_are_shut_down() -> None:
    svc = service()
    plan = run([node("n0")], [task(svc, "t1", slot=1, desired="remove"),
                              task(svc, "t2", slot=2, state="pending", desired="shutdown")], svc)
    assert plan.shutdown == ["t1", "t2"] and plan.assigned == {} and plan.unschedulable == {}
    assert {u["status"]["state"] for u in plan.updates} == {"shutdown"}


def test_a_removed_services_tasks_get_no_explanation() -> None:
    svc = service(task_template={"placement": {"constraints": ["node.role==manager"]}})
    assert run([node("n0")], [task(svc, "t1", slot=1)]).updates == []


def test_the_plan_applies_to_the_store_and_a_second_run_has_nothing_to_do() -> None:
    m = machine(node("n0"), node("n1"), node("n2", labels={"zone": "x"}))
    assert apply(m, "create_service", id="web", spec={"name": "web", "replicas": 4,
                                                      "task_template": {"program": "/bin/sleep"}})["ok"]
    assert apply(m, "create_service", id="zoned", spec={"name": "zoned", "task_template": {
        "program": "/bin/sleep", "placement": {"constraints": ["node.labels.zone==y"]}}})["ok"]
    items = [{"id": f"w{i}", "service_id": "web", "slot": i} for i in range(1, 5)]
    assert apply(m, "create_tasks", tasks=[*items, {"id": "z1", "service_id": "zoned", "slot": 1}])["ok"]

    def plan() -> Plan:
        return m.read(lambda s: schedule(s["nodes"].values(), s["tasks"].values(), s["services"], NOW))

    first = plan()
    r = apply(m, "update_tasks", updates=first.updates, now=NOW)
    assert r["ok"] and r["refused"] == {}
    tasks = m.read(lambda s: dict(s["tasks"].items()))
    assert Counter(tasks[f"w{i}"]["node_id"] for i in range(1, 5)) == {"n0": 2, "n1": 1, "n2": 1}
    assert tasks["z1"]["status"]["state"] == "pending"
    assert tasks["z1"]["status"]["err"] == "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    assert plan().updates == []
    # A decision made before a node changed is refused at apply, not applied to the new node.
    assert apply(m, "create_tasks", tasks=[{"id": "w5", "service_id": "web", "slot": 5}])["ok"]
    late = plan()
    assert apply(m, "update_node", id=late.assigned["w5"], availability="drain", now=NOW)["ok"]
    assert apply(m, "update_tasks", updates=late.updates, now=NOW)["refused"] == \
        {"w5": "rpc error: code = Unknown desc = update out of sequence"}
