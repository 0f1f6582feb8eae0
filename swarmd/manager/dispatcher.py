"""Worker sessions and liveness, served by the leader (DESIGN §6).

Each node (workers and managers alike) holds one ``Session`` stream to the leader and sends a
unary ``Heartbeat`` every period. Heartbeats only touch memory; the store is written when a
node's state *changes*: Ready on a session or heartbeat after silence, Down after three missed
periods or at once on a graceful leave. Other managers refuse sessions with the leader's address,
so nodes move to it.

What a node reports is kept in memory and written only where it differs from the store, and no
more often than ``STATUS_WRITES`` allows per node: a burst, then one write per default heartbeat
period. A write the budget does not allow waits for the node's next heartbeat, which tries again,
so the store still ends up right. A node's TLS state comes from the certificate its connection was
verified with (``Manager.tls_fields``), never from the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any


from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd import errors
from swarmd.errors import SwarmError
from swarmd.manager import fields
from swarmd.manager.leadership import LeaderLoop
from swarmd.manager.manager import effective_role
from swarmd.ratelimit import Buckets, Limit
from swarmd.server import abort_on_error

if TYPE_CHECKING:
    from swarmd.node.runtime import NodeRuntime

log = logging.getLogger(__name__)

GRACE_MULTIPLIER = 3
REAP_PERIOD = 0.25
# Store writes one node's reports may cause: 10 at once (a session, a renewal, a rotation, a
# leave and a return all fit), then one per 5 s (the default heartbeat period).
STATUS_WRITES = Limit(burst=10, per_second=0.2)
MAX_TRACKED_NODES = 1 << 17
PRUNE_PERIOD = 30.0


def peer_ip(context: Any) -> str:
    """The caller's IP from gRPC's peer string (ipv4:1.2.3.4:5 / ipv6:[::1]:5)."""
    peer = str(context.peer())
    kind, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]") if kind in ("ipv4", "ipv6") else ""


class _View:
    """What the leader tells every session, computed once per store change."""

    def __init__(self, managers: list[tuple[str, str]], heartbeat_ns: int, leader_addr: str,
                 roles: dict[str, tuple[str, bool]], root_ca: bytes) -> None:
        self.managers = [pb.RemoteManager(node_id=i, addr=a) for i, a in managers]
        self.heartbeat_ns = heartbeat_ns
        self.leader_addr = leader_addr
        self.roles = roles        # node ID -> (desired role, asked to renew onto a new root)
        self.root_ca = root_ca
        self.key = (tuple(managers), heartbeat_ns, leader_addr, root_ca)

    def message(self, node_id: str) -> pb.SessionMessage:
        role, renew = self.roles.get(node_id, ("", False))
        return pb.SessionMessage(managers=self.managers, heartbeat_period_ns=self.heartbeat_ns,
                                 desired_role=role, removed=not role, leader_addr=self.leader_addr,
                                 root_ca=self.root_ca, renew_certificate=renew)


class Dispatcher(pb_grpc.DispatcherServicer):
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime
        self._lock = threading.Lock()
        self._sessions: dict[str, set[threading.Event]] = {}
        self._view: _View | None = None
        self._dirty = threading.Event()
        self._last_seen: dict[str, float] = {}
        # Per node: the status it last reported (state, message, addr, tls), for the store.
        self._reported: dict[str, dict[str, Any]] = {}
        self._status_writes = Buckets(STATUS_WRITES, MAX_TRACKED_NODES)
        self._pruned_at = 0.0
        self._leader_since: float | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._view_loop, name="dispatcher-view", daemon=True).start()

    def liveness(self, manager: Any) -> Liveness:
        """The leader-only component that marks silent nodes Down (for the LeaderSupervisor)."""
        return Liveness(self, manager)

    def leadership_gained(self) -> None:
        """A new leader gives every node a full grace period to find it, and forgets what nodes
        told an earlier term of its own (it may be stale)."""
        self._leader_since = time.monotonic()
        self._last_seen.clear()
        with self._lock:
            self._reported.clear()
        self.notify()

    def leadership_lost(self) -> None:
        self._leader_since = None
        self.notify()
        self._wake_all()  # their streams end: the nodes move to the new leader

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._wake_all()

    def notify(self) -> None:
        """The store changed (called on the apply thread): recompute the view elsewhere."""
        self._dirty.set()

    # -- the shared view -------------------------------------------------------------------------------
    def _compute_view(self, manager: Any) -> _View:
        def read(state: Any) -> tuple[dict[str, tuple[str, bool]], bytes]:
            roles = {i: (effective_role(n), bool(n.get("cert_rotate"))) for i, n in state["nodes"].items()}
            root = state["cluster"]["root_ca"]["cert"].encode() if state["cluster"] else b""
            return roles, root
        roles, root = manager.machine.read(read)
        return _View(manager.managers(), manager.heartbeat_ns(), manager.leader_addr() or "", roles, root)

    def _view_loop(self) -> None:
        """Wakes sessions only when what they would be told changed; a status write (the most
        frequent one) wakes nobody."""
        while not self._stop.is_set():
            self._dirty.wait()  # set by store changes and by leadership changes
            self._dirty.clear()
            manager = self.rt.manager
            if manager is None:
                continue
            try:
                view = self._compute_view(manager)
            except Exception:  # noqa: BLE001 - keep the last view
                log.exception("could not compute the session view")
                continue
            old, self._view = self._view, view
            if old is None or old.key != view.key:
                self._wake_all()
            elif old.roles != view.roles:
                for node_id in set(old.roles) ^ set(view.roles) | {
                        i for i in view.roles if old.roles.get(i) != view.roles[i]}:
                    self._wake(node_id)

    def _wake_all(self) -> None:
        with self._lock:
            events = [e for group in self._sessions.values() for e in group]
        for event in events:
            event.set()

    def _wake(self, node_id: str) -> None:
        with self._lock:
            events = list(self._sessions.get(node_id, ()))
        for event in events:
            event.set()

    # -- helpers -----------------------------------------------------------------------------------
    def _leader_manager(self) -> Any:
        manager = self.rt.require_manager()
        if not manager.is_leader():
            raise errors.not_leader(manager.leader_addr())
        return manager

    def _mark(self, manager: Any, node_id: str, **fields: Any) -> bool:
        try:
            manager.set_node_status(node_id, **fields)
            return True
        except SwarmError as e:
            log.warning("could not record the status of %s: %s", node_id, e.message)
            return False

    def _report(self, manager: Any, node_id: str, context: Any, claimed_trust_root: str | None,
                **status: Any) -> None:
        """Record what a node reported and write what differs from the store, budget allowing.

        The TLS state is recomputed from the connection's certificate on every report, so a write
        skipped now (or lost) is made at a later heartbeat."""
        certs = context.auth_context().get("x509_pem_cert") or [b""]
        with self._lock:
            reported = self._reported.setdefault(node_id, {})
            reported.update(status)
            known_root = (reported.get("tls") or {}).get("trust_root", "")
        claim = known_root if claimed_trust_root is None else claimed_trust_root
        tls = manager.tls_fields(node_id, certs[0], claim)
        with self._lock:
            if "tls" in tls:
                reported["tls"] = tls["tls"]
            wanted = {**reported, **tls}
        changes = manager.node_status_changes(node_id, wanted)
        if not changes:
            return
        if not self._status_writes.take(node_id, time.monotonic()):
            log.debug("status change of %s deferred: it changed too often lately", node_id)
            return
        self._mark(manager, node_id, **changes)

    # -- RPCs ----------------------------------------------------------------------------------------
    @abort_on_error
    def Session(self, request: pb.SessionRequest, context: Any) -> Iterator[pb.SessionMessage]:
        manager = self._leader_manager()
        node_id = self.rt.security_identity(context)
        self._last_seen[node_id] = time.monotonic()
        description = {k: getattr(request.description, k) for k in
                       ("hostname", "os", "architecture", "nano_cpus", "memory_bytes", "engine_version")
                       if getattr(request.description, k)}
        fields.check_description(description)  # refused as at admission (the store keeps the first)
        addr = fields.advertised_host(request.advertise_addr) or peer_ip(context)
        claimed = request.tls_info.trust_root if request.HasField("tls_info") else None
        self._report(manager, node_id, context, claimed, state="ready", message="", addr=addr)
        log.info("session opened by %s from %s", node_id, peer_ip(context))
        wake = threading.Event()
        with self._lock:
            # As swarmkit: a node's new session replaces its older ones, so one node certificate
            # holds one stream (and one server thread), however many it opens.
            group = self._sessions.setdefault(node_id, set())
            replaced = list(group)
            group.clear()
            group.add(wake)
        for old in replaced:
            old.set()
        context.add_callback(wake.set)
        try:
            last: pb.SessionMessage | None = None
            while (context.is_active() and not self._stop.is_set() and manager.is_leader()
                   and wake in self._sessions.get(node_id, ())):
                view = self._view or self._compute_view(manager)
                message = view.message(node_id)
                if message != last:
                    yield message
                    last = message
                    if message.removed:
                        return
                wake.wait(5.0)
                wake.clear()
        finally:
            with self._lock:
                group = self._sessions.get(node_id, set())
                group.discard(wake)
                if not group:
                    self._sessions.pop(node_id, None)

    @abort_on_error
    def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        manager = self._leader_manager()
        node_id = self.rt.security_identity(context)
        claimed = request.tls_info.trust_root if request.HasField("tls_info") else None
        if request.leaving:
            self._last_seen.pop(node_id, None)
            self._report(manager, node_id, context, claimed, state="down", message="node is leaving")
            return pb.HeartbeatResponse(period_ns=manager.heartbeat_ns())
        self._last_seen[node_id] = time.monotonic()
        # Self-healing: whatever made the store say otherwise (a lost or deferred write, a Down
        # that raced this heartbeat), a node that heartbeats is Ready.
        self._report(manager, node_id, context, claimed, state="ready", message="")
        return pb.HeartbeatResponse(period_ns=manager.heartbeat_ns())

    # -- liveness ------------------------------------------------------------------------------------
    def reap(self, manager: Any) -> None:
        """Mark Down the Ready nodes that missed ``GRACE_MULTIPLIER`` heartbeats (leader only)."""
        now = time.monotonic()
        since = self._leader_since if self._leader_since is not None else now
        if now - self._pruned_at > PRUNE_PERIOD:
            self._prune(manager, now)
        grace = GRACE_MULTIPLIER * manager.heartbeat_ns() / 1e9
        ready = manager.machine.read(lambda state: [n["id"] for n in state["nodes"].values()
                                                    if n.get("state") == "ready"])
        for node_id in ready:
            seen = self._last_seen.get(node_id, since)
            if now - seen > grace:
                self._last_seen.pop(node_id, None)
                log.info("node %s missed %d heartbeats: down", node_id, GRACE_MULTIPLIER)
                self._mark(manager, node_id, state="down", message="heartbeat failure")

    def _prune(self, manager: Any, now: float) -> None:
        """Forget the reports of nodes the store no longer holds (removed nodes)."""
        self._pruned_at = now
        known = manager.machine.read(lambda state: set(state["nodes"]))
        with self._lock:
            gone = [node_id for node_id in self._reported if node_id not in known]
            for node_id in gone:
                del self._reported[node_id]
        for node_id in gone:
            self._status_writes.forget(node_id)


class Liveness(LeaderLoop):
    """Leader-only (``LeaderSupervisor``): looks for silent nodes every ``REAP_PERIOD``."""

    name = "liveness"

    def __init__(self, dispatcher: Dispatcher, manager: Any) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._manager = manager

    def start(self) -> None:
        self._dispatcher.leadership_gained()
        super().start()

    def stop(self) -> None:
        super().stop()
        self._dispatcher.leadership_lost()

    def step(self) -> float | None:
        self._dispatcher.reap(self._manager)
        return REAP_PERIOD
