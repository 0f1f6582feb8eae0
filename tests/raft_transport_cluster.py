"""Real Raft members for the transport tests: a gRPC server with mutual TLS on 127.0.0.1 (an
OS-assigned port), a PeerNetwork and a RaftStore each, certificates from a real test CA.

Also runnable (``python -m tests.raft_transport_cluster``) to measure the sequential write rate
of a 3-member cluster and the time from stopping the leader to the next committed write.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import ids, pki
from swarmd.store.machine import StateMachine, encode_op
from swarmd.store.raft import RaftStore, StoreError
from swarmd.server import start_remote_server
from swarmd.store.transport import PeerNetwork
from tests.harness import wait_for as harness_wait_for
from tests.storelib import INGRESS

CLUSTER = {"id": "c" * 25, "default_addr_pool": [], "subnet_size": 24,
           "join_tokens": {"worker": "w", "manager": "m"}}
NODE = {"id": "n" * 25, "labels": {}, "availability": "active"}

BOOTSTRAP = encode_op("bootstrap", cluster=CLUSTER, node=NODE, ingress=INGRESS)


def rotate(token: str) -> bytes:
    return encode_op("rotate_join_token", role="worker", token=token, now="x")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    return harness_wait_for(predicate, timeout, step=step, what=what)


@dataclass
class TestPKI:
    __test__ = False  # not a test class
    cert: bytes
    key: bytes
    cluster_id: str = field(default_factory=ids.new_id)

    @classmethod
    def create(cls) -> TestPKI:
        cert, key = pki.create_root_ca()
        return cls(cert, key)

    def issue(self, node_id: str, role: str = pki.MANAGER_ROLE) -> tuple[bytes, bytes]:
        """(certificate, key) PEM for ``node_id``."""
        key = pki.generate_key()
        cert = pki.sign_node_certificate(self.cert, self.key, pki.make_csr(key), node_id,
                                         self.cluster_id, role, timedelta(hours=2))
        return cert, pki.key_to_pem(key)

    def channel_credentials(self, cert: bytes, key: bytes) -> Any:
        return grpc.ssl_channel_credentials(root_certificates=self.cert, private_key=key,
                                            certificate_chain=cert)


class Member:
    """One manager: remote API server (Raft service only), PeerNetwork, RaftStore."""

    def __init__(self, node_id: str, root: Path, ca: TestPKI, addresses: dict[str, str]) -> None:
        self.node_id = node_id
        self.dir = root / node_id
        self.ca = ca
        self.addresses = addresses
        self.cert, self.key = ca.issue(node_id)
        self.server: Any = None
        self.network: PeerNetwork | None = None
        self.store: RaftStore | None = None
        self.machine = StateMachine()
        self.data_key = os.urandom(32)  # each manager seals its own journal under its own key

    def serve(self) -> Member:
        self.network = PeerNetwork(self.node_id, self.addresses.get,
                                   lambda: self.ca.channel_credentials(self.cert, self.key))
        network = self.network
        creds = grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca.cert,
                                            require_client_auth=True)
        ports: list[int] = []
        # The daemon's own remote API server (grpc.aio, Raft streams as coroutines on its loop).
        self.server = start_remote_server("127.0.0.1:0", creds, [],
                                          lambda server: pb_grpc.add_RaftServicer_to_server(network.servicer(), server),
                                          on_bound=ports.append)
        assert ports and ports[0] > 0
        self.addresses[self.node_id] = f"127.0.0.1:{ports[0]}"
        return self

    def start(self, peers: Iterable[str]) -> Member:
        assert self.network is not None
        self.machine = StateMachine()
        self.store = RaftStore(self.node_id, self.dir / "raft", self.machine, list(peers), network=self.network,
                               data_key=self.data_key)
        self.store.start()
        return self

    @property
    def raft(self) -> RaftStore:
        assert self.store is not None
        return self.store

    def stop(self) -> None:
        if self.store is not None:
            self.store.stop()
            self.store = None
        if self.network is not None:
            self.network.close()
            self.network = None
        if self.server is not None:
            self.server.stop(0)
            self.server = None


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = TestPKI.create()
        self.addresses: dict[str, str] = {}
        self.members: list[Member] = []

    def member(self, node_id: str | None = None) -> Member:
        m = Member(node_id or ids.new_id(), self.root, self.ca, self.addresses)
        self.members.append(m)
        return m

    def start(self, n: int) -> list[Member]:
        members = [self.member().serve() for _ in range(n)]
        everyone = [m.node_id for m in members]
        for m in members:
            m.start(everyone)
        return members

    def stop(self) -> None:
        for m in self.members:
            m.stop()


def running(members: Iterable[Member]) -> list[Member]:
    return [m for m in members if m.store is not None]


def leader_of(members: Iterable[Member]) -> Member | None:
    """The member every running member agrees is the leader, if any."""
    alive = running(members)
    leaders = {m.raft.leader_id() for m in alive}
    if len(leaders) != 1:
        return None
    (leader_id,) = leaders
    for m in alive:
        if m.node_id == leader_id and m.raft.is_leader():
            return m
    return None


def wait_leader(members: Iterable[Member], timeout: float = 10.0) -> Member:
    members = list(members)
    return wait_for(lambda: leader_of(members), timeout, "an agreed leader")  # type: ignore[no-any-return]


def converged(members: Iterable[Member]) -> bool:
    dumps = [m.machine.dump() for m in running(members)]
    return all(d == dumps[0] for d in dumps)


def propose_anywhere(members: list[Member], op: bytes, timeout: float) -> float:
    """Propose ``op`` on whoever leads until it commits; returns when it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        for m in running(members):
            if m.raft.is_leader():
                try:
                    if m.raft.propose(op, timeout=0.5)["ok"]:
                        return time.monotonic()
                except StoreError:
                    pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"no write committed within {timeout}s")
        time.sleep(0.01)


