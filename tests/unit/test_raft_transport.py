"""Raft between managers over gRPC streams: real servers with mutual TLS on 127.0.0.1, real
pysyncobj, real certificates (tests/raft_transport_cluster.py). Every wait has a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import msgpack  # type: ignore[import-untyped]
import pytest

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import ids, pki
from swarmd.store import transport
from swarmd.store.raft import StoreError
from tests.raft_transport_cluster import (
    BOOTSTRAP,
    Cluster,
    Member,
    TestPKI,
    converged,
    propose_anywhere,
    raft_threads,
    rotate,
    running,
    wait_for,
    wait_leader,
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()
        # Stopping stores and networks leaves no dialer, reader or tick thread behind.
        wait_for(lambda: not raft_threads(), 5, "raft threads to end")


def followers(members: list[Member], leader: Member) -> list[Member]:
    return [m for m in running(members) if m is not leader]


def all_connected(members: list[Member]) -> bool:
    alive = running(members)
    return all(a.raft.is_connected(b.node_id) for a in alive for b in alive)


def same_state(members: list[Member], index: int) -> bool:
    alive = running(members)
    return converged(alive) and all(m.machine.dump()["index"] == index for m in alive)


# -- the codec -----------------------------------------------------------------------------------

PYSYNCOBJ_MESSAGES: list[dict[str, Any]] = [
    {"type": "request_vote", "term": 3, "last_log_index": 10, "last_log_term": 2},
    {"type": "response_vote", "term": 3},
    {"type": "timeout_now", "term": 3},
    {"type": "append_entries", "term": 3, "commit_index": 9, "prevLogIdx": 9, "prevLogTerm": 2,
     "entries": [(b"\x00op", 10, 3), (b"\x01", 11, 3)]},
    {"type": "append_entries", "term": 3, "commit_index": 9, "prevLogIdx": 9, "prevLogTerm": 2,
     "transmission": "start", "data": b"\x80\x02chunk"},
    {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": (b"{json}", True, False)},
    {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": None},
    {"type": "apply_command", "command": b"\x00op", "request_id": 7},
    {"type": "apply_command", "command": b"\x00op"},
    {"type": "apply_command_response", "request_id": 7, "log_idx": 12, "log_term": 3},
    {"type": "apply_command_response", "request_id": 7, "error": 6},
    {"type": "next_node_idx", "next_node_idx": 12, "reset": False, "success": True},
]


def _lists(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def test_every_pysyncobj_message_round_trips() -> None:
    frame = b"".join(transport.encode(m) for m in PYSYNCOBJ_MESSAGES)
    decoded = transport.decode(frame)
    # Tuples come back as lists; pysyncobj only indexes and unpacks them (raftLog.add(*entry),
    # entries[-1][1], data, isFirst, isLast = serialized). Bytes stay bytes, str stays str.
    assert decoded == [_lists(m) for m in PYSYNCOBJ_MESSAGES]
    entries = decoded[3]["entries"]
    assert isinstance(entries[0][0], bytes) and entries[0][1:] == [10, 3]


@pytest.mark.parametrize("payload", [
    b"\xc1",                                               # never-used msgpack byte
    b"\x93\x01\x02",                                       # truncated array
    b"\xdd\xff\xff\xff\xff",                               # array claiming 4 G items
    msgpack.packb([1, 2, 3]),                              # not a map
    msgpack.packb({"type": "install_malware"}),            # unknown type
    msgpack.packb({"type": "request_vote", "term": 1}),    # missing fields
    msgpack.packb({"type": "response_vote", "term": "1"}),  # wrong field type
    msgpack.packb({"type": "append_entries", "term": 1, "commit_index": 1, "entries": [[1, 2]]}),
    msgpack.packb({"type": "apply_command", "command": msgpack.ExtType(1, b"x")}),
    msgpack.packb({"type": "response_vote", "term": 1}) + b"\xc1",  # good message, then garbage
    msgpack.packb({"type": "response_vote", "term": True}),              # a bool is not a term
    msgpack.packb({"type": "response_vote", "term": -1}),                # nor a negative one
    msgpack.packb({"type": "response_vote", "term": 1 << 63}),           # nor one past int64
    msgpack.packb({"type": "response_vote", "term": 1, "node_id": "m2"}),  # no claimed sender
    msgpack.packb({"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1}),
    msgpack.packb({"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1,
                   "prevLogTerm": 1, "transmission": "resume", "data": b"x"}),
    msgpack.packb({"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1,
                   "prevLogTerm": 1, "transmission": "start"}),
    msgpack.packb({"type": "append_entries", "term": 1, "commit_index": 1, "serialized": [b"x", 1, 0]}),
    msgpack.packb({"type": "apply_command", "command": b"\x02membership change"}),
    msgpack.packb({"type": "apply_command_response", "request_id": 1}),
    msgpack.packb({"type": "next_node_idx", "next_node_idx": 1, "reset": 0, "success": 1}),
])
def test_malformed_frames_are_refused(payload: bytes) -> None:
    with pytest.raises(transport.CodecError):
        transport.decode(payload)


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(transport.CodecError, match="exceeds"):
        transport.decode(b"\x00" * (transport.MAX_FRAME + 1))


def test_queued_messages_share_frames_and_a_closed_link_ends_its_stream() -> None:
    closed: list[str] = []
    link = transport._Link("peer", lambda _link, reason: closed.append(reason))
    messages = [transport.encode({"type": "response_vote", "term": i}) for i in range(5)]
    big = b"\x00" * (transport.BATCH_BYTES - 10)
    for payload in [*messages, big, messages[0]]:
        assert link.enqueue(payload)
    frames = link.frames(accepted_mark=True)
    assert next(frames).payload == b""  # the accepted mark
    # The five small messages share a frame; the big one does not fit with them.
    assert transport.decode(next(frames).payload) == [{"type": "response_vote", "term": i} for i in range(5)]
    assert next(frames).payload == big
    assert next(frames).payload == messages[0]
    link.close("done")
    assert closed == ["done"] and not link.enqueue(messages[0])
    with pytest.raises(StopIteration):
        next(frames)


def test_a_blocked_writer_returns_when_the_link_closes() -> None:
    link = transport._Link("peer", lambda _link, _reason: None)
    frames = link.frames(accepted_mark=False)
    done = threading.Event()

    def drain() -> None:
        for _ in frames:
            pass
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    link.close("stop")
    assert done.wait(5)


# -- clusters ------------------------------------------------------------------------------------

def test_three_members_replicate_through_leader_and_follower(cluster: Cluster) -> None:
    members = cluster.start(3)
    leader = wait_leader(members)
    wait_for(lambda: all_connected(members), 5, "every member connected to every other")
    assert all(m.raft.members() == sorted(x.node_id for x in members) for m in members)

    assert leader.raft.propose(BOOTSTRAP)["ok"]
    follower = followers(members, leader)[0]
    for i in range(10):
        proposer = leader if i % 2 else follower  # a follower's write is forwarded by pysyncobj
        assert proposer.raft.propose(rotate(f"t{i}"))["ok"]
    # A log entry above pysyncobj's 64 KiB batch travels in chunks ("transmission").
    assert leader.raft.propose(rotate("x" * 200_000))["ok"]
    wait_for(lambda: same_state(members, 12), 5, "the three states to converge")
    assert members[0].machine.dump()["cluster"]["join_tokens"]["worker"] == "x" * 200_000


def test_leader_stop_elects_a_new_leader_and_the_old_one_catches_up(cluster: Cluster) -> None:
    members = cluster.start(3)
    leader = wait_leader(members)
    assert leader.raft.propose(BOOTSTRAP)["ok"]
    for i in range(20):
        leader.raft.propose(rotate(f"t{i}"))

    stopped = time.monotonic()
    leader.stop()
    committed = propose_anywhere(members, rotate("after"), timeout=5.0)
    assert committed - stopped <= 5.0
    survivors = running(members)
    new_leader = wait_leader(survivors)
    assert new_leader is not leader
    wait_for(lambda: same_state(survivors, 22), 5, "the survivors to converge")

    # Restart the old leader from its raft directory, on a new port (its address changes).
    old_address = cluster.addresses[leader.node_id]
    leader.serve().start([m.node_id for m in members])
    assert cluster.addresses[leader.node_id] != old_address
    new_leader.raft.propose(rotate("while it was away"))
    wait_for(lambda: same_state(members, 23), 10, "the old leader to catch up")
    wait_for(lambda: all_connected(members), 5, "the old leader's streams")


def test_add_and_remove_members(cluster: Cluster) -> None:
    members = cluster.start(3)
    leader = wait_leader(members)
    assert leader.raft.propose(BOOTSTRAP)["ok"]
    for i in range(10):
        leader.raft.propose(rotate(f"t{i}"))
    # Compact the leader's log: the new member then needs the (JSON) snapshot over the stream.
    leader.raft._on_tick_thread(lambda obj: obj.forceLogCompaction())
    wait_for((leader.dir / "raft" / "snapshot").exists, 5, "the leader's snapshot")

    newcomer = cluster.member().serve()
    with pytest.raises(StoreError, match="not the raft leader"):
        followers(members, leader)[0].raft.add_member(newcomer.node_id)
    leader.raft.add_member(newcomer.node_id)
    with pytest.raises(StoreError, match="already a member"):
        leader.raft.add_member(newcomer.node_id)
    everyone = sorted(m.node_id for m in [*members, newcomer])
    assert leader.raft.members() == everyone

    newcomer.start(leader.raft.members())
    members.append(newcomer)
    leader.raft.propose(rotate("four"))
    wait_for(lambda: same_state(members, 12), 10, "the new member to catch up")
    # It caught up from the leader's snapshot (it would not compact its own log this early),
    # which the leader sent in clear over the stream and the newcomer sealed under its own key.
    snapshot = (newcomer.dir / "raft" / "snapshot").read_bytes()
    assert b"join_tokens" not in snapshot and not list((newcomer.dir / "raft").glob("*.tmp"))
    wait_for(lambda: all(m.raft.members() == everyone for m in members), 5, "every member to know all four")
    wait_for(lambda: all_connected(members), 5, "the new member's streams")

    removed = followers(members, leader)[0]
    leader.raft.remove_member(removed.node_id)
    remaining = [m for m in members if m is not removed]
    assert removed.node_id not in leader.raft.members()
    wait_for(lambda: all(removed.node_id not in m.raft.members() for m in remaining), 5,
             "the removal to reach every remaining member")
    wait_for(lambda: not any(m.raft.is_connected(removed.node_id) for m in remaining), 5,
             "the streams to the removed member to close")
    removed.stop()
    assert leader.raft.propose(rotate("three again"))["ok"]
    wait_for(lambda: same_state(remaining, 13), 5, "the remaining members to converge")

    with pytest.raises(StoreError, match="cannot remove itself"):
        leader.raft.remove_member(leader.node_id)
    with pytest.raises(StoreError, match="not a member"):
        leader.raft.remove_member(removed.node_id)


def test_transfer_leadership(cluster: Cluster) -> None:
    members = cluster.start(3)
    leader = wait_leader(members)
    assert leader.raft.propose(BOOTSTRAP)["ok"]
    assert leader.raft.transfer_leadership(5.0)
    new_leader = wait_leader(members)
    assert new_leader is not leader
    assert new_leader.raft.propose(rotate("after transfer"))["ok"]


# -- who may speak ---------------------------------------------------------------------------------

def _open(address: str, target: str, credentials: Any) -> tuple[Any, Any, Any]:
    """A raw Raft stream; returns (channel, call, send queue writer)."""
    import queue
    out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def frames() -> Iterator[pb.RaftFrame]:
        while (payload := out.get()) is not None:
            yield pb.RaftFrame(payload=payload)

    channel = grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", target)])
    call = pb_grpc.RaftStub(channel).Stream(frames())
    return channel, call, out


def _refusal(address: str, target: str, credentials: Any) -> grpc.StatusCode:
    channel, call, out = _open(address, target, credentials)
    try:
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        return info.value.code()
    finally:
        out.put(None)
        channel.close()


def test_foreign_ca_and_non_members_are_refused(cluster: Cluster) -> None:
    members = cluster.start(3)
    leader = wait_leader(members)
    assert leader.raft.propose(BOOTSTRAP)["ok"]
    target = members[0]
    address = cluster.addresses[target.node_id]

    # A manager certificate from another CA (with a member's ID, even): the TLS handshake fails.
    foreign = TestPKI.create()
    cert, key = foreign.issue(members[1].node_id)
    creds = grpc.ssl_channel_credentials(root_certificates=cluster.ca.cert, private_key=key,
                                         certificate_chain=cert)
    assert _refusal(address, target.node_id, creds) == grpc.StatusCode.UNAVAILABLE

    # A valid manager certificate of a node that is not a Raft member.
    stranger_id = ids.new_id()
    cert, key = cluster.ca.issue(stranger_id)
    assert _refusal(address, target.node_id, cluster.ca.channel_credentials(cert, key)) \
        == grpc.StatusCode.PERMISSION_DENIED
    # A worker certificate of a member.
    cert, key = cluster.ca.issue(members[1].node_id, role=pki.WORKER_ROLE)
    assert _refusal(address, target.node_id, cluster.ca.channel_credentials(cert, key)) \
        == grpc.StatusCode.PERMISSION_DENIED
    # A member that should be dialled by this one, not dial it.
    smaller = min(members, key=lambda m: m.node_id)
    larger = max(members, key=lambda m: m.node_id)
    assert _refusal(cluster.addresses[larger.node_id], larger.node_id,
                    cluster.ca.channel_credentials(smaller.cert, smaller.key)) \
        == grpc.StatusCode.FAILED_PRECONDITION

    # A whole store that was never added: it dials and listens, nobody takes it in.
    stranger = cluster.member(stranger_id).serve().start([m.node_id for m in members])
    time.sleep(1.5)  # give it time to dial and campaign: the point is that nothing happens
    assert not any(m.raft.is_connected(stranger_id) for m in members)
    assert leader.raft.is_leader() and leader.raft.members() == sorted(m.node_id for m in members)
    assert stranger.raft.leader_id() is None
    assert leader.raft.propose(rotate("unbothered"))["ok"]


def test_malformed_frames_from_a_member_do_not_stop_it(cluster: Cluster) -> None:
    members = cluster.start(3)
    leader = wait_leader(members)
    assert leader.raft.propose(BOOTSTRAP)["ok"]
    ordered = sorted(members, key=lambda m: m.node_id)
    acceptor, dialer = ordered[0], ordered[1]  # the larger ID dials, so ordered[1] dials ordered[0]

    # The dialer's own certificate: an authenticated member sending garbage. The new stream
    # replaces the dialer's real one, which is dialled again afterwards.
    channel, call, out = _open(cluster.addresses[acceptor.node_id], acceptor.node_id,
                               cluster.ca.channel_credentials(dialer.cert, dialer.key))
    try:
        assert next(call).payload == b""  # accepted
        for garbage in (b"\xc1", b"\xdd\xff\xff\xff\xff", b"not msgpack at all \x00\xff" * 100,
                        msgpack.packb({"type": "append_entries", "term": "x", "commit_index": 1}),
                        msgpack.packb({"type": "next_node_idx"}), msgpack.packb(["type", 1])):
            out.put(garbage)
        # A valid-looking message that pysyncobj cannot process is contained as well.
        out.put(msgpack.packb({"type": "apply_command_response", "request_id": 999_999}))
        wait_for(lambda: acceptor.raft.is_connected(dialer.node_id), 5, "the garbage stream to be taken")
        time.sleep(0.2)  # let the acceptor's tick thread chew on it (nothing to wait for: it drops it)
    finally:
        out.put(None)
        channel.close()

    assert acceptor.raft._tick_thread is not None and acceptor.raft._tick_thread.is_alive()
    for i in range(5):
        propose_anywhere(members, rotate(f"after garbage {i}"), timeout=5.0)
    wait_for(lambda: same_state(members, 6), 5, "replication to go on")
    wait_for(lambda: all_connected(members), 5, "the real stream to be dialled again")


def test_lost_and_silent_streams_are_reported_disconnected(cluster: Cluster) -> None:
    members = cluster.start(3)
    wait_leader(members)
    wait_for(lambda: all_connected(members), 5, "every stream")
    ordered = sorted(members, key=lambda m: m.node_id)
    acceptor, dialer = ordered[0], ordered[1]

    def pysyncobj_sees(m: Member, peer: Member) -> bool:
        return bool(m.raft.status()[f"partner_node_status_server_{peer.node_id}"] == 2)

    assert pysyncobj_sees(acceptor, dialer) and pysyncobj_sees(dialer, acceptor)
    # A member that goes away (store stopped, server still up): both views follow at once.
    assert dialer.store is not None
    dialer.store.stop()
    dialer.store = None
    wait_for(lambda: not acceptor.raft.is_connected(dialer.node_id), 2, "the acceptor to notice")
    assert not pysyncobj_sees(acceptor, dialer)

    # A peer whose stream stays open but silent (a hung process) is dropped after DEAD_AFTER.
    channel, call, out = _open(cluster.addresses[acceptor.node_id], acceptor.node_id,
                               cluster.ca.channel_credentials(dialer.cert, dialer.key))
    try:
        assert next(call).payload == b""
        wait_for(lambda: acceptor.raft.is_connected(dialer.node_id), 2, "the silent stream to be taken")
        opened = time.monotonic()
        with pytest.raises((StopIteration, grpc.RpcError)):
            for _ in call:  # heartbeats from the acceptor, until it gives up on us
                pass
            raise StopIteration
        elapsed = time.monotonic() - opened
        assert transport.DEAD_AFTER - 0.5 <= elapsed <= transport.DEAD_AFTER + 2
        # The drop reaches the tick thread just after the stream ends on our side.
        wait_for(lambda: not acceptor.raft.is_connected(dialer.node_id) and not pysyncobj_sees(acceptor, dialer),
                 2, "the silent stream to be reported disconnected")
    finally:
        out.put(None)
        channel.close()
    propose_anywhere(members, BOOTSTRAP, timeout=5.0)  # two of three still make a quorum


def test_stopping_a_store_is_bounded_and_leaves_no_threads(cluster: Cluster) -> None:
    members = cluster.start(3)
    wait_leader(members)
    wait_for(lambda: all_connected(members), 5, "every stream")
    before = threading.active_count()
    started = time.monotonic()
    for m in members:
        m.stop()
    assert time.monotonic() - started < 10
    wait_for(lambda: not raft_threads(), 5, "raft threads to end")
    assert threading.active_count() <= before
