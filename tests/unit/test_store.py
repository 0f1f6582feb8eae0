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
from tests.harness import wait_for
from tests.storelib import INGRESS, create_network, legacy_machine, network_op

CLUSTER = {"id": "c" * 25, "default_addr_pool": [], "subnet_size": 24,
           "join_tokens": {"worker": "w", "manager": "m"}}
NODE = {"id": "n" * 25, "labels": {}, "availability": "active"}


def bootstrap(m: StateMachine) -> dict[str, Any]:
    return m.apply(encode_op("bootstrap", cluster=CLUSTER, node=NODE, ingress=INGRESS))


def net(m: StateMachine, name: str, **kw: Any) -> dict[str, Any]:
    return create_network(m, name, **kw)


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


def test_replicas_replaying_ops_from_before_the_leader_allocated_agree() -> None:
    """An old journal: create_network ops without subnets and VXLAN IDs, allocated at apply as
    they were when written."""
    ops = [encode_op("bootstrap", cluster=CLUSTER, node=NODE, ingress={"id": "i" * 25, "name": "ingress",
                                                                       "ingress": True, "now": "t0"})]
    ops += [encode_op("create_network", id=f"n{i}".ljust(25, "x"), name=f"n{i}", now="t") for i in range(20)]
    ops += [encode_op("remove_network", id=f"n{i}".ljust(25, "x")) for i in range(0, 20, 3)]
    ops += [encode_op("create_network", id=f"m{i}".ljust(25, "x"), name=f"m{i}", now="t") for i in range(5)]
    a, b = legacy_machine(), legacy_machine()
    for op in ops:
        assert a.apply(op) == b.apply(op)
    assert a.dump() == b.dump()
    nets = {n["name"]: n for n in a.dump()["networks"].values()}
    assert nets["ingress"]["ipam"] == [{"subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}]
    assert nets["n1"]["ipam"][0]["subnet"] == "10.0.2.0/24" and nets["n1"]["vxlan_ids"] == [4098]
    assert nets["m0"]["ipam"][0]["subnet"] == "10.0.1.0/24" and nets["m0"]["vxlan_ids"] == [4097]  # freed by n0
    # A machine without the owner's hook refuses such an op rather than guessing.
    assert not StateMachine().apply(ops[0])["ok"]


# -- the pysyncobj wrapper -----------------------------------------------------------------------

def test_restricted_unpickler_refuses_code() -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        hardening.safe_loads(pickle.dumps(Evil(), protocol=2))
    assert hardening.safe_loads(pickle.dumps((1, (b"op",)), protocol=2)) == (1, (b"op",))


DATA_KEY = bytes(range(32))


def start_store(path: Path, key: bytes = DATA_KEY) -> tuple[RaftStore, StateMachine]:
    machine = StateMachine()
    store = RaftStore("nodeaaaaaaaaaaaaaaaaaaaaa", path / "raft", machine, data_key=key)
    store.start()
    assert store.wait_leader(10) and store.wait_ready(10)
    return store, machine


def compact(store: RaftStore, raft: Path) -> None:
    """Force a snapshot (and the journal trimmed behind it) and wait until it is on disk."""
    store._obj().forceLogCompaction()
    wait_for((raft / "snapshot").exists, 10, what="a snapshot")


def assert_restores(path: Path, expected: dict[str, Any], key: bytes = DATA_KEY) -> None:
    """A store started again from ``path`` holds ``expected``."""
    store, machine = start_store(path, key)
    try:
        assert machine.dump() == expected
    finally:
        store.stop()


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
    assert_restores(tmp_path, expected)


def test_snapshot_is_sealed_json_and_restores(tmp_path: Path) -> None:
    store, machine = start_store(tmp_path)
    try:
        store.propose(encode_op("bootstrap", cluster=CLUSTER, node=NODE))
        for i in range(5):
            store.propose(encode_op("rotate_join_token", role="manager", token=f"m{i}", now="x"))
        compact(store, tmp_path / "raft")
        snapshot = tmp_path / "raft" / "snapshot"
        store.propose(encode_op("rotate_join_token", role="worker", token="after", now="x"))
        expected = machine.dump()
    finally:
        store.stop()
    sealed = snapshot.read_bytes()
    assert b"after" not in sealed and b"members" not in sealed
    doc = json.loads(hardening.open_snapshot(str(snapshot), sealed))
    assert doc["format"] == 1 and doc["members"] == ["nodeaaaaaaaaaaaaaaaaaaaaa"]
    assert snapshot.stat().st_mode & 0o777 == 0o600
    assert_restores(tmp_path, expected)


def test_corrupt_meta_is_a_clear_start_error(tmp_path: Path) -> None:
    store, _ = start_store(tmp_path)
    store.propose(encode_op("bootstrap", cluster=CLUSTER, node=NODE))
    store.stop()
    (tmp_path / "raft" / "journal.meta").write_bytes(b"\x80\x02garbage")
    machine = StateMachine()
    broken = RaftStore("nodeaaaaaaaaaaaaaaaaaaaaa", tmp_path / "raft", machine, data_key=DATA_KEY)
    with pytest.raises(Exception):
        broken.start()
    broken.stop()


SECRET = "SWMTKN-1-secretsecretsecret"


def _store_with_secret(tmp_path: Path) -> dict[str, Any]:
    store, machine = start_store(tmp_path)
    try:
        store.propose(encode_op("bootstrap", cluster=CLUSTER, node=NODE))
        store.propose(encode_op("rotate_join_token", role="worker", token=SECRET, now="x"))
        return machine.dump()
    finally:
        store.stop()


def test_journal_holds_no_clear_text(tmp_path: Path) -> None:
    _store_with_secret(tmp_path)
    for path in (tmp_path / "raft").iterdir():
        data = path.read_bytes()
        assert SECRET.encode() not in data and b"rotate_join_token" not in data, path


def test_journal_under_another_key_is_a_clear_start_error(tmp_path: Path) -> None:
    _store_with_secret(tmp_path)
    machine = StateMachine()
    other = RaftStore("nodeaaaaaaaaaaaaaaaaaaaaa", tmp_path / "raft", machine, data_key=b"\x01" * 32)
    with pytest.raises(Exception, match="does not authenticate"):
        other.start()
    other.stop()


def test_flipped_bit_in_the_middle_of_the_journal_is_detected(tmp_path: Path) -> None:
    _store_with_secret(tmp_path)
    journal = tmp_path / "raft" / "journal"
    data = bytearray(journal.read_bytes())
    end = int.from_bytes(data[12:16], "little")
    data[32 + (end - 32) // 2] ^= 0x40
    journal.write_bytes(bytes(data))
    machine = StateMachine()
    broken = RaftStore("nodeaaaaaaaaaaaaaaaaaaaaa", tmp_path / "raft", machine, data_key=DATA_KEY)
    with pytest.raises(Exception, match="damaged|does not authenticate"):
        broken.start()
    broken.stop()


def test_legacy_clear_journal_is_migrated_to_sealed(tmp_path: Path) -> None:
    import pysyncobj.journal as ps_journal
    raft = tmp_path / "raft"
    raft.mkdir(mode=0o700)
    legacy = ps_journal.FileJournal(str(raft / "journal"))
    ops = [encode_op("bootstrap", cluster=CLUSTER, node=NODE),
           encode_op("rotate_join_token", role="worker", token=SECRET, now="x")]
    for i, op in enumerate(ops, start=1):
        legacy.add(op, i, 1)
    legacy.flush()
    legacy._destroy()
    from swarmd.store.crypto import DataCipher
    from swarmd.store.journal import EncryptedJournal
    hardening.install()
    hardening.register_cipher(raft, DataCipher(DATA_KEY))
    journal = hardening._create_journal(str(raft / "journal"))
    assert isinstance(journal, EncryptedJournal)
    assert [e[0] for e in journal] == ops
    journal._destroy()
    assert SECRET.encode() not in (raft / "journal").read_bytes()
    assert not (raft / "journal.legacy").exists()


NEW_KEY = bytes(range(32, 64))


def test_rekey_seals_journal_and_snapshot_under_the_new_key(tmp_path: Path) -> None:
    store, machine = start_store(tmp_path)
    try:
        store.propose(encode_op("bootstrap", cluster=CLUSTER, node=NODE))
        store.propose(encode_op("rotate_join_token", role="worker", token=SECRET, now="x"))
        compact(store, tmp_path / "raft")
        store.propose(encode_op("rotate_join_token", role="manager", token="after", now="x"))
        store.rekey(NEW_KEY)
        store.propose(encode_op("rotate_join_token", role="manager", token="after rekey", now="x"))
        expected = machine.dump()
    finally:
        store.stop()
    assert not list((tmp_path / "raft").glob("journal.new"))
    machine = StateMachine()
    old = RaftStore("nodeaaaaaaaaaaaaaaaaaaaaa", tmp_path / "raft", machine, data_key=DATA_KEY)
    with pytest.raises(Exception, match="does not authenticate"):
        old.start()
    old.stop()
    assert_restores(tmp_path, expected, NEW_KEY)


def test_files_left_under_either_key_by_an_interrupted_rekey_still_open(tmp_path: Path) -> None:
    store, machine = start_store(tmp_path)
    try:
        store.propose(encode_op("bootstrap", cluster=CLUSTER, node=NODE))
        store.propose(encode_op("rotate_join_token", role="worker", token=SECRET, now="x"))
        compact(store, tmp_path / "raft")
        store.propose(encode_op("rotate_join_token", role="manager", token="after", now="x"))
        expected = machine.dump()
    finally:
        store.stop()
    # A crash between the two files: the snapshot already under the new key, the journal not.
    from swarmd.store.crypto import DataCipher
    hardening.register_cipher(tmp_path / "raft", DataCipher(NEW_KEY), DataCipher(DATA_KEY))
    hardening.reseal_snapshot(str(tmp_path / "raft" / "snapshot"))
    machine = StateMachine()
    store = RaftStore("nodeaaaaaaaaaaaaaaaaaaaaa", tmp_path / "raft", machine, data_key=NEW_KEY,
                      other_keys=[DATA_KEY])
    try:
        store.start()
        assert store.wait_leader(10) and store.wait_ready(10)
        assert machine.dump() == expected
        store.rekey(NEW_KEY)  # what the node does next: everything under the new key
    finally:
        store.stop()
    assert_restores(tmp_path, expected, NEW_KEY)


def test_concurrent_proposals_share_entries_and_each_gets_its_own_result(tmp_path: Path) -> None:
    import threading

    store, machine = start_store(tmp_path)
    try:
        assert store.propose(encode_op("bootstrap", cluster=CLUSTER, node=NODE))["ok"]
        entries_before = len(store._obj()._SyncObj__raftLog)
        results: dict[int, dict[str, Any]] = {}
        start = threading.Barrier(24)

        def propose(i: int) -> None:
            start.wait()
            results[i] = store.propose(network_op(f"n{i}".ljust(25, "x"), f"net{i}", i + 1))
        threads = [threading.Thread(target=propose, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(results[i]["ok"] and results[i]["network_id"] == f"n{i}".ljust(25, "x") for i in range(24))
        # Each proposal got its own result, and each is its own change of the state...
        assert len({r["index"] for r in results.values()}) == 24
        # ... but they took fewer Raft entries than proposals (group commit).
        assert len(store._obj()._SyncObj__raftLog) - entries_before < 24
        expected = machine.dump()
    finally:
        store.stop()
    assert_restores(tmp_path, expected)


def test_a_batch_applies_each_op_on_its_own(tmp_path: Path) -> None:
    from swarmd.store.machine import encode_batch

    machine = StateMachine()
    bootstrap(machine)
    result = machine.apply(encode_batch([
        network_op("a".ljust(25, "x"), "a", 1),
        network_op("b".ljust(25, "x"), "a", 2),   # a clash: fails alone
        b'{"v": 1, "op": "nonsense"}',
        network_op("c".ljust(25, "x"), "c", 3),
    ]))
    oks = [r["ok"] for r in result["batch"]]
    assert result["ok"] and oks == [True, False, False, True]
    assert sorted(n["name"] for n in machine.dump()["networks"].values()) == ["a", "c", "ingress"]
