"""What a holder of a worker certificate or a join token can make a manager store.

A hostile client with a real worker certificate (admitted through the real token-bound
handshake, with a key of its own) sends sessions and heartbeats whose TLS fields are huge,
foreign or different on every call; a joiner admits nodes as fast as it can and reuses a key.
The store (its Raft index, read through the version of a probe write, and the size of ``raft/``)
must not grow with the number of calls, the node's TLS state must be the one of the certificate
the manager verified, and admissions beyond the limits are refused with their text.
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import join, pki, servicer, tokens
from swarmd.manager import dispatcher
from tests.harness import Daemon, node_rows, node_tls, wait_for

CALL_TIMEOUT = 15.0
MIB = 1 << 20
_probes = itertools.count()


# -- helpers -----------------------------------------------------------------------------------------

@dataclass
class Admitted:
    node_id: str
    cert: bytes
    key: ec.EllipticCurvePrivateKey


def joiner_channel(manager: Daemon, token: str) -> grpc.Channel:
    """A channel authenticated by a join token only, as a joining node opens it."""
    ca = join.join_ca(tokens.token_secret(token))
    key, cert = ca.client_credentials()
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(manager.listen, creds, options=[("grpc.ssl_target_name_override", ca.sni)])


def admit(manager: Daemon, token: str, key: ec.EllipticCurvePrivateKey | None = None,
          hostname: str = "hostile") -> Admitted:
    key = key or pki.generate_key()
    with joiner_channel(manager, token) as ch:
        resp = pb_grpc.CAStub(ch).IssueNodeCertificate(pb.IssueNodeCertificateRequest(
            csr=pki.make_csr(key), description=pb.NodeDescription(hostname=hostname)), timeout=CALL_TIMEOUT)
    return Admitted(resp.node_id, resp.certificate, key)


def node_channel(manager: Daemon, node: Admitted) -> grpc.Channel:
    root = node_tls(manager.state_dir)[0]
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=pki.key_to_pem(node.key),
                                         certificate_chain=node.cert)
    return grpc.secure_channel(manager.listen, creds, options=[("grpc.ssl_target_name_override", "swarm-manager"),
                                                               ("grpc.max_send_message_length", 8 * MIB)])


def raft_index(manager: Daemon) -> int:
    """The Raft index now: the version of a probe write (so the probe itself counts one)."""
    with grpc.insecure_channel(f"unix:{manager.socket}") as ch:
        resp = pb_grpc.ControlStub(ch).CreateNetwork(pb.CreateNetworkRequest(name=f"probe-{next(_probes)}"),
                                                     timeout=CALL_TIMEOUT)
    return int(resp.network.version)


def raft_bytes(manager: Daemon) -> int:
    return sum(p.stat().st_size for p in (manager.state_dir / "raft").rglob("*") if p.is_file())


def get_node(manager: Daemon, node_id: str) -> pb.Node:
    with grpc.insecure_channel(f"unix:{manager.socket}") as ch:
        return pb_grpc.ControlStub(ch).GetNode(pb.GetNodeRequest(ref=node_id), timeout=CALL_TIMEOUT).node


def spki_b64(cert_pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def junk_root(i: int, size: int) -> str:
    """A "trust root" of ``size`` bytes that differs on every call."""
    head = f"-----BEGIN CERTIFICATE-----\n{i:012d}"
    return head + "A" * (size - len(head))


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        call(*args, **kwargs)
    return exc.value


@contextmanager
def session(stub: pb_grpc.DispatcherStub, request: pb.SessionRequest) -> Iterator[Any]:
    """A session stream, open once the manager answered it (it has recorded the node by then)."""
    call = stub.Session(request, timeout=60)
    try:
        next(call)
        yield call
    finally:
        call.cancel()


def worker_token(manager: Daemon) -> str:
    return manager.ok("join-token", "-q", "worker").strip()


def node_count(manager: Daemon) -> int:
    return len(manager.ok("node", "ls", "-q").split())


# -- tls_info, sessions and heartbeats ------------------------------------------------------------------

def test_tls_fields_a_worker_sends_never_reach_the_store(manager: Daemon) -> None:
    hostile = admit(manager, worker_token(manager))
    root_pem = node_tls(manager.state_dir)[0]
    foreign_root, _ = pki.create_root_ca()
    with node_channel(manager, hostile) as ch:
        stub = pb_grpc.DispatcherStub(ch)
        with session(stub, pb.SessionRequest(tls_info=pb.TLSInfo(trust_root=root_pem.decode()))):
            pass
        wait_for(lambda: get_node(manager, hostile.node_id).state == "ready", 15, what="the hostile node Ready")
        before_index, before_bytes = raft_index(manager), raft_bytes(manager)

        # Heartbeats with a 1.4 MB trust root and forged issuer fields, different on every call.
        for i in range(20):
            stub.Heartbeat(pb.HeartbeatRequest(tls_info=pb.TLSInfo(
                trust_root=junk_root(i, 1400 * 1024), cert_issuer_subject=f"forged-{i}" * 1000,
                cert_issuer_public_key=f"forged-key-{i}")), timeout=CALL_TIMEOUT)
        # Sessions likewise, with a description that changes too (the store keeps the admitted one).
        for i in range(10):
            request = pb.SessionRequest(
                description=pb.NodeDescription(hostname=f"renamed-{i}"),
                tls_info=pb.TLSInfo(trust_root=junk_root(i, MIB), cert_issuer_public_key=spki_b64(foreign_root)))
            with session(stub, request):
                pass
        # A well-formed root of another cluster, claimed as issuer and trust root.
        stub.Heartbeat(pb.HeartbeatRequest(tls_info=pb.TLSInfo(
            trust_root=foreign_root.decode(), cert_issuer_public_key=spki_b64(foreign_root))), timeout=CALL_TIMEOUT)
        after_index = raft_index(manager)

    # The probe itself is the one write in between (one more is tolerated: the manager's own
    # node may change state meanwhile); before the fix each of the 31 calls was written.
    assert after_index - before_index <= 2
    assert raft_bytes(manager) - before_bytes < 256 << 10
    node = get_node(manager, hostile.node_id)
    subject, public_key = pki.tls_info(root_pem)
    assert (node.tls_info.trust_root, node.tls_info.cert_issuer_subject, node.tls_info.cert_issuer_public_key) == (
        root_pem.decode(), subject, public_key)
    assert public_key == spki_b64(root_pem)  # the CA that signed the certificate the manager verified
    assert node.hostname == "hostile" and node.state == "ready"
    assert "Traceback" not in manager.log()


def test_trust_root_is_recorded_only_when_it_is_a_cluster_root(manager: Daemon) -> None:
    """A node that claims another cluster's root (as trust root and issuer) shows this one's: the
    claim is not a cluster root, and the issuer is the one of the certificate it connected with."""
    hostile = admit(manager, worker_token(manager))
    root_pem = node_tls(manager.state_dir)[0]
    foreign_root, _ = pki.create_root_ca()
    with node_channel(manager, hostile) as ch:
        stub = pb_grpc.DispatcherStub(ch)
        foreign = pb.TLSInfo(trust_root=foreign_root.decode(), cert_issuer_subject=pki.tls_info(foreign_root)[0],
                             cert_issuer_public_key=pki.tls_info(foreign_root)[1])
        with session(stub, pb.SessionRequest(tls_info=foreign)):
            pass
        node = wait_for(lambda: (n := get_node(manager, hostile.node_id)).state == "ready" and n, 15,
                        what="the hostile node Ready")
    assert node.tls_info.trust_root == root_pem.decode()
    assert node.tls_info.cert_issuer_public_key == spki_b64(root_pem)


def test_status_writes_per_node_are_rate_limited(manager: Daemon) -> None:
    hostile = admit(manager, worker_token(manager))
    with node_channel(manager, hostile) as ch:
        stub = pb_grpc.DispatcherStub(ch)
        with session(stub, pb.SessionRequest()):
            pass
        wait_for(lambda: get_node(manager, hostile.node_id).state == "ready", 15, what="the hostile node Ready")
        started, before = time.monotonic(), raft_index(manager)
        # Every call is a real change: the address moves at each session, and each pair of
        # heartbeats is a Down (leaving) and a Ready again.
        for i in range(40):
            with session(stub, pb.SessionRequest(advertise_addr=f"10.9.9.{i % 2 + 1}:2377")):
                pass
            stub.Heartbeat(pb.HeartbeatRequest(leaving=True), timeout=CALL_TIMEOUT)
            stub.Heartbeat(pb.HeartbeatRequest(), timeout=CALL_TIMEOUT)
        writes = raft_index(manager) - before - 1
        elapsed = time.monotonic() - started
        allowed = dispatcher.STATUS_WRITES.burst + dispatcher.STATUS_WRITES.per_second * elapsed
        # Each allowed change may also be followed by the liveness check's Down. Unlimited, the
        # sessions alone would be 40 writes.
        assert writes <= 2 * allowed + 1, (writes, elapsed)

        # What was deferred is written at a later heartbeat: the node that heartbeats ends up
        # Ready at the address of its last session.
        def caught_up() -> bool:
            stub.Heartbeat(pb.HeartbeatRequest(), timeout=CALL_TIMEOUT)
            node = get_node(manager, hostile.node_id)
            return node.state == "ready" and node.addr == "10.9.9.2"
        wait_for(caught_up, 30, step=0.5, what="the deferred status to be written")
    assert "Traceback" not in manager.log()


def test_a_new_session_replaces_the_nodes_older_ones(manager: Daemon) -> None:
    """One worker certificate holds one session stream (one server thread), however many it opens."""
    hostile = admit(manager, worker_token(manager))
    with node_channel(manager, hostile) as ch:
        stub = pb_grpc.DispatcherStub(ch)
        older = [stub.Session(pb.SessionRequest(), timeout=20) for _ in range(5)]
        for call in older:
            next(call)  # answered: registered, and the one before it replaced
        with session(stub, pb.SessionRequest()) as newest:
            for call in older:
                list(call)  # ends (rather than running to its deadline)
                assert call.code() == grpc.StatusCode.OK
            assert newest.is_active()
        wait_for(lambda: get_node(manager, hostile.node_id).state == "ready", 15, what="the node Ready")


def test_oversized_csr_is_refused_for_joiners_and_renewals(manager: Daemon) -> None:
    huge = b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * (100 << 10)
    expected = f"invalid CSR: {len(huge)} bytes, at most {servicer.MAX_CSR}"
    token = worker_token(manager)
    with joiner_channel(manager, token) as ch:
        err = rpc_error(pb_grpc.CAStub(ch).IssueNodeCertificate, pb.IssueNodeCertificateRequest(csr=huge),
                        timeout=CALL_TIMEOUT)
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, expected)
    worker = admit(manager, token)
    with node_channel(manager, worker) as ch:
        err = rpc_error(pb_grpc.CAStub(ch).IssueNodeCertificate, pb.IssueNodeCertificateRequest(csr=huge),
                        timeout=CALL_TIMEOUT)
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, expected)
    assert node_count(manager) == 2


# -- admissions ---------------------------------------------------------------------------------------

def test_a_csr_key_admits_one_node(manager: Daemon) -> None:
    token = worker_token(manager)
    key = pki.generate_key()
    admit(manager, token, key, hostname="first")
    err = rpc_error(admit, manager, token, key, hostname="second")
    assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, KEY_REUSED)
    # ...nor through the manager token.
    err = rpc_error(admit, manager, manager.ok("join-token", "-q", "manager").strip(), key, hostname="third")
    assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, KEY_REUSED)
    assert sorted(node_rows(manager)) == sorted([manager.hostname, "first"])
    admit(manager, token, hostname="fresh-key")  # a new key is admitted as before


KEY_REUSED = ("rpc error: code = AlreadyExists desc = a node already joined the swarm with this certificate "
              "signing request's key; every node must make its own key")
RETRY = r"; retry in \d+s"


def test_admissions_from_one_source_are_rate_limited(daemons: Callable[..., Daemon]) -> None:
    manager = daemons("m1", extra_env={"SWARMD_JOIN_RATE_LIMITS": "token:100:0.001,source:3:0.001"})
    manager.init()
    token = worker_token(manager)
    for i in range(3):
        admit(manager, token, hostname=f"ok-{i}")
    err = rpc_error(admit, manager, token, hostname="over")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.fullmatch(r"rpc error: code = ResourceExhausted desc = source (127\.[0-9.]+) exceeded rate limit "
                        r"count of admissions" + RETRY, err.details()), err.details()
    # A real join from the same source gets the same answer, and stays out of the swarm.
    worker = daemons("w1")
    r = worker.ctl("join", "--token", token, "--advertise-addr", worker.ip, "--listen-addr", worker.listen,
                   manager.listen)
    assert r.returncode == 1, r
    assert re.fullmatch(r"Error response from daemon: rpc error: code = ResourceExhausted desc = source "
                        r"127\.[0-9.]+ exceeded rate limit count of admissions" + RETRY + "\n", r.stderr), r.stderr
    assert worker.info().local_node_state == "inactive"
    assert node_count(manager) == 4
    assert "refused a join from 127." in manager.log()


def test_admissions_per_join_token_are_rate_limited(daemons: Callable[..., Daemon]) -> None:
    manager = daemons("m1", extra_env={"SWARMD_JOIN_RATE_LIMITS": "token:3:0.001,source:100:0.001"})
    manager.init()
    token = worker_token(manager)
    for i in range(3):
        admit(manager, token, hostname=f"ok-{i}")
    err = rpc_error(admit, manager, token, hostname="over")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.fullmatch(r"rpc error: code = ResourceExhausted desc = join token exceeded rate limit count of "
                        r"admissions" + RETRY, err.details()), err.details()
    assert token not in err.details() and tokens.token_secret(token) not in manager.log()
    # A rotated token is another token: the operator's way out after a flood.
    manager.ok("join-token", "--rotate", "-q", "worker")
    admit(manager, worker_token(manager), hostname="after-rotation")
    assert node_count(manager) == 5


def test_a_fleet_from_one_source_joins_within_the_default_limits(manager: Daemon) -> None:
    """The defaults let a burst of joins from one address through (bench/load_joins.py runs 1,000)."""
    token = worker_token(manager)
    for i in range(30):
        admit(manager, token, hostname=f"fleet-{i:02d}")
    assert node_count(manager) == 31
