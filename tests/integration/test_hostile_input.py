"""Hostile input against real daemons: oversized and malformed gRPC messages, malformed Raft
frames from an authenticated manager, and request fields a caller controls. In every case the
caller gets a clear status, the daemon keeps serving (the swarm keeps committing writes), the
log says what happened in one warning line and holds no traceback."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import msgpack  # type: ignore[import-untyped]
import pytest

from swarmd import wire
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import join, pki, tokens
from tests.harness import Daemon, leader_of, node_rows, node_tls, wait_for
from tests.harness import join as join_node

Factory = Callable[..., Daemon]
BIG = 5 << 20  # over the 4 MiB limit of both endpoints

CONTROL_METHODS = ["Info", "Version", "Init", "Join", "Leave", "GetCluster", "GetJoinToken", "ListNodes", "GetNode",
                   "UpdateNode", "RemoveNode", "ListNetworks", "GetNetwork", "CreateNetwork", "RemoveNetwork",
                   "GetUnlockKey"]
# Bytes no request message parses: a field 1 of wire type 7 (invalid), a length past the end,
# a truncated varint, a field shorter than its declared length.
MALFORMED = [b"\x0f", b"\x0a\xff\xff\xff\xff\x0f", b"\x08\xff", b"\x0a\x05ab"]


# -- helpers -----------------------------------------------------------------------------------------

def certificates(d: Daemon) -> tuple[bytes, bytes, bytes]:
    """(root, certificate, key) PEM from a node's state dir, as an intruder who copied them has
    (without autolock the key file is not sealed)."""
    return node_tls(d.state_dir)


def node_id_of(d: Daemon) -> str:
    return pki.identity_from_cert(certificates(d)[1]).node_id


def remote_channel(target: Daemon, as_node: Daemon, name: str = "swarm-manager",
                   max_send: int = 4 << 20) -> grpc.Channel:
    root, cert, key = certificates(as_node)
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(target.listen, creds, options=[("grpc.ssl_target_name_override", name),
                                                              ("grpc.max_send_message_length", max_send)])


def joiner_channel(manager: Daemon, role: str = "worker") -> grpc.Channel:
    """A channel authenticated by a join token only, as a joining node opens it."""
    token = manager.ok("join-token", "-q", role).strip()
    ca = join.join_ca(tokens.token_secret(token))
    key, cert = ca.client_credentials()
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(manager.listen, creds, options=[("grpc.ssl_target_name_override", ca.sni)])


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The error ``call(*args, **kwargs)`` fails with (it must fail)."""
    with pytest.raises(grpc.RpcError) as exc:
        call(*args, **kwargs)
    return exc.value


def assert_serving(*daemons: Daemon) -> None:
    for d in daemons:
        assert d.proc is not None and d.proc.poll() is None, f"{d.hostname} died:\n{d.log()[-3000:]}"
        assert d.info().local_node_state == "active"


def assert_no_traceback(*daemons: Daemon) -> None:
    for d in daemons:
        assert "Traceback" not in d.log(), f"{d.hostname} logged a traceback:\n{d.log()[-5000:]}"


def create_network(managers: list[Daemon], name: str, timeout: float = 30.0) -> None:
    """Commit one write through whichever manager answers (bounded: an election may be running)."""
    def attempt() -> bool:
        for d in managers:
            r = d.ctl("network", "create", name)
            if r.returncode == 0 or "already exists" in r.stderr:
                return True
        return False
    wait_for(attempt, timeout, step=0.2, what=f"the swarm to commit network {name}")


# -- oversized and malformed gRPC messages --------------------------------------------------------------