def raft_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith(("raft-dial-", "raft-recv-", "raft-tick"))]


def _bench_leader(members: list[Member], writes: int) -> tuple[float, float]:
    """(sequential writes/s on the leader, seconds from stopping the leader to the next commit)."""
    leader = wait_leader(members)
    leader.raft.propose(BOOTSTRAP)
    start = time.monotonic()
    for i in range(writes):
        leader.raft.propose(rotate(f"t{i}"))
    rate = writes / (time.monotonic() - start)
    stopped = time.monotonic()
    leader.stop()
    return rate, propose_anywhere(members, rotate("after"), 10.0) - stopped


def measure(rounds: int = 3, writes: int = 2000) -> dict[str, list[float]]:
    """Three members in this process (as the tests run them): one GIL for all three."""
    rates: list[float] = []
    failovers: list[float] = []
    for _ in range(rounds):
        root = Path(tempfile.mkdtemp(prefix="raft-measure-"))
        cluster = Cluster(root)
        try:
            rate, failover = _bench_leader(cluster.start(3), writes)
            rates.append(rate)
            failovers.append(failover)
        finally:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)
    return {"writes_per_s": rates, "failover_s": failovers}


def _member_process(node_id: str, everyone: list[str], ca: TestPKI, root: str, conn: Any) -> None:
    """One manager per process, driven over ``conn`` by ``measure_processes``."""
    addresses: dict[str, str] = {}
    member = Member(node_id, Path(root), ca, addresses).serve()
    conn.send(addresses[node_id])
    addresses.update(conn.recv())
    member.start(everyone)
    try:
        while True:
            command, arg = conn.recv()
            if command == "leader?":
                conn.send(member.raft.is_leader())
            elif command == "bench":
                member.raft.propose(BOOTSTRAP)
                start = time.monotonic()
                for i in range(arg):
                    member.raft.propose(rotate(f"t{i}"))
                conn.send(arg / (time.monotonic() - start))
            elif command == "stop":
                stopped = time.monotonic()  # CLOCK_MONOTONIC: comparable between processes
                member.stop()
                conn.send(stopped)
                return
            elif command == "write":
                try:
                    conn.send(propose_anywhere([member], rotate("after"), arg))
                except AssertionError:
                    conn.send(None)
            else:
                conn.send(None)
                return
    finally:
        member.stop()


def measure_processes(rounds: int = 3, writes: int = 2000) -> dict[str, list[float]]:
    """Three members, one process each (as managers run), on this machine."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    rates: list[float] = []
    failovers: list[float] = []
    for _ in range(rounds):
        root = tempfile.mkdtemp(prefix="raft-measure-")
        ca = TestPKI.create()
        everyone = [ids.new_id() for _ in range(3)]
        conns: dict[str, Any] = {}
        procs = []
        try:
            for node_id in everyone:
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_member_process, args=(node_id, everyone, ca, root, theirs))
                proc.start()
                procs.append(proc)
                conns[node_id] = mine
            addresses = {node_id: conns[node_id].recv() for node_id in everyone}
            for conn in conns.values():
                conn.send(addresses)

            def leader() -> str | None:
                for node_id, conn in conns.items():
                    conn.send(("leader?", None))
                    if conn.recv():
                        return node_id
                return None

            leader_id: str = wait_for(leader, 15, "a leader", step=0.05)
            conns[leader_id].send(("bench", writes))
            rates.append(conns[leader_id].recv())
            conns[leader_id].send(("stop", None))
            stopped = conns[leader_id].recv()
            survivors = [n for n in everyone if n != leader_id]
            for node_id in survivors:
                conns[node_id].send(("write", 10.0))
            committed = [t for t in (conns[n].recv() for n in survivors) if t is not None]
            failovers.append(min(committed) - stopped)
            for node_id in survivors:
                conns[node_id].send(("exit", None))
                conns[node_id].recv()
        finally:
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            shutil.rmtree(root, ignore_errors=True)
    return {"writes_per_s": rates, "failover_s": failovers}


if __name__ == "__main__":
    import json
    import logging
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps({"in_one_process": measure(), "one_process_each": measure_processes()}, indent=1))
