"""The state machine and the pysyncobj wrapper: deterministic, never raising, durable, no pickle
from outside."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from swarmd.store import hardening
from swarmd.store.machine import StateMachine, encode_op
from swarmd.store.raft import RaftStore

CLUSTER = {"id": "c" * 25, "default_addr_pool": [], "subnet_size": 24,
           "join_tokens": {"worker": "w", "manager": "m"}}
NODE = {"id": "n" * 25, "labels": {}, "availability": "active"}


def bootstrap(m: StateMachine) -> dict[str, Any]:
    return m.apply(encode_op("bootstrap", cluster=CLUSTER, node=NODE,
                             ingress={"id": "i" * 25, "name": "ingress", "ingress": True, "now": "t0"}))


def net(m: StateMachine, name: str, **kw: Any) -> dict[str, Any]:
    return m.apply(encode_op("create_network", id=name.ljust(25, "x"), name=name, now="t", **kw))


def test_bootstrap_creates_cluster_node_and_ingress() -> None:
    m = StateMachine()
    assert bootstrap(m)["ok"]
    state = m.dump()
    assert state["index"] == 1 and state["cluster"]["id"] == CLUSTER["id"]
    ingress = state["networks"]["i" * 25]
    assert ingress["ipam"] == [{"subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}] and ingress["vxlan_ids"] == [4096]
    again = bootstrap(m)
    assert again == {"ok": False, "code": "ALREADY_EXISTS", "message": "the cluster already exists"}
    assert m.dump()["index"] == 1


@pytest.mark.parametrize("op", [b"", b"not json", b"[]", b'{"v": 99, "op": "bootstrap"}',
                                b'{"v": 1, "op": "nope"}', b'{"v": 1, "op": "update_node"}',
                                encode_op("update_node", id="missing", now="t")])
def test_apply_never_raises_and_changes_nothing_on_bad_ops(op: bytes) -> None:
    m = StateMachine()
    bootstrap(m)
    before = m.dump()
    result = m.apply(op)
    assert result["ok"] is False and result["message"]
    assert m.dump() == before


def test_failed_op_leaves_state_untouched_even_half_way() -> None:
    m = StateMachine()
    bootstrap(m)
    before = m.dump()
    # The label removal fails after the availability was already changed on the draft.
    r = m.apply(encode_op("update_node", id=NODE["id"], availability="drain", label_rm=["absent"], now="t"))
    assert r["ok"] is False
    assert m.dump() == before


def test_networks_first_fit_vxlan_reuse_and_errors() -> None:
    m = StateMachine()
    bootstrap(m)
    assert net(m, "a")["ok"] and net(m, "b")["ok"]
    nets = {n["name"]: n for n in m.dump()["networks"].values()}
    assert nets["a"]["ipam"][0]["subnet"] == "10.0.1.0/24" and nets["a"]["vxlan_ids"] == [4097]
    assert nets["b"]["ipam"][0]["subnet"] == "10.0.2.0/24" and nets["b"]["vxlan_ids"] == [4098]
    assert m.apply(encode_op("remove_network", id="a".ljust(25, "x")))["ok"]
    assert net(m, "c")["ok"]
    c = next(n for n in m.dump()["networks"].values() if n["name"] == "c")
    assert c["ipam"][0]["subnet"] == "10.0.1.0/24" and c["vxlan_ids"] == [4097]
    dup = net(m, "c")
    assert dup["code"] == "ALREADY_EXISTS" and dup["message"] == "network with name c already exists"
    overlap = net(m, "d", ipam=[{"subnet": "10.0.0.128/25"}])
    assert overlap["code"] == "INVALID_ARGUMENT" and "Pool overlaps" in overlap["message"]
    second_ingress = net(m, "ing2", ingress=True)
    assert second_ingress["code"] == "ALREADY_EXISTS" and "is already present" in second_ingress["message"]


def test_replicas_applying_the_same_ops_agree() -> None:
    ops = [encode_op("bootstrap", cluster=CLUSTER, node=NODE, ingress={"id": "i" * 25, "name": "ingress",
                                                                       "ingress": True, "now": "t0"})]
    ops += [encode_op("create_network", id=f"n{i}".ljust(25, "x"), name=f"n{i}", now="t") for i in range(20)]
    ops += [encode_op("remove_network", id=f"n{i}".ljust(25, "x")) for i in range(0, 20, 3)]
    ops += [encode_op("create_network", id=f"m{i}".ljust(25, "x"), name=f"m{i}", now="t") for i in range(5)]
    a, b = StateMachine(), StateMachine()
    for op in ops:
        assert a.apply(op) == b.apply(op)
    assert a.dump() == b.dump()


# -- the pysyncobj wrapper -----------------------------------------------------------------------

def test_restricted_unpickler_refuses_code() -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        hardening.safe_loads(pickle.dumps(Evil(), protocol=2))
    assert hardening.safe_loads(pickle.dumps((1, (b"op",)), protocol=2)) == (1, (b"op",))


def start_store(path: Path) -> tuple[RaftStore, StateMachine]:
    machine = StateMachine()
    store = RaftStore("nodeaaaaaaaaaaaaaaaaaaaaa", path / "raft", machine)
    store.start()
    assert store.wait_leader(10) and store.wait_ready(10)
    return store, machine


def test_store_commits_and_recovers_from_its_journal(tmp_path: Path) -> None:
    store, machine = start_store(tmp_path)
    try:
        assert store.propose(encode_op("bootstrap", cluster=CLUSTER, node=NODE))["ok"]
        for i in range(30):
            assert store.propose(encode_op("rotate_join_token", role="worker", token=f"t{i}", now="x"))["ok"]
        expected = machine.dump()
    finally:
        store.stop()
    journal = tmp_path / "raft" / "journal"
    assert journal.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "raft" / "journal.meta").stat().st_mode & 0o777 == 0o600
    store, machine = start_store(tmp_path)
    try:
        assert machine.dump() == expected
    finally:
        store.stop()


def test_snapshot_is_json_and_restores(tmp_path: Path) -> None:
    store, machine = start_store(tmp_path)
    try:
        store.propose(encode_op("bootstrap", cluster=CLUSTER, node=NODE))
        for i in range(5):
            store.propose(encode_op("rotate_join_token", role="manager", token=f"m{i}", now="x"))
        store._obj().forceLogCompaction()
        snapshot = tmp_path / "raft" / "snapshot"
        from tests.harness import wait_for
        wait_for(snapshot.exists, 10, what="a snapshot")
        store.propose(encode_op("rotate_join_token", role="worker", token="after", now="x"))
        expected = machine.dump()
    finally:
        store.stop()
    doc = json.loads(snapshot.read_bytes())
    assert doc["format"] == 1 and doc["members"] == ["nodeaaaaaaaaaaaaaaaaaaaaa"]
    assert snapshot.stat().st_mode & 0o777 == 0o600
    store, machine = start_store(tmp_path)
    try:
        assert machine.dump() == expected
    finally:
        store.stop()


def test_corrupt_meta_is_a_clear_start_error(tmp_path: Path) -> None:
    store, _ = start_store(tmp_path)
    store.propose(encode_op("bootstrap", cluster=CLUSTER, node=NODE))
    store.stop()
    (tmp_path / "raft" / "journal.meta").write_bytes(b"\x80\x02garbage")
    machine = StateMachine()
    broken = RaftStore("nodeaaaaaaaaaaaaaaaaaaaaa", tmp_path / "raft", machine)
    with pytest.raises(Exception):
        broken.start()
    broken.stop()
