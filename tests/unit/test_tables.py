"""The store's tables: drafts as overlays, indexes, events and versions, old snapshots, and the
leader's network allocation racing at apply time."""

from __future__ import annotations

import copy
import json
import ipaddress
import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from swarmd.manager import requestid
from swarmd.manager.allocator.networks import NetworkAllocator, Request
from swarmd.store import watch
from swarmd.store.machine import KEY_REUSED, StateMachine, encode_op
from swarmd.store.refusal import OpError
from swarmd.store.state import TABLES
from swarmd.store.table import Index, RangeIndex, Table
from tests.storelib import INGRESS, create_network, network_op

CLUSTER = {"id": "c" * 25, "default_addr_pool": ["10.0.0.0/8"], "subnet_size": 24, "spec": {},
           "join_tokens": {"worker": "w", "manager": "m"}, "root_ca": {}, "created_at": "t0", "updated_at": "t0"}


def node(i: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"n{i}", "role": "worker", "labels": {}, "availability": "active", "state": "ready",
            "manager": None, "public_key_sha256": f"key{i}", "created_at": "t0", "updated_at": "t0", **fields}


def machine_with(nodes: int = 3) -> StateMachine:
    m = StateMachine()
    assert m.apply(encode_op("bootstrap", cluster=CLUSTER, node=node(0), ingress=INGRESS))["ok"]
    for i in range(1, nodes):
        assert m.apply(encode_op("add_node", node=node(i)))["ok"]
    return m


def lookup(m: StateMachine, table: str, index: str, query: Any) -> list[str]:
    return m.read(lambda s: s[table].lookup(index, query))  # type: ignore[literal-required]


# -- drafts ----------------------------------------------------------------------------------------

def test_a_draft_reads_through_its_changes_and_leaves_the_table_alone_until_committed() -> None:
    table: Table[dict[str, Any]] = Table({"a": {"id": "a", "k": 1}, "b": {"id": "b", "k": 2}},
                                         {"k": Index(lambda o: (o["k"],))})
    draft = table.draft()
    draft["c"] = {"id": "c", "k": 3}
    del draft["a"]
    draft.edit("b")["k"] = 20
    assert sorted(draft) == ["b", "c"] and len(draft) == 2 and "a" not in draft and draft["b"]["k"] == 20
    assert draft.lookup("k", 20) == ["b"] and draft.lookup("k", 2) == [] and draft.lookup("k", 1) == []
    # Nothing of it is in the table yet, objects included.
    assert sorted(table) == ["a", "b"] and table["b"]["k"] == 2 and table.lookup("k", 2) == ["b"]
    draft.prepare()
    table.commit(draft)
    assert sorted(table) == ["b", "c"] and table["b"]["k"] == 20
    assert table.lookup("k", 20) == ["b"] and table.lookup("k", 3) == ["c"]
    assert table.lookup("k", 1) == [] and table.lookup("k", 2) == []


def test_an_object_edited_twice_in_one_op_is_copied_once_and_the_committed_one_never_changes() -> None:
    table: Table[dict[str, Any]] = Table({"a": {"id": "a", "labels": {"x": "1"}}})
    committed = table["a"]
    draft = table.draft()
    first = draft.edit("a")
    first["labels"]["y"] = "2"
    assert draft.edit("a") is first
    assert committed == {"id": "a", "labels": {"x": "1"}}


def test_a_failed_op_leaves_the_state_and_its_indexes_exactly_as_they_were() -> None:
    m = StateMachine()
    before = m.dump()
    # The cluster and the node are set on the draft; the ingress network then fails.
    bad = dict(INGRESS, vxlan_ids=[1])
    result = m.apply(encode_op("bootstrap", cluster=CLUSTER, node=node(0), ingress=bad))
    assert not result["ok"] and result["message"] == "VXLAN ID 1 is out of range"
    assert m.dump() == before
    assert lookup(m, "nodes", "public_key", "key0") == [] and lookup(m, "networks", "name", "ingress") == []
    assert m.apply(encode_op("bootstrap", cluster=CLUSTER, node=node(0), ingress=INGRESS))["ok"]


