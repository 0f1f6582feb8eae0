"""Writers and readers through every manager while faults are injected, and the checks that
must hold afterwards (tests/integration/test_faults.py, tests/netns/test_partition_reads_netns.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from tests.harness import Daemon, wait_for

NO_LEADER = ("rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few "
             "managers are online. Make sure more than half of the managers are online.")
DOCUMENTED_PREFIXES = ("the write did not commit: ",)


def documented(details: str) -> bool:
    return details == NO_LEADER or details.startswith(DOCUMENTED_PREFIXES)


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[str] = field(default_factory=list)
    undocumented: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    reads: int = 0

    def acknowledged(self) -> set[str]:
        with self.lock:
            return set(self.acked)


def stub(d: Daemon) -> tuple[grpc.Channel, pb_grpc.ControlStub]:
    channel = grpc.insecure_channel(f"unix:{d.socket}")
    return channel, pb_grpc.ControlStub(channel)


def network_names(control: pb_grpc.ControlStub) -> set[str]:
    return {n.name for n in control.ListNetworks(pb.ListNetworksRequest(), timeout=30).networks}


def failed(ledger: Ledger, who: str, e: grpc.RpcError) -> None:
    details = e.details() or ""
    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # The daemon asked is down or frozen: the CLI's own "Cannot connect" / "timed out waiting"
        # (the daemon never answers these codes itself).
        return
    if not documented(details):
        with ledger.lock:
            (ledger.duplicates if "already exists" in details else ledger.undocumented).append(f"{who}: {details}")


def writer(d: Daemon, ledger: Ledger, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        name = f"{d.hostname}-{n}"
        channel, control = stub(d)
        try:
            control.CreateNetwork(pb.CreateNetworkRequest(name=name), timeout=30)
            with ledger.lock:
                ledger.acked.append(name)
        except grpc.RpcError as e:
            failed(ledger, f"create {name} on {d.hostname}", e)
            stop.wait(0.05)
        finally:
            channel.close()


def reader(d: Daemon, ledger: Ledger, stop: threading.Event) -> None:
    while not stop.is_set():
        before = ledger.acknowledged()
        channel, control = stub(d)
        try:
            missing = before - network_names(control)
            with ledger.lock:
                ledger.reads += 1
                if missing:
                    ledger.stale.append(f"read on {d.hostname} missed {sorted(missing)[:5]}")
        except grpc.RpcError as e:
            failed(ledger, f"read on {d.hostname}", e)
            stop.wait(0.05)
        finally:
            channel.close()


def leader(managers: list[Daemon]) -> Daemon:
    def find() -> Daemon | None:
        for d in managers:
            channel, control = stub(d)
            try:
                nodes = control.ListNodes(pb.ListNodesRequest(), timeout=5).nodes
            except grpc.RpcError:
                continue
            finally:
                channel.close()
            for node in nodes:
                if node.HasField("manager_status") and node.manager_status.leader:
                    return next((m for m in managers if m.hostname == node.hostname), None)
        return None
    found: Daemon = wait_for(find, 30, step=0.1, what="a leader")
    return found


def progress(ledger: Ledger, after: int, timeout: float, what: str) -> None:
    wait_for(lambda: len(ledger.acknowledged()) > after, timeout, step=0.05, what=what)


@contextmanager
def load(managers: list[Daemon]) -> Iterator[Ledger]:
    """A writer and a reader through each manager for the duration of the block; then the
    invariants are checked and every manager must converge on the same networks."""
    ledger, stop = Ledger(), threading.Event()
    threads = [threading.Thread(target=fn, args=(m, ledger, stop), daemon=True)
               for m in managers for fn in (writer, reader)]
    for t in threads:
        t.start()
    try:
        yield ledger
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not ledger.undocumented, ledger.undocumented[:10]
    assert not ledger.duplicates, ledger.duplicates[:10]
    assert not ledger.stale, ledger.stale[:10]
    assert ledger.reads > 0
    acked = ledger.acknowledged()

    def converged() -> bool:
        seen = []
        for m in managers:
            channel, control = stub(m)
            try:
                seen.append(network_names(control))
            except grpc.RpcError:
                return False
            finally:
                channel.close()
        return all(s == seen[0] for s in seen) and acked <= seen[0]
    wait_for(converged, 30, step=0.2, what=f"every manager to hold the {len(acked)} acknowledged networks")