def test_oversized_messages_are_refused_on_both_endpoints(manager: Daemon) -> None:
    with grpc.insecure_channel(f"unix:{manager.socket}", options=[("grpc.max_send_message_length", 2 * BIG)]) as ch:
        stub = pb_grpc.ControlStub(ch)
        err = rpc_error(stub.GetNode, pb.GetNodeRequest(ref="x" * BIG), timeout=10)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Under the transport limit but over one write's limit: refused before it reaches Raft.
        err = rpc_error(stub.CreateNetwork, pb.CreateNetworkRequest(
            name="huge", labels={"k": "\x01" * (1 << 20)}), timeout=10)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details().startswith("request too large: the change takes ")

    with remote_channel(manager, manager, max_send=2 * BIG) as ch:
        err = rpc_error(pb_grpc.ControlStub(ch).GetNode, pb.GetNodeRequest(ref="x" * BIG), timeout=10)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with joiner_channel(manager) as ch:
        ch_stub = pb_grpc.CAStub(ch)
        request = pb.IssueNodeCertificateRequest(csr=b"x" * BIG)
        err = rpc_error(ch_stub.IssueNodeCertificate, request, timeout=10)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    assert_serving(manager)
    assert sorted(node_rows(manager)) == [manager.hostname]  # nothing was admitted or created
    assert "huge" not in manager.ok("network", "ls")
    manager.ok("network", "create", "after-oversized")
    assert_no_traceback(manager)