def test_a_failed_op_after_edits_publishes_nothing_and_keeps_versions() -> None:
    m = machine_with()
    events = m.events.subscribe()
    before = m.dump()
    r = m.apply(encode_op("update_node", id="n1", availability="drain", label_rm=["absent"], now="t"))
    assert not r["ok"] and m.dump() == before and events.get(0) is None


# -- indexes ---------------------------------------------------------------------------------------

def test_a_node_key_is_free_again_once_its_node_is_removed() -> None:
    m = machine_with()
    again = m.apply(encode_op("add_node", node=node(9, public_key_sha256="key1")))
    assert not again["ok"] and again["message"] == KEY_REUSED
    assert m.apply(encode_op("remove_node", id="n1", force=True))["ok"]
    assert lookup(m, "nodes", "public_key", "key1") == []
    assert m.apply(encode_op("add_node", node=node(9, public_key_sha256="key1")))["ok"]
    assert lookup(m, "nodes", "public_key", "key1") == ["n9"]


def test_the_cert_rotation_index_follows_updates() -> None:
    m = machine_with(5)
    assert m.apply(encode_op("mark_cert_rotation", ids=["n1", "n3", "gone"]))["ok"]
    assert lookup(m, "nodes", "cert_rotate", "cert_rotate") == ["n1", "n3"]
    assert m.apply(encode_op("set_node_status", id="n1", cert_rotate=False, now="t"))["ok"]
    assert lookup(m, "nodes", "cert_rotate", "cert_rotate") == ["n3"]
    rotation = {"cert": "c", "key": "k", "cross_signed": "x"}
    assert m.apply(encode_op("start_root_rotation", rotation=rotation, now="t"))["ok"]
    assert lookup(m, "nodes", "cert_rotate", "cert_rotate") == []
    assert m.read(lambda s: s["nodes"]["n3"].get("cert_rotate")) is False


def test_a_removed_network_frees_its_name_subnet_and_vxlan_id() -> None:
    m = machine_with()
    assert m.apply(network_op("a" * 25, "a", 1))["ok"]
    assert lookup(m, "networks", "name", "a") == ["a" * 25]
    assert lookup(m, "networks", "subnet", (0x0A000100, 0x0A0001FF)) == ["a" * 25]
    assert lookup(m, "networks", "subnet", (0x0A000000, 0x0AFFFFFF)) == sorted(["a" * 25, "i" * 25])  # 10/8
    assert lookup(m, "networks", "vxlan", 4097) == ["a" * 25]
    for op, text in [(network_op("b" * 25, "a", 2), "network with name a already exists"),
                     (network_op("b" * 25, "b", 1), "10.0.1.0/24 overlaps 10.0.1.0/24 of network a"),
                     (encode_op("create_network", id="b" * 25, name="b", now="t",
                                ipam=[{"subnet": "10.0.2.0/24", "gateway": "10.0.2.1"}], vxlan_ids=[4097]),
                      "VXLAN ID 4097 is already in use")]:
        refused = m.apply(op)
        assert not refused["ok"] and text in refused["message"]
    assert m.apply(encode_op("remove_network", id="a" * 25))["ok"]
    assert lookup(m, "networks", "name", "a") == [] and lookup(m, "networks", "vxlan", 4097) == []
    assert lookup(m, "networks", "subnet", (0x0A000100, 0x0A0001FF)) == []
    assert m.apply(network_op("b" * 25, "a", 1))["ok"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**16 - 1), st.integers(12, 30)), max_size=25),
       st.tuples(st.integers(0, 2**16 - 1), st.integers(8, 32)))
def test_the_subnet_index_finds_exactly_the_overlapping_blocks(stored: list[tuple[int, int]],
                                                               query: tuple[int, int]) -> None:
    def block(addr: int, prefix: int) -> tuple[int, int]:
        net = ipaddress.IPv4Network((0x0A000000 + (addr << 8), prefix), strict=False)
        return int(net.network_address), int(net.broadcast_address)

    rows = {f"n{i}": {"id": f"n{i}", "blocks": [block(*b)]} for i, b in enumerate(stored)}
    table: Table[dict[str, Any]] = Table(rows, {"subnet": RangeIndex(lambda o: tuple(o["blocks"]))})
    q = block(*query)
    expected = sorted(k for k, o in rows.items() if o["blocks"][0][0] <= q[1] and q[0] <= o["blocks"][0][1])
    assert table.lookup("subnet", q) == expected
    draft = table.draft()
    draft["new"] = {"id": "new", "blocks": [q]}
    for key in expected[:1]:
        del draft[key]
    assert draft.lookup("subnet", q) == sorted(expected[1:] + ["new"])


