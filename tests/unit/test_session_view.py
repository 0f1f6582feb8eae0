"""The session view follows the store's events: what each node is told, and whose sessions must
hear of a change (everyone only when the shared part changed)."""

from __future__ import annotations

from typing import Any

from swarmd.manager.dispatcher.view import ALL, ViewKeeper
from swarmd.store.machine import StateMachine, encode_op

CLUSTER = {"id": "c" * 25, "default_addr_pool": [], "subnet_size": 24,
           "join_tokens": {"worker": "w", "manager": "m"},
           "spec": {"dispatcher_heartbeat_ns": 5 * 10**9}, "root_ca": {"cert": "ROOT", "key": "K"}}
LEADER = {"id": "l" * 25, "role": "manager", "manager": {"addr": "10.0.0.1:2377"}, "labels": {},
          "availability": "active"}


def apply(machine: StateMachine, kind: str, **fields: Any) -> None:
    result = machine.apply(encode_op(kind, **fields))
    assert result.get("ok"), result


def worker(n: int) -> dict[str, Any]:
    return {"id": f"{n:025d}", "role": "worker", "labels": {}, "availability": "active"}


def keeper() -> tuple[StateMachine, ViewKeeper]:
    machine = StateMachine()
    apply(machine, "bootstrap", cluster=CLUSTER, node=LEADER)
    k = ViewKeeper(machine, lambda: LEADER["id"])
    assert k.update() == ALL  # the first view: everyone
    return machine, k


def test_the_first_view_holds_the_whole_state() -> None:
    machine, k = keeper()
    assert k.view is not None
    msg = k.view.message(LEADER["id"])
    assert (msg.desired_role, msg.leader_addr, msg.heartbeat_period_ns, msg.root_ca) == (
        "manager", "10.0.0.1:2377", 5 * 10**9, b"ROOT")
    assert [(m.node_id, m.addr) for m in msg.managers] == [(LEADER["id"], "10.0.0.1:2377")]
    assert k.view.message("unknown").removed


def test_a_status_write_wakes_nobody_and_a_role_change_wakes_that_node_only() -> None:
    machine, k = keeper()
    apply(machine, "add_node", node=worker(1))
    apply(machine, "add_node", node=worker(2))
    assert k.update() == {worker(1)["id"], worker(2)["id"]}
    apply(machine, "set_node_status", id=worker(1)["id"], state="ready", now="t")
    assert k.update() == frozenset()
    apply(machine, "set_node_role", id=worker(2)["id"], role="manager", now="t")
    assert k.update() == {worker(2)["id"]}
    assert k.view is not None and k.view.message(worker(2)["id"]).desired_role == "manager"


def test_a_manager_list_or_cluster_change_wakes_everyone() -> None:
    machine, k = keeper()
    apply(machine, "add_node", node=worker(1))
    k.update()
    apply(machine, "set_node_role", id=worker(1)["id"], role="manager", manager_addr="10.0.0.2:2377", now="t")
    assert k.update() == ALL
    assert k.view is not None
    assert [m.addr for m in k.view.managers] == ["10.0.0.2:2377", "10.0.0.1:2377"]  # by node ID
    apply(machine, "update_cluster", spec={"dispatcher_heartbeat_ns": 7 * 10**9}, now="t")
    assert k.update() == ALL
    assert k.view.heartbeat_ns == 7 * 10**9
    apply(machine, "rotate_join_token", role="worker", token="w2", now="t")
    assert k.update() == frozenset()  # nothing a session is told


def test_a_removed_node_is_told_it_was_removed() -> None:
    machine, k = keeper()
    apply(machine, "add_node", node=worker(1))
    apply(machine, "set_node_status", id=worker(1)["id"], state="down", now="t")
    k.update()
    apply(machine, "remove_node", id=worker(1)["id"], force=False, now="t")
    assert k.update() == {worker(1)["id"]}
    assert k.view is not None and k.view.message(worker(1)["id"]).removed


def test_a_dropped_watch_reads_the_state_again() -> None:
    machine, k = keeper()
    k.close()  # as if it had overflowed: the next round reads everything
    apply(machine, "add_node", node=worker(1))
    assert k.update() == ALL
    assert k.view is not None and k.view.message(worker(1)["id"]).desired_role == "worker"
