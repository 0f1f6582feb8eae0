"""The services and tasks tables: each op applied, its refusals, versions, events, indexes and
snapshots."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from swarmd.store import specs, watch
from swarmd.store.machine import OUT_OF_SEQUENCE, StateMachine, encode_op
from swarmd.store.services import MAX_STATUS_ERR, MAX_TASKS_PER_OP, NOT_ASSIGNED_HERE
from tests.servicelib import T0, apply, machine, node, raw_spec
from tests.unit.test_tables import OLD_STATE


def with_service(m: StateMachine, name: str = "web", **fields: Any) -> str:
    r = apply(m, "create_service", id=f"svc-{name}", spec=raw_spec(name, **fields))
    assert r["ok"], r
    return f"svc-{name}"


def read(m: StateMachine, table: str, key: str) -> dict[str, Any]:
    return m.read(lambda s: copy.deepcopy(s[table][key]))  # type: ignore[literal-required]


def lookup(m: StateMachine, table: str, index: str, query: Any) -> list[str]:
    return m.read(lambda s: s[table].lookup(index, query))  # type: ignore[literal-required]


def create_tasks(m: StateMachine, *items: dict[str, Any]) -> dict[str, Any]:
    return apply(m, "create_tasks", tasks=list(items))


# -- services --------------------------------------------------------------------------------------

def test_a_created_service_holds_the_complete_spec_and_its_version() -> None:
    m = machine()
    r = apply(m, "create_service", id="s1", spec=raw_spec("web", replicas=3))
    service = read(m, "services", "s1")
    assert r["ok"] and service["version"] == r["index"] == service["spec_version"]
    spec = service["spec"]
    assert (spec["mode"], spec["replicas"]) == ("replicated", 3)
    assert spec["task_template"]["restart_policy"] == specs.DEFAULT_RESTART_POLICY
    assert spec["update_config"] == spec["rollback_config"] == specs.DEFAULT_UPDATE_CONFIG
    assert spec["task_template"]["stop_grace_period_ns"] == 10 * 1_000_000_000
    assert service["previous_spec"] is None and service["update_status"] is None
    assert lookup(m, "services", "name", "web") == ["s1"]


@pytest.mark.parametrize("second", ["web", "WEB", "Web"])
def test_a_second_service_of_the_same_name_in_any_case_is_refused_with_swarmkits_text(second: str) -> None:
    m = machine()
    with_service(m, "web")
    r = apply(m, "create_service", id="s2", spec=raw_spec(second))
    assert r == {"ok": False, "code": "ALREADY_EXISTS", "message": "rpc error: code = AlreadyExists desc = name "
                 f"conflicts with an existing object: service {second} already exists"}
    assert lookup(m, "services", "name", "web") == ["svc-web"]


def test_a_removed_services_name_is_free_again() -> None:
    m = machine()
    with_service(m, "web")
    assert apply(m, "remove_service", id="svc-web")["ok"]
    assert apply(m, "create_service", id="s2", spec=raw_spec("web"))["ok"]
    assert lookup(m, "services", "name", "web") == ["s2"]


def test_an_update_keeps_the_previous_spec_and_a_stale_one_is_out_of_sequence() -> None:
    m = machine()
    sid = with_service(m, replicas=1)
    v1 = read(m, "services", sid)["version"]
    r = apply(m, "update_service", id=sid, spec=raw_spec(replicas=4), expect={"services": {sid: v1}})
    assert r["ok"]
    service = read(m, "services", sid)
    assert service["spec"]["replicas"] == 4 and service["previous_spec"]["replicas"] == 1
    assert service["spec_version"] == r["index"] and service["previous_spec_version"] == v1
    stale = apply(m, "update_service", id=sid, spec=raw_spec(replicas=5), expect={"services": {sid: v1}})
    assert stale == {"ok": False, "code": "UNKNOWN", "message": OUT_OF_SEQUENCE}
    assert read(m, "services", sid)["spec"]["replicas"] == 4


def test_update_refusals_in_swarmkits_words() -> None:
    m = machine()
    sid = with_service(m)
    assert apply(m, "update_service", id="nope", spec=raw_spec())["message"] == \
        "rpc error: code = NotFound desc = service nope not found"
    assert apply(m, "update_service", id=sid, spec=raw_spec(mode="global"))["message"] == \
        "rpc error: code = Unimplemented desc = service mode change is not allowed"
    assert apply(m, "update_service", id=sid, spec=raw_spec("other"))["message"] == \
        "rpc error: code = Unimplemented desc = renaming services is not supported"
    assert apply(m, "update_service", id=sid, rollback=True)["message"] == \
        f"rpc error: code = FailedPrecondition desc = service {sid} does not have a previous spec"
    assert apply(m, "remove_service", id="nope")["message"] == "rpc error: code = NotFound desc = service nope not found"


def test_a_manual_rollback_swaps_the_specs_and_says_so() -> None:
    m = machine()
    sid = with_service(m, replicas=1)
    first = read(m, "services", sid)["spec_version"]
    assert apply(m, "update_service", id=sid, spec=raw_spec(replicas=2))["ok"]
    second = read(m, "services", sid)["spec_version"]
    assert apply(m, "update_service", id=sid, rollback=True, now="t9")["ok"]
    service = read(m, "services", sid)
    assert (service["spec"]["replicas"], service["spec_version"]) == (1, first)
    assert (service["previous_spec"]["replicas"], service["previous_spec_version"]) == (2, second)
    assert service["update_status"] == {"state": "rollback_started", "message": "manually requested rollback",
                                        "started_at": "t9", "completed_at": ""}


def test_the_updaters_rollback_restores_and_forgets_the_previous_spec() -> None:
    m = machine()
    sid = with_service(m, replicas=1)
    assert apply(m, "update_service", id=sid, spec=raw_spec(replicas=2))["ok"]
    status = {"state": "rollback_started", "message": "update paused due to failure", "started_at": "t1"}
    assert apply(m, "set_update_status", id=sid, update_status=status, rollback=True)["ok"]
    service = read(m, "services", sid)
    assert service["spec"]["replicas"] == 1 and service["previous_spec"] is None
    assert service["update_status"]["state"] == "rollback_started"
    assert not apply(m, "set_update_status", id=sid, update_status={"state": "bogus"})["ok"]


def test_removing_a_service_tells_its_tasks_to_go_in_the_same_change() -> None:
    m = machine()
    sid = with_service(m)
    create_tasks(m, {"id": "t1", "service_id": sid, "slot": 1}, {"id": "t2", "service_id": sid, "slot": 2})
    events = m.events.subscribe()
    r = apply(m, "remove_service", id=sid)
    seen = [(e.table, e.action, e.object["id"], e.version) for e in iter(lambda: events.get(0), None)]
    assert seen == [("services", watch.REMOVE, sid, r["index"]), ("tasks", watch.UPDATE, "t1", r["index"]),
                    ("tasks", watch.UPDATE, "t2", r["index"])]
    assert read(m, "tasks", "t1")["desired_state"] == "remove"
    assert lookup(m, "tasks", "desired", "remove") == ["t1", "t2"]


def test_apply_checks_the_spec_again_whatever_the_proposer_checked() -> None:
    m = machine()
    huge = raw_spec(task_template={"args": ["x" * 1000] * 100})
    r = apply(m, "create_service", id="s1", spec=huge)
    assert not r["ok"] and r["message"] == "invalid service spec: args take 100000 bytes, at most 32768"
    assert not apply(m, "create_service", id="s1", spec=raw_spec(replicas=-1))["ok"]
    assert not apply(m, "create_service", id="s1", spec={**raw_spec(), "extra": 1})["ok"]
    assert not apply(m, "create_service", id="../x", spec=raw_spec())["ok"]
    assert m.read(lambda s: len(s["services"])) == 0


# -- tasks -----------------------------------------------------------------------------------------

def test_tasks_are_made_from_their_services_current_spec() -> None:
    m = machine()
    sid = with_service(m, replicas=2, task_template={"env": ["A=1"]})
    assert apply(m, "update_service", id=sid, spec=raw_spec(replicas=2, task_template={"env": ["A=2"]}))["ok"]
    r = create_tasks(m, {"id": "t1", "service_id": sid, "slot": 1}, {"id": "t2", "service_id": "gone", "slot": 2})
    assert r["ok"] and r["created"] == ["t1"]
    assert r["refused"] == {"t2": "rpc error: code = NotFound desc = service gone not found"}
    t1 = read(m, "tasks", "t1")
    service = read(m, "services", sid)
    assert t1["spec"] == service["spec"]["task_template"] and t1["spec"]["env"] == ["A=2"]
    assert t1["spec_version"] == service["spec_version"] and t1["service_name"] == "web"
    assert (t1["desired_state"], t1["status"]["state"], t1["status"]["message"]) == ("running", "new", "created")
    assert lookup(m, "tasks", "service", sid) == ["t1"] and lookup(m, "tasks", "slot", (sid, 1)) == ["t1"]
    again = create_tasks(m, {"id": "t1", "service_id": sid, "slot": 1})
    assert again["refused"] == {"t1": "rpc error: code = AlreadyExists desc = object already exists"}


def test_a_task_batch_of_the_wrong_shape_is_refused_whole() -> None:
    m = machine()
    sid = with_service(m)
    g = with_service(m, "glob", mode="global")
    for items in ([{"id": "t1", "service_id": sid, "slot": 0}],               # replicated without a slot
                  [{"id": "t1", "service_id": g, "slot": 1, "node_id": "n0"}],  # global with one
                  [{"id": "t1", "service_id": g}],                             # global without a node
                  [{"id": "t1", "service_id": sid, "slot": 1, "desired_state": "new"}],
                  [{"id": "t1", "service_id": sid, "slot": 1}] * (MAX_TASKS_PER_OP + 1),
                  "not a list"):
        r = apply(m, "create_tasks", tasks=items)
        assert not r["ok"] and r["code"] == "INVALID_ARGUMENT", items
    assert m.read(lambda s: len(s["tasks"])) == 0


def test_desired_states_only_move_forward_and_a_stale_item_is_refused_alone() -> None:
    m = machine(node("n0"))
    sid = with_service(m)
    create_tasks(m, {"id": "t1", "service_id": sid, "slot": 1}, {"id": "t2", "service_id": sid, "slot": 2})
    v2 = read(m, "tasks", "t2")["version"]
    r = apply(m, "update_tasks", updates=[{"id": "t1", "desired_state": "shutdown"},
                                          {"id": "t2", "desired_state": "remove", "version": v2 + 7},
                                          {"id": "t3", "desired_state": "shutdown"}])
    assert r["ok"] and r["refused"] == {"t2": OUT_OF_SEQUENCE, "t3": "task t3 not found"}
    assert read(m, "tasks", "t1")["desired_state"] == "shutdown" and read(m, "tasks", "t2")["desired_state"] == "running"
    back = apply(m, "update_tasks", updates=[{"id": "t1", "desired_state": "running"}])
    assert back["refused"] == {"t1": "cannot update task t1 in desired state shutdown to an earlier desired "
                                     "state running"}
    assert read(m, "tasks", "t1")["desired_state"] == "shutdown"


def test_an_assignment_names_the_node_version_it_was_decided_on() -> None:
    m = machine(node("n0"))
    sid = with_service(m)
    create_tasks(m, {"id": "t1", "service_id": sid, "slot": 1}, {"id": "t2", "service_id": sid, "slot": 2})
    nv = read(m, "nodes", "n0")["version"]
    assigned = {"state": "assigned", "message": "scheduler assigned task to node", "timestamp": "t2"}
    r = apply(m, "update_tasks", updates=[{"id": "t1", "node_id": "n0", "node_version": nv, "status": assigned},
                                          {"id": "t2", "node_id": "n0", "node_version": nv - 1, "status": assigned}])
    assert r["refused"] == {"t2": OUT_OF_SEQUENCE}
    t1 = read(m, "tasks", "t1")
    assert (t1["node_id"], t1["status"]["state"]) == ("n0", "assigned") and lookup(m, "tasks", "node", "n0") == ["t1"]
    moved = apply(m, "update_tasks", updates=[{"id": "t1", "node_id": "n9"}])
    assert moved["refused"] == {"t1": "task t1 is already assigned to node n0"}


def assigned_task(m: StateMachine, node_id: str = "n0") -> str:
    sid = with_service(m)
    create_tasks(m, {"id": "t1", "service_id": sid, "slot": 1})
    assert not apply(m, "update_tasks", updates=[{"id": "t1", "node_id": node_id,
                                                  "status": {"state": "assigned"}}])["refused"]
    return "t1"


def test_a_node_reports_only_its_own_tasks_and_never_moves_a_state_back() -> None:
    m = machine(node("n0"), node("n1"))
    assigned_task(m)
    running = {"state": "running", "timestamp": "t5", "message": "started", "pid": 4242}
    r = apply(m, "report_task_status", node_id="n0", now="t6", updates=[{"id": "t1", "status": running}])
    assert r["ok"] and r["refused"] == {}
    status = read(m, "tasks", "t1")["status"]
    assert (status["state"], status["pid"], status["timestamp"], status["applied_at"]) == ("running", 4242, "t5", "t6")
    other = apply(m, "report_task_status", node_id="n1", updates=[{"id": "t1", "status": {"state": "failed"}}])
    assert other["refused"] == {"t1": NOT_ASSIGNED_HERE}
    assert NOT_ASSIGNED_HERE == "rpc error: code = PermissionDenied desc = cannot update a task not assigned this node"
    back = apply(m, "report_task_status", node_id="n0", updates=[{"id": "t1", "status": {"state": "preparing"}}])
    assert back["refused"] == {"t1": "task t1 cannot move back from running to preparing"}
    assert read(m, "tasks", "t1")["status"]["state"] == "running"


def test_the_same_report_again_changes_nothing_and_publishes_nothing() -> None:
    m = machine(node("n0"))
    assigned_task(m)
    report = [{"id": "t1", "status": {"state": "running", "timestamp": "t5"}}]
    assert apply(m, "report_task_status", node_id="n0", updates=report)["ok"]
    version = read(m, "tasks", "t1")["version"]
    events = m.events.subscribe()
    assert apply(m, "report_task_status", node_id="n0", now="t7", updates=report)["ok"]
    assert events.get(0) is None and read(m, "tasks", "t1")["version"] == version


def test_a_reports_texts_are_cut_to_their_bounds_and_a_malformed_item_is_refused_alone() -> None:
    m = machine(node("n0"))
    assigned_task(m)
    r = apply(m, "report_task_status", node_id="n0", updates=[
        {"id": "t1", "status": {"state": "failed", "err": "e" * 100_000, "exit_code": 3}},
        {"id": "t9", "status": {"state": "running"}}])
    assert r["ok"] and r["refused"] == {"t9": "task t9 not found"}
    status = read(m, "tasks", "t1")["status"]
    assert status["err"] == "e" * MAX_STATUS_ERR and status["exit_code"] == 3
    bad = apply(m, "report_task_status", node_id="n0", updates=[{"id": "t1", "status": {"state": "bogus"}}])
    assert bad["ok"] and bad["refused"] == {"t1": "unknown task state 'bogus'"}


def test_removed_tasks_leave_every_index() -> None:
    m = machine(node("n0"))
    tid = assigned_task(m)
    r = apply(m, "remove_tasks", ids=[tid, "nope"])
    assert r["ok"] and r["refused"] == {"nope": "task nope not found"}
    assert m.read(lambda s: tid in s["tasks"]) is False
    assert lookup(m, "tasks", "node", "n0") == [] and lookup(m, "tasks", "service", "svc-web") == []
    assert lookup(m, "tasks", "slot", ("svc-web", 1)) == []


def test_a_batch_of_task_changes_is_one_change_with_one_event_per_task() -> None:
    m = machine(node("n0"))
    sid = with_service(m)
    events = m.events.subscribe()
    r = create_tasks(m, *({"id": f"t{i}", "service_id": sid, "slot": i} for i in range(1, 4)))
    seen = [(e.table, e.action, e.object["id"], e.version) for e in iter(lambda: events.get(0), None)]
    assert seen == [("tasks", watch.CREATE, f"t{i}", r["index"]) for i in range(1, 4)]
    assert {read(m, "tasks", f"t{i}")["version"] for i in range(1, 4)} == {r["index"]}


# -- snapshots -------------------------------------------------------------------------------------

def test_services_and_tasks_survive_a_snapshot_round_trip_with_their_indexes() -> None:
    m = machine(node("n0"))
    assigned_task(m)
    with_service(m, "glob", mode="global")
    doc = json.loads(json.dumps(m.snapshot_doc()))
    again = StateMachine()
    again.load(doc)
    assert again.dump() == m.dump()
    assert again.read(lambda s: s["tasks"].lookup("node", "n0")) == ["t1"]
    assert again.read(lambda s: s["services"].lookup("name", "glob")) == ["svc-glob"]
    assert apply(again, "create_service", id="s3", spec=raw_spec("GLOB"))["ok"] is False


def test_a_snapshot_from_before_services_loads_with_empty_tables() -> None:
    m = StateMachine()
    m.load(copy.deepcopy(OLD_STATE))
    state = m.dump()
    assert state["services"] == {} and state["tasks"] == {}
    assert apply(m, "create_service", id="s1", spec=raw_spec())["ok"]
    assert m.read(lambda s: s["services"].lookup("name", "web")) == ["s1"]


def test_an_op_with_an_unknown_shape_never_raises() -> None:
    m = machine()
    for op in (encode_op("create_service"), encode_op("create_service", id="s", spec=None, now=T0),
               encode_op("update_tasks", updates=[{"id": "x", "status": "running"}], now=T0),
               encode_op("report_task_status", node_id=None, updates=[], now=T0),
               encode_op("remove_tasks", ids=[1], now=T0), encode_op("set_update_status", id="x", now=T0)):
        r = m.apply(op)
        assert r["ok"] is False and isinstance(r["message"], str)