# -- events and versions ---------------------------------------------------------------------------

def test_one_event_per_changed_object_with_the_ops_index_as_its_version() -> None:
    m = machine_with()
    events = m.events.subscribe()
    untouched = m.read(lambda s: s["nodes"]["n2"]["version"])
    r = m.apply(encode_op("mark_cert_rotation", ids=["n1", "n1", "n0"]))
    seen = [(e.table, e.action, e.object["id"], e.version) for e in iter(lambda: events.get(0), None)]
    assert seen == [("nodes", watch.UPDATE, "n0", r["index"]), ("nodes", watch.UPDATE, "n1", r["index"])]
    assert m.read(lambda s: (s["nodes"]["n1"]["version"], s["nodes"]["n2"]["version"])) == (r["index"], untouched)
    removed = m.apply(encode_op("remove_node", id="n1", force=True))
    event = events.get(0)
    assert event is not None and (event.action, event.object["id"], event.version) == \
        (watch.REMOVE, "n1", removed["index"])


# -- snapshots -------------------------------------------------------------------------------------

OLD_STATE = {  # as a store of the previous version dumped it: no request table, networks without updated_at
    "index": 7,
    "cluster": dict(CLUSTER, version=1),
    "nodes": {"n0": dict(node(0), version=1), "n1": dict(node(1), version=5)},
    "networks": {"i" * 25: {"id": "i" * 25, "name": "ingress", "created_at": "t0", "driver": "overlay",
                            "ingress": True, "internal": False, "attachable": False,
                            "ipam": [{"subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}], "vxlan_ids": [4096],
                            "labels": {}, "options": {}, "version": 1}},
}


def test_a_hand_written_state_that_repeats_a_key_loads_and_its_object_goes_away_cleanly() -> None:
    doc = copy.deepcopy(OLD_STATE)
    doc["networks"]["i" * 25]["vxlan_ids"] = [4096, 4096]
    doc["networks"]["i" * 25]["ipam"].append({"subnet": "not a subnet", "gateway": ""})
    m = StateMachine()
    m.load(doc)
    assert lookup(m, "networks", "vxlan", 4096) == ["i" * 25]
    assert m.apply(encode_op("remove_network", id="i" * 25))["ok"]
    assert lookup(m, "networks", "vxlan", 4096) == [] and lookup(m, "networks", "subnet", (0, 2**32 - 1)) == []


def test_a_snapshot_of_the_previous_format_loads_with_its_indexes() -> None:
    m = StateMachine()
    m.load(copy.deepcopy(OLD_STATE))
    state = m.dump()
    assert state["index"] == 7 and state["requests"] == {}
    assert state["networks"]["i" * 25]["updated_at"] == "t0"
    assert set(state) == {"index", "cluster", "requests", *TABLES}
    assert lookup(m, "nodes", "public_key", "key1") == ["n1"]
    assert not m.apply(encode_op("add_node", node=node(5, public_key_sha256="key1")))["ok"]
    assert create_network(m, "ingress")["message"] == "network with name ingress already exists"
    assert create_network(m, "web")["ok"]
    web = next(n for n in m.dump()["networks"].values() if n["name"] == "web")
    assert web["ipam"] == [{"subnet": "10.0.1.0/24", "gateway": "10.0.1.1"}] and web["vxlan_ids"] == [4097]
    again = StateMachine()
    again.load(m.dump())
    assert again.dump() == m.dump()


# -- allocation on the leader, checked at apply ----------------------------------------------------

def test_two_creates_that_picked_the_same_free_subnet_do_not_both_commit() -> None:
    m = machine_with()
    first = m.apply(network_op("a" * 25, "a", 1))
    second = m.apply(network_op("b" * 25, "b", 1, rid="r:1"))
    assert first["ok"] and not second["ok"] and second["conflict"] is True
    assert "Pool overlaps" in second["message"]


def test_a_pick_that_loses_at_apply_is_made_again_and_the_user_sees_no_error() -> None:
    m = machine_with()
    other_leader = NetworkAllocator()
    proposed: list[list[str]] = []

    def propose_after_a_rival(choice: Any) -> dict[str, Any]:
        """Another leader's create of the same free subnet commits first (once)."""
        if not proposed:
            assert create_network(m, "rival")["ok"]
        proposed.append([c["subnet"] for c in choice.ipam])
        return m.apply(encode_op("create_network", id="w" * 25, name="web", now="t", **choice.op_fields()))

    result = other_leader.create(m.read, propose_after_a_rival, "web", False, [Request()])
    assert result["ok"] and proposed == [["10.0.1.0/24"], ["10.0.2.0/24"]]


def test_creates_in_flight_on_one_leader_pick_apart() -> None:
    m = machine_with()
    allocator = NetworkAllocator()
    picks: list[str] = []

    def propose(name: str) -> Any:
        def apply(choice: Any) -> dict[str, Any]:
            picks.append(choice.ipam[0]["subnet"])
            if name == "first":  # a second create arrives while the first is being proposed
                assert allocator.create(m.read, propose("second"), "second", False, [Request()])["ok"]
            return m.apply(encode_op("create_network", id=name.ljust(25, "x"), name=name, now="t",
                                     **choice.op_fields()))
        return apply

    assert allocator.create(m.read, propose("first"), "first", False, [Request()])["ok"]
    assert picks == ["10.0.1.0/24", "10.0.2.0/24"]


def test_a_requested_subnet_that_lost_the_race_is_refused_with_dockers_text() -> None:
    m = machine_with()
    done: list[bool] = []

    def propose(choice: Any) -> dict[str, Any]:
        if not done:
            done.append(True)
            assert create_network(m, "rival", ipam=[{"subnet": "10.9.0.0/16"}])["ok"]
        return m.apply(encode_op("create_network", id="w" * 25, name="web", now="t", **choice.op_fields()))

    text = ("invalid pool request: Pool overlaps with other one on this address space "
            "(10.9.0.0/24 overlaps 10.9.0.0/16 of network rival)")
    with pytest.raises(OpError, match=f"^{re.escape(text)}$"):  # the second pick sees the rival's subnet
        NetworkAllocator().create(m.read, propose, "web", False, [Request("10.9.0.0/24")])


def test_a_retried_create_that_had_committed_answers_its_first_result() -> None:
    """A forwarded call retried after its answer was lost: the network it created must not make
    the checks refuse it (name taken, subnet in use)."""
    m = machine_with()
    with requestid.scope("call1"):
        first = create_network(m, "web", ipam=[{"subnet": "10.5.0.0/24"}])
    with requestid.scope("call1"):
        again = create_network(m, "web", ipam=[{"subnet": "10.5.0.0/24"}])
    with requestid.scope("call2"):
        other = create_network(m, "web", ipam=[{"subnet": "10.5.0.0/24"}])
    assert first["ok"] and again == first
    assert other == {"ok": False, "code": "ALREADY_EXISTS", "message": "network with name web already exists"}
    assert [n["name"] for n in m.dump()["networks"].values()].count("web") == 1


def test_the_store_imports_nothing_of_the_manager() -> None:
    code = ("import sys, swarmd.store.machine, swarmd.store.raft; "
            "print([m for m in sys.modules if m.startswith('swarmd.manager')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_snapshot_document_shares_committed_objects_and_equals_the_dump() -> None:
    """The snapshot writer reads the state outside the lock: its document equals a deep dump,
    and later ops do not change what it holds (they replace objects, never edit them)."""
    machine = machine_with(3)
    doc = machine.snapshot_doc()
    assert json.dumps(doc, sort_keys=True) == json.dumps(machine.dump(), sort_keys=True)
    before = json.dumps(doc, sort_keys=True)
    node_id = next(iter(doc["nodes"]))
    assert machine.apply(encode_op("set_node_status", id=node_id, state="down", message="gone", now="t1"))["ok"]
    assert json.dumps(doc, sort_keys=True) == before