def test_malformed_protobuf_to_every_method(manager: Daemon) -> None:
    with grpc.insecure_channel(f"unix:{manager.socket}") as ch:
        for method in CONTROL_METHODS:
            call = ch.unary_unary(f"/swarm.v1.Control/{method}")
            for raw in MALFORMED:
                err = rpc_error(call, raw, timeout=10)
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, raw, err)
                assert err.details().startswith(f"malformed request to /swarm.v1.Control/{method}: ")
        assert_serving(manager)

    remote = {"Control": CONTROL_METHODS, "CA": ["GetRootCACertificate", "IssueNodeCertificate"],
              "RaftMembership": ["Join", "Leave"], "Dispatcher": ["Heartbeat"]}
    with remote_channel(manager, manager) as ch:
        for service, methods in remote.items():
            for method in methods:
                call = ch.unary_unary(f"/swarm.v1.{service}/{method}")
                err = rpc_error(call, MALFORMED[0], timeout=10)
                # Init, Join and Leave are for the local socket: authorisation comes first.
                local_only = service == "Control" and method in ("Init", "Join", "Leave")
                expected = grpc.StatusCode.PERMISSION_DENIED if local_only else grpc.StatusCode.INVALID_ARGUMENT
                assert err.code() == expected, (service, method, err)
        session = ch.unary_stream("/swarm.v1.Dispatcher/Session")
        err = rpc_error(next, session(MALFORMED[1], timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A joiner may not call the control API: it is refused before its bytes are looked at.
    with joiner_channel(manager) as ch:
        err = rpc_error(ch.unary_unary("/swarm.v1.Control/ListNodes"), MALFORMED[0], timeout=10)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        err = rpc_error(ch.unary_unary("/swarm.v1.CA/IssueNodeCertificate"), MALFORMED[1], timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert_serving(manager)
    manager.ok("network", "create", "after-malformed")
    log = manager.log()
    # One warning per malformed request, but at most a burst a minute: junk cannot flood the log.
    warnings = [line for line in log.splitlines() if "refused a malformed " in line]
    local = [w for w in warnings if "request from unix:" in w]
    remote = [w for w in warnings if "request from ipv4:" in w]
    assert len(CONTROL_METHODS) * len(MALFORMED) > wire.WARN_BURST  # more junk than the burst...
    assert len(local) == wire.WARN_BURST                            # ...but the log holds a burst
    assert 1 <= len(remote) <= wire.WARN_BURST and len(warnings) == len(local) + len(remote)
    assert_no_traceback(manager)


# -- malformed Raft frames from an authenticated manager ----------------------------------------------------

@dataclass
class RaftStream:
    """A Raft stream opened by hand with a copied manager certificate."""

    channel: grpc.Channel
    call: Any
    out: queue.SimpleQueue[bytes | None]

    def send(self, payload: bytes) -> None:
        self.out.put(payload)

    def close(self) -> None:
        self.out.put(None)
        self.call.cancel()
        self.channel.close()


def open_raft_stream(target: Daemon, as_node: Daemon) -> RaftStream:
    """Dial ``target``'s Raft service as ``as_node`` (whose node ID must be the larger one).

    The new stream replaces the member's own, so ``as_node`` should be stopped: it would
    otherwise dial again and replace this one in turn."""
    out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def frames() -> Iterator[pb.RaftFrame]:
        while (payload := out.get()) is not None:
            yield pb.RaftFrame(payload=payload)

    channel = remote_channel(target, as_node, name=node_id_of(target), max_send=2 * BIG)
    call = pb_grpc.RaftStub(channel).Stream(frames())
    assert next(call).payload == b""  # accepted, as the real peer would be
    return RaftStream(channel, call, out)


@pytest.fixture
def managers(daemons: Factory) -> list[Daemon]:
    nodes = [daemons(f"m{i}") for i in (1, 2, 3)]
    nodes[0].init()
    for d in nodes[1:]:
        assert join_node(d, nodes[0], "manager") == "This node joined a swarm as a manager.\n"
    wait_for(lambda: all(r[0] == "Ready" for r in node_rows(nodes[0]).values()), 20, what="three Ready managers")
    return sorted(nodes, key=node_id_of)


def impersonate(sender: Daemon, managers: list[Daemon]) -> list[Daemon]:
    """Stop ``sender`` (its certificate is used by hand from now on); the others keep quorum."""
    sender.stop()
    others = [d for d in managers if d is not sender]
    create_network(others, f"without-{sender.hostname}")
    return others


def rejoined(sender: Daemon, managers: list[Daemon]) -> None:
    """Start ``sender`` again: it must find its place back in the swarm."""
    sender.start()
    wait_for(lambda: all(r[0] == "Ready" and r[2] in ("Leader", "Reachable") for r in node_rows(managers[0]).values()),
             30, step=0.2, what="every manager Reachable again")
    create_network(managers, f"with-{sender.hostname}-back")


def test_malformed_raft_frames_do_not_stop_the_swarm(managers: list[Daemon]) -> None:
    target, middle, sender = managers  # the larger ID dials: sender's certificate may dial target
    sender_id = node_id_of(sender)
    alive = impersonate(sender, managers)
    stream = open_raft_stream(target, sender)
    garbage = [
        b"\xc1",                                             # never-used msgpack byte
        b"definitely not msgpack \x00\xff" * 50,
        msgpack.packb([1, 2, 3]),                            # valid msgpack, wrong shape
        msgpack.packb({"term": 1}),                          # no type
        msgpack.packb({"type": "install_snapshot_now"}),     # unknown type
        b"\xc6\xff\xff\xff\xff" + b"x" * 10,                 # a 4 GiB bin that is not there
        b"\xdd\xff\xff\xff\xff",                             # a 4 G element array
        b"\xdf\xff\xff\xff\xff",                             # a 4 G entry map
        msgpack.packb({"type": "request_vote", "term": "1", "last_log_index": 1, "last_log_term": 1}),
        msgpack.packb({"type": "append_entries", "term": 1, "commit_index": [1]}),
        msgpack.packb({"type": "append_entries", "term": 1, "commit_index": 1, "entries": [[b"x", -1, 1]]}),
        msgpack.packb({"type": "response_vote", "term": 1 << 64 - 1}),
        msgpack.packb({"type": "next_node_idx", "next_node_idx": 1, "reset": 1, "success": 1}),
        # Frames claiming to come from another member: the sender is the certificate, nothing else.
        msgpack.packb({"type": "response_vote", "term": 1, "node_id": node_id_of(middle)}),
        msgpack.packb({"type": "apply_command", "command": b"\x02membership change", "from": node_id_of(middle)}),
    ]
    try:
        for payload in garbage:
            stream.send(payload)
        wait_for(lambda: target.log().count(f"raft: dropped a bad frame from {sender_id}") >= 10, 10,
                 what="the bad frames to be dropped")
        create_network(alive, "after-garbage")
        # A frame over the 4 MiB limit ends the stream with RESOURCE_EXHAUSTED.
        stream.send(b"\x00" * BIG)
        err = rpc_error(list, stream.call)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stream.close()
    create_network(alive, "after-oversized-frame")

    # An endless stream of junk: dropped frame by frame, then the stream is closed.
    stream = open_raft_stream(target, sender)
    try:
        for i in range(2000):
            stream.send(b"\xc1junk" + i.to_bytes(4, "big"))
        wait_for(lambda: f"raft: closing the stream with {sender_id}: 100 bad frames in a row" in target.log(), 15,
                 what="the junk stream to be closed")
    finally:
        stream.close()
    create_network(alive, "after-junk")
    rejoined(sender, managers)
    assert_serving(*managers)
    assert_no_traceback(*managers)


def test_raft_messages_of_the_right_shape_but_hostile_content(managers: list[Daemon]) -> None:
    sender = managers[-1]  # the largest node ID: its certificate may dial either of the others
    alive = impersonate(sender, managers)
    target = leader_of(alive)  # a follower answers a forwarded write with "not the leader"
    stream = open_raft_stream(target, sender)
    high = 10**6  # a term above the swarm's, so pysyncobj takes the messages in
    try:
        # A forwarded write that is not one our apply makes (a pickle of nothing): the leader
        # appends it, every member skips it alike instead of retrying it forever.
        # (Sent again until it lands: a member that knows no leader at that moment drops it.)
        def forwarded_and_skipped() -> bool:
            if all("raft: skipping a log entry that cannot be applied" in d.log() for d in alive):
                return True
            stream.send(msgpack.packb({"type": "apply_command", "command": b"\x00not a pickle", "request_id": 1}))
            return False
        wait_for(forwarded_and_skipped, 30, step=1.0, what="every member to skip the entry")
        create_network(alive, "after-bad-write")
        # Chunks of a log entry that continue no transfer, then a transfer of garbage.
        base = {"type": "append_entries", "term": high, "commit_index": 0, "prevLogIdx": 0, "prevLogTerm": 0}
        stream.send(msgpack.packb({**base, "transmission": "process", "data": b"\x80\x02junk"}))
        stream.send(msgpack.packb({**base, "transmission": "finish", "data": b"junk"}))
        wait_for(lambda: target.log().count("that continues no transfer it started") >= 2, 10,
                 what="the stray chunks to be dropped")
        # A higher term again, in case the target campaigned meanwhile: pysyncobj must take these.
        base["term"] = 2 * high
        stream.send(msgpack.packb({**base, "transmission": "start", "data": b"\x80\x02c__builtin__\neval\n"}))
        stream.send(msgpack.packb({**base, "transmission": "finish", "data": b"(S'1'\ntR."}))
        wait_for(lambda: "could not be handled: UnpicklingError" in target.log(), 10,
                 what="the unpicklable entry to be refused")
    finally:
        stream.close()
    create_network(alive, "after-hostile-raft", timeout=45)
    rejoined(sender, managers)
    # The skipped entry was skipped by the member that was away too, when it caught up.
    wait_for(lambda: "raft: skipping a log entry that cannot be applied" in sender.log(), 15,
             what="the returning member to skip the entry as well")
    assert_serving(*managers)
    assert_no_traceback(*managers)


def test_raft_stream_needs_a_member_manager_certificate(managers: list[Daemon], daemons: Factory) -> None:
    target, _, sender = managers
    worker = daemons("w1")
    join_node(worker, managers[0])
    for as_node, name in ((worker, node_id_of(target)), (target, node_id_of(sender))):
        # A worker certificate; and a member that should be dialled, not dial (wrong direction).
        dest = sender if as_node is target else target
        with remote_channel(dest, as_node, name=name if as_node is worker else node_id_of(dest)) as ch:
            call = pb_grpc.RaftStub(ch).Stream(iter([pb.RaftFrame(payload=b"\xc1")]))
            err = rpc_error(next, call)
            assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION), err
    create_network(managers, "after-refusals")
    assert_serving(*managers, worker)


# -- request fields a caller controls ---------------------------------------------------------------------

def test_join_requests_with_hostile_fields_are_refused(manager: Daemon) -> None:
    key = pki.generate_key()
    good_csr = pki.make_csr(key)
    root = certificates(manager)[0]
    bad = [
        (pb.IssueNodeCertificateRequest(csr=b"not a csr"), "invalid CSR"),
        (pb.IssueNodeCertificateRequest(csr=b""), "invalid CSR"),
        (pb.IssueNodeCertificateRequest(csr=root), "invalid CSR"),
        (pb.IssueNodeCertificateRequest(csr=good_csr, availability="root"), 'invalid availability "root"'),
        (pb.IssueNodeCertificateRequest(csr=good_csr, advertise_addr="evil.example.com:2377"),
         'invalid advertise address "evil.example.com:2377": it must be <ip>:<port>'),
        (pb.IssueNodeCertificateRequest(csr=good_csr, advertise_addr="10.0.0.1:2377\nforged log line"),
         'invalid advertise address "10.0.0.1:2377\\nforged log line"'),
        (pb.IssueNodeCertificateRequest(csr=good_csr, description=pb.NodeDescription(hostname="h\nx")),
         'invalid node description: hostname must be at most 255 printable characters, got "h\\nx"'),
        (pb.IssueNodeCertificateRequest(csr=good_csr, description=pb.NodeDescription(hostname="h" * 300)),
         "invalid node description: hostname must be at most 255 printable characters"),
        (pb.IssueNodeCertificateRequest(csr=good_csr, description=pb.NodeDescription(memory_bytes=-1)),
         "invalid node description: memory_bytes cannot be negative (-1)"),
    ]
    with joiner_channel(manager) as ch:
        stub = pb_grpc.CAStub(ch)
        for request, message in bad:
            err = rpc_error(stub.IssueNodeCertificate, request, timeout=10)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(message), err
            assert "\n" not in err.details()
        # The same request with sane fields is admitted: the refusals were about the fields.
        ok = stub.IssueNodeCertificate(pb.IssueNodeCertificateRequest(
            csr=good_csr, advertise_addr=":2377", description=pb.NodeDescription(hostname="sane")), timeout=10)
    assert sorted(node_rows(manager)) == sorted([manager.hostname, "sane"])

    # The admitted worker's own session: its description is checked again there.
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=pki.key_to_pem(key),
                                         certificate_chain=ok.certificate)
    with grpc.secure_channel(manager.listen, creds, options=[("grpc.ssl_target_name_override", "swarm-manager")]) as ch:
        session = pb_grpc.DispatcherStub(ch).Session(pb.SessionRequest(
            description=pb.NodeDescription(hostname="\x1b[31mred"), advertise_addr="1.2.3.4:1"), timeout=10)
        err = rpc_error(next, session)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "hostname" in err.details()
        err = rpc_error(next, pb_grpc.DispatcherStub(ch).Session(
            pb.SessionRequest(advertise_addr="[::1"), timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "invalid advertise address" in err.details()
    # A manager asking to join Raft at an address that is none.
    with remote_channel(manager, manager) as ch:
        for addr in ("", "no-port", "1.2.3.4:5\r\n", "x" * 400):
            err = rpc_error(pb_grpc.RaftMembershipStub(ch).Join, pb.RaftJoinRequest(addr=addr), timeout=10)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "in raft join request" in err.details()
    assert_serving(manager)
    assert node_rows(manager)["sane"][0] in ("Unknown", "Down", "Ready")
    assert_no_traceback(manager)


def test_node_and_network_requests_with_bad_values(manager: Daemon) -> None:
    node_id = manager.info().node_id
    with grpc.insecure_channel(f"unix:{manager.socket}") as ch:
        stub = pb_grpc.ControlStub(ch)
        err = rpc_error(stub.UpdateNode, pb.UpdateNodeRequest(ref=node_id, role="root"), timeout=10)
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               'invalid role "root", only worker and manager are supported')
        bad_networks = [
            (pb.CreateNetworkRequest(name="a\nb"), "name must be valid as a DNS name component"),
            (pb.CreateNetworkRequest(name="n" * 64), "name must be 63 characters or fewer"),
            (pb.CreateNetworkRequest(name="ia", ingress=True, attachable=True), "ingress network cannot be attachable"),
            (pb.CreateNetworkRequest(name="mask", ipam=[pb.IPAMConfig(subnet="10.9.0.0/255.255.0.0")]),
             "invalid CIDR address: 10.9.0.0/255.255.0.0"),
            (pb.CreateNetworkRequest(name="many", ipam=[pb.IPAMConfig()] * 17), "too many IPAM configurations: 17"),
        ]
        for request, message in bad_networks:
            err = rpc_error(stub.CreateNetwork, request, timeout=10)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details(), err
    assert node_rows(manager)[manager.hostname][2] == "Leader"
    assert manager.ok("network", "ls", "-q").count("\n") == 1  # only ingress
    assert_serving(manager)
    assert_no_traceback(manager)


def test_init_refuses_a_listen_port_it_cannot_bind(daemon: Daemon) -> None:
    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        for port, why in (("99999", "address 99999: invalid port"), ("http", "lookup tcp/http: unknown port")):
            err = rpc_error(pb_grpc.ControlStub(ch).Init, pb.InitRequest(
                listen_addr=f"{daemon.ip}:{port}", advertise_addr=daemon.ip), timeout=30)
            assert err.details() == f"manager stopped: failed to listen on remote API address: listen tcp: {why}"
    assert daemon.info().local_node_state == "inactive"


@pytest.mark.parametrize("args, stderr", [
    (["--data-path-port", "²"], ('invalid argument "²" for "--data-path-port" flag: '
                                 'strconv.ParseUint: parsing "²": invalid syntax\n')),
    (["--task-history-limit", "1_"], ('invalid argument "1_" for "--task-history-limit" flag: '
                                      'strconv.ParseInt: parsing "1_": invalid syntax\n')),
    (["--cert-expiry", " 5h"], 'invalid argument " 5h" for "--cert-expiry" flag: time: invalid duration " 5h"\n'),
    (["--dispatcher-heartbeat", "5\u00d7"], ('invalid argument "5\u00d7" for "--dispatcher-heartbeat" flag: '
                                            'time: unknown unit "\\xc3\\x97" in duration "5\\xc3\\x97"\n')),
    (["--default-addr-pool", "10.0.0.0/255.0.0.0"],
     ('invalid argument "10.0.0.0/255.0.0.0" for "--default-addr-pool" flag: invalid CIDR address: '
      '10.0.0.0/255.0.0.0\n')),
])
def test_cli_flags_refuse_what_go_refuses_in_one_line(daemon: Daemon, args: list[str], stderr: str) -> None:
    r = daemon.ctl("init", *args)
    assert r.returncode == 125 and r.stderr.startswith(stderr), r.stderr
    assert "Traceback" not in r.stderr
    assert daemon.info().local_node_state == "inactive"


def test_hex_data_path_port_is_accepted_as_docker_does(daemon: Daemon) -> None:
    assert "Swarm initialized" in daemon.init("--data-path-port", "0x1300")
    assert "  Data Path Port: 4864\n" in daemon.ok("info")
