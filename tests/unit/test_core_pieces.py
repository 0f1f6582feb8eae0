"""The read barrier's rounds, the state machine's memory of request IDs, and shared channels."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
import pytest

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.manager import requestid
from swarmd.remotes import Remotes
from swarmd.store.machine import MAX_REMEMBERED, StateMachine, encode_op
from swarmd.store.reads import ACK, PROBE, NotLeader, ReadBarrier
from tests.storelib import network_op


# -- read barrier -------------------------------------------------------------------------------

class Member:
    def __init__(self, node_id: str) -> None:
        self.id = node_id


class FakeRaft:
    """The few pysyncobj attributes the barrier reads (it runs on the tick thread of a SyncObj)."""

    def __init__(self, members: int, leader: bool = True) -> None:
        self.nodes = [Member(f"n{i}") for i in range(1, members)]
        self._SyncObj__otherNodes = set(self.nodes)
        self._SyncObj__raftCurrentTerm = 3
        self._SyncObj__raftState = 2 if leader else 0
        self._SyncObj__raftLeader = None
        self._SyncObj__raftCommitIndex = 10
        self._SyncObj__noopIDx = 10
        self._SyncObj__raftLastApplied = 10
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, node: Any, message: dict[str, Any]) -> bool:
        self.sent.append((node.id, message))
        return True


def ack(barrier: ReadBarrier, raft: FakeRaft, node: Any, round_: int, term: int = 3) -> None:
    barrier.on_message(raft, raft.send, node.id, node, {"type": ACK, "term": term, "round": round_})


def test_a_read_waits_for_a_majority_of_acks_of_a_round_started_after_it() -> None:
    raft, barrier = FakeRaft(members=5), ReadBarrier()
    read = barrier.request()
    barrier.tick(raft, raft.send)
    assert sorted(m["type"] for _, m in raft.sent) == [PROBE] * 4 and not read.done()
    ack(barrier, raft, raft.nodes[0], 1)
    barrier.tick(raft, raft.send)
    assert not read.done()  # 2 of 5
    ack(barrier, raft, raft.nodes[1], 1, term=2)  # an ack of an older term proves nothing
    barrier.tick(raft, raft.send)
    assert not read.done()
    ack(barrier, raft, raft.nodes[2], 1)
    barrier.tick(raft, raft.send)
    assert read.done() and read.result() is None


def test_a_read_also_waits_until_the_read_index_is_applied() -> None:
    raft, barrier = FakeRaft(members=3), ReadBarrier()
    raft._SyncObj__raftLastApplied = 8
    read = barrier.request()
    barrier.tick(raft, raft.send)
    ack(barrier, raft, raft.nodes[0], 1)
    barrier.tick(raft, raft.send)
    assert not read.done()
    raft._SyncObj__raftLastApplied = 10
    barrier.tick(raft, raft.send)
    assert read.done()


def test_acks_of_an_earlier_round_do_not_release_a_later_read() -> None:
    raft, barrier = FakeRaft(members=3), ReadBarrier()
    first = barrier.request()
    barrier.tick(raft, raft.send)
    second = barrier.request()  # arrived after round 1 was sent: needs round 2
    barrier.tick(raft, raft.send)
    ack(barrier, raft, raft.nodes[0], 1)
    barrier.tick(raft, raft.send)
    assert first.done() and not second.done()
    ack(barrier, raft, raft.nodes[0], 2)
    barrier.tick(raft, raft.send)
    assert second.done()


def test_no_round_before_the_leaders_noop_commits_and_none_for_a_follower() -> None:
    raft, barrier = FakeRaft(members=3), ReadBarrier()
    raft._SyncObj__noopIDx = 11
    read = barrier.request()
    barrier.tick(raft, raft.send)
    assert raft.sent == [] and not read.done()
    raft._SyncObj__raftState = 0
    barrier.tick(raft, raft.send)
    with pytest.raises(NotLeader):
        read.result(0)


def test_a_lone_leader_confirms_at_once_and_a_follower_acks_only_its_leader() -> None:
    raft, barrier = FakeRaft(members=1), ReadBarrier()
    read = barrier.request()
    barrier.tick(raft, raft.send)
    assert read.done()
    follower = FakeRaft(members=3, leader=False)
    leader = follower.nodes[0]
    follower._SyncObj__raftLeader = leader
    barrier.on_message(follower, follower.send, "n2", follower.nodes[1], {"type": PROBE, "term": 3, "round": 7})
    barrier.on_message(follower, follower.send, "n1", leader, {"type": PROBE, "term": 2, "round": 7})
    assert follower.sent == []
    barrier.on_message(follower, follower.send, "n1", leader, {"type": PROBE, "term": 3, "round": 7})
    assert follower.sent == [("n1", {"type": ACK, "term": 3, "round": 7})]


# -- request IDs ---------------------------------------------------------------------------------

def bootstrap(machine: StateMachine) -> None:
    cluster = {"id": "c", "spec": {}, "default_addr_pool": ["10.0.0.0/8"], "subnet_size": 24,
               "join_tokens": {}, "root_ca": {}}
    assert machine.apply(encode_op("bootstrap", cluster=cluster, node={"id": "n", "role": "manager"}))["ok"]


def test_a_retried_write_returns_its_first_result_and_is_applied_once() -> None:
    machine = StateMachine()
    bootstrap(machine)
    op = network_op("net1", "a", rid="req:1")
    first = machine.apply(op)
    again = machine.apply(op)
    assert first["ok"] and again == first
    other = machine.apply(network_op("net2", "a", 2, rid="req:2"))
    assert not other["ok"] and "already exists" in other["message"]  # a new write is applied
    assert machine.read(lambda s: len(s["networks"])) == 1


def test_the_request_table_is_bounded_and_part_of_the_snapshot() -> None:
    machine = StateMachine()
    bootstrap(machine)
    for i in range(MAX_REMEMBERED + 10):
        machine.apply(encode_op("rotate_join_token", role="worker", token=f"t{i}", now="t", rid=f"r:{i}"))
    state = machine.dump()
    assert len(state["requests"]) == MAX_REMEMBERED and "r:0" not in state["requests"]
    restored = StateMachine()
    restored.load(state)
    assert restored.apply(encode_op("rotate_join_token", role="worker", token="x", now="t",
                                    rid=f"r:{MAX_REMEMBERED}"))["index"] < state["index"]


def test_request_tags_count_the_writes_of_one_call() -> None:
    with requestid.scope("abc123"):
        assert [requestid.next_tag(), requestid.next_tag()] == ["abc123:1", "abc123:2"]
    with requestid.scope("not valid!"):
        assert requestid.next_tag() is None
    assert requestid.next_tag() is None


# -- shared channels -----------------------------------------------------------------------------

class SlowVersion(pb_grpc.ControlServicer):
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        self.entered.set()
        self.release.wait(10)
        return pb.VersionResponse(version="x")


def test_a_channel_is_never_closed_under_another_callers_call() -> None:
    servicer = SlowVersion()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_ControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    remotes = Remotes(grpc.local_channel_credentials)
    results: list[str] = []
    try:
        def slow_call() -> None:
            with remotes.channel(f"127.0.0.1:{port}") as channel:
                results.append(pb_grpc.ControlStub(channel).Version(pb.VersionRequest(), timeout=10).version)
        caller = threading.Thread(target=slow_call)
        caller.start()
        assert servicer.entered.wait(10)
        remotes.renew()  # what a renewal does while a call is in flight
        with remotes.channel(f"127.0.0.1:{port}") as channel:  # a new caller gets a new channel
            pass
        servicer.release.set()
        caller.join(10)
        assert results == ["x"]
    finally:
        servicer.release.set()
        remotes.close()
        server.stop(None)


# -- store events and versions -----------------------------------------------------------------

def test_every_committed_change_is_an_event_in_commit_order_with_its_version() -> None:
    from swarmd.store.watch import CREATE, REMOVE, RESET, UPDATE

    machine = StateMachine()
    events = machine.events.subscribe()
    bootstrap(machine)
    created = machine.apply(network_op("net1", "a"))
    machine.apply(encode_op("update_node", id="n", availability="drain", now="t"))
    machine.apply(network_op("net2", "a", 2))  # refused: no event
    machine.apply(encode_op("remove_network", id="net1"))
    seen = [(e.table, e.action, e.object.get("id"), e.version) for e in iter(lambda: events.get(0), None)]
    assert seen[:2] == [("cluster", CREATE, "c", 1), ("nodes", CREATE, "n", 1)]
    assert ("networks", CREATE, "net1", created["index"]) in seen
    assert seen[-2:] == [("nodes", UPDATE, "n", created["index"] + 1),
                         ("networks", REMOVE, "net1", created["index"] + 2)]  # a refused op changes nothing
    # Every changed object carries the version of its last change.
    assert machine.read(lambda s: s["nodes"]["n"]["version"]) == created["index"] + 1
    restored = machine.events.subscribe()
    machine.load(machine.dump())
    reset = restored.get(0)
    assert reset is not None and reset.action == RESET


def test_a_slow_subscriber_is_dropped_and_never_blocks_apply() -> None:
    machine = StateMachine()
    slow = machine.events.subscribe(maxsize=2)
    fast = machine.events.subscribe()
    bootstrap(machine)  # two events (the cluster and its node): the queue is full
    for i in range(5):
        assert machine.apply(network_op(f"x{i}", f"x{i}", i + 1))["ok"]
    assert slow.closed and slow.overflowed
    assert not fast.closed
    assert sum(1 for _ in iter(lambda: fast.get(0), None)) == 7


def test_an_op_based_on_a_stale_version_is_refused() -> None:
    from swarmd.store.machine import OUT_OF_SEQUENCE

    machine = StateMachine()
    bootstrap(machine)
    version = machine.read(lambda s: s["nodes"]["n"]["version"])
    first = machine.apply(encode_op("update_node", id="n", availability="drain", now="t",
                                    expect={"nodes": {"n": version}}))
    second = machine.apply(encode_op("update_node", id="n", availability="pause", now="t",
                                     expect={"nodes": {"n": version}}))
    assert first["ok"] and not second["ok"] and second["message"] == OUT_OF_SEQUENCE
    assert machine.read(lambda s: s["nodes"]["n"]["availability"]) == "drain"
