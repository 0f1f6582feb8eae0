"""Worker sessions and liveness, served by the leader (DESIGN §6).

Each node (workers and managers alike) holds one ``Session`` stream to the leader and sends a
unary ``Heartbeat`` every period. Heartbeats only touch memory; the store is written when a
node's state *changes*: Ready on a session or heartbeat after silence, Down after three missed
periods or at once on a graceful leave. Other managers refuse sessions with the leader's address,
so nodes move to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.errors import SwarmError
from swarmd.server import abort_on_error

if TYPE_CHECKING:
    from swarmd.node import NodeRuntime

log = logging.getLogger(__name__)

GRACE_MULTIPLIER = 3
NOT_LEADER = "this manager is not the leader"


def peer_ip(context: Any) -> str:
    """The caller's IP from gRPC's peer string (ipv4:1.2.3.4:5 / ipv6:[::1]:5)."""
    peer = str(context.peer())
    kind, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]") if kind in ("ipv4", "ipv6") else ""


class Dispatcher(pb_grpc.DispatcherServicer):
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime
        self._cond = threading.Condition()
        self._changes = 0
        self._last_seen: dict[str, float] = {}
        self._leader_since: float | None = None
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="dispatcher-reaper", daemon=True)
        self._reaper.start()

    def close(self) -> None:
        self._stop.set()
        self.notify()

    def notify(self) -> None:
        """Store changed (called on the apply thread): wake the session streams."""
        with self._cond:
            self._changes += 1
            self._cond.notify_all()

    # -- helpers -----------------------------------------------------------------------------------
    def _leader_manager(self) -> Any:
        manager = self.rt.require_manager()
        if not manager.is_leader():
            addr = manager.leader_addr() or ""
            raise SwarmError(f"{NOT_LEADER}; leader: {addr}", grpc.StatusCode.FAILED_PRECONDITION)
        return manager

    def _view(self, manager: Any, node_id: str) -> pb.SessionMessage:
        def get(state: dict[str, Any]) -> tuple[str | None, bool]:
            node = state["nodes"].get(node_id)
            return (node["role"] if node else None), node is None
        role, removed = manager.machine.read(get)
        return pb.SessionMessage(
            managers=[pb.RemoteManager(node_id=i, addr=a) for i, a in manager.managers()],
            heartbeat_period_ns=manager.heartbeat_ns(), desired_role=role or "", removed=removed,
            leader_addr=manager.leader_addr() or "")

    def _mark(self, manager: Any, node_id: str, **fields: Any) -> None:
        try:
            manager.set_node_status(node_id, **fields)
        except SwarmError as e:
            log.warning("could not record the status of %s: %s", node_id, e.message)

    # -- RPCs ----------------------------------------------------------------------------------------
    @abort_on_error
    def Session(self, request: pb.SessionRequest, context: Any) -> Iterator[pb.SessionMessage]:
        manager = self._leader_manager()
        node_id = self.rt.security_identity(context)
        self._last_seen[node_id] = time.monotonic()
        description = {k: getattr(request.description, k) for k in
                       ("hostname", "os", "architecture", "nano_cpus", "memory_bytes", "engine_version")
                       if getattr(request.description, k)}
        addr = request.advertise_addr.rpartition(":")[0].strip("[]") or peer_ip(context)
        self._mark(manager, node_id, state="ready", message="", addr=addr, **description)
        log.info("session opened by %s from %s", node_id, peer_ip(context))
        last: pb.SessionMessage | None = None
        seen = -1
        while context.is_active() and not self._stop.is_set() and manager.is_leader():
            view = self._view(manager, node_id)
            if view != last:
                yield view
                last = view
                if view.removed:
                    return
            with self._cond:
                if self._changes == seen:
                    self._cond.wait(1.0)
                seen = self._changes

    @abort_on_error
    def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        manager = self._leader_manager()
        node_id = self.rt.security_identity(context)
        if request.leaving:
            self._last_seen.pop(node_id, None)
            self._mark(manager, node_id, state="down", message="node is leaving")
            return pb.HeartbeatResponse(period_ns=manager.heartbeat_ns())
        previous = self._last_seen.get(node_id)
        self._last_seen[node_id] = time.monotonic()
        if previous is None:
            self._mark(manager, node_id, state="ready", message="")
        return pb.HeartbeatResponse(period_ns=manager.heartbeat_ns())

    # -- liveness ------------------------------------------------------------------------------------
    def _reap_loop(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self._reap()
            except Exception:  # noqa: BLE001 - the reaper must survive a failed write
                log.exception("liveness check failed")

    def _reap(self) -> None:
        manager = self.rt.manager
        if manager is None or not manager.is_leader():
            self._leader_since = None
            return
        now = time.monotonic()
        if self._leader_since is None:
            # A new leader gives every node a full grace period to find it.
            self._leader_since = now
            self._last_seen.clear()
        grace = GRACE_MULTIPLIER * manager.heartbeat_ns() / 1e9
        ready = manager.machine.read(lambda state: [n["id"] for n in state["nodes"].values()
                                                    if n.get("state") == "ready"])
        for node_id in ready:
            seen = self._last_seen.get(node_id, self._leader_since)
            if now - seen > grace:
                self._last_seen.pop(node_id, None)
                log.info("node %s missed %d heartbeats: down", node_id, GRACE_MULTIPLIER)
                self._mark(manager, node_id, state="down", message="heartbeat failure")
