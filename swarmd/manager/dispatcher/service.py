"""The Dispatcher API and liveness (DESIGN §6, §11).

Each node (workers and managers alike) holds one ``Session`` stream to the leader and sends a
unary ``Heartbeat`` every period. Both are coroutines on the remote API's event loop: a
session is a waiting coroutine, not a thread, so one manager carries thousands. Heartbeats only
touch memory; the store is written when a node's state *changes* (``status``): Ready on a
session or heartbeat after silence, Down after three missed periods or at once on a graceful
leave. Other managers refuse sessions with the leader's address, so nodes move to it.

What sessions are told comes from one view (``view``), kept by one thread from the store's
events; that thread wakes, through the loop, only the sessions whose message changed. Each
session carries its node's assignments (``assignments``): the full set first, then the changes,
numbered. ``UpdateTaskStatus`` takes a node's reports of its own tasks only, and answers once
they are written (``taskstatus``). A node's
TLS state comes from the certificate its connection was verified with (``Manager.tls_fields``),
never from the request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd import errors
from swarmd.ca import pki
from swarmd.errors import SwarmError
from swarmd.manager import fields
from swarmd.manager.dispatcher.assignments import SessionAssignments
from swarmd.manager.dispatcher.status import StatusWriter
from swarmd.manager.dispatcher.taskstatus import TaskStatusWriter, Ticket
from swarmd.manager.dispatcher.view import ALL, View, ViewKeeper
from swarmd.ratelimit import Buckets, Limit
from swarmd.store import services as store_services
from swarmd.store import taskstate
from swarmd.manager.leadership import LeaderLoop
from swarmd.server import abort_on_error, peer_ip

if TYPE_CHECKING:
    from swarmd.node.runtime import NodeRuntime

log = logging.getLogger("swarmd.manager.dispatcher")

GRACE_MULTIPLIER = 3
REAP_PERIOD = 0.25
PRUNE_PERIOD = 30.0
SESSION_RECHECK = 30.0   # a session looks again this often even if nobody woke it
MAX_TASK_REPORTS = 1000  # task reports in one UpdateTaskStatus (store.services.MAX_TASKS_PER_OP)
REPORT_TIMEOUT = 10.0    # an UpdateTaskStatus waits this long for its write
# UpdateTaskStatus calls of one node: an agent sends at most a few a second (it batches).
TASK_REPORT_CALLS = Limit(burst=100, per_second=20.0)


@functools.lru_cache(maxsize=1 << 15)
def _node_id_of(cert_pem: bytes) -> str:
    """A verified node certificate's node ID (cached: every node calls every few seconds)."""
    return pki.identity_from_cert(cert_pem).node_id


class _Stream:
    """One open session, as its coroutine waits: ``wake`` is set on the loop only."""

    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = asyncio.Event()


class Dispatcher(pb_grpc.DispatcherServicer):
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime
        self._streams: dict[str, _Stream] = {}          # node ID -> its session (loop only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._view: View | None = None
        self._dirty = threading.Event()
        self._last_seen: dict[str, float] = {}
        # Per node: the status it last reported (state, message, addr, tls), for the store.
        self._reported: dict[str, dict[str, Any]] = {}
        self._reported_lock = threading.Lock()
        self._status = StatusWriter(lambda: self.rt.manager)
        self._task_status = TaskStatusWriter(lambda: self.rt.manager)
        self._report_calls = Buckets(TASK_REPORT_CALLS, 1 << 17)
        self._pruned_at = 0.0
        self._leader_since: float | None = None
        self._stop = threading.Event()
        self._view_thread = threading.Thread(target=self._view_loop, name="dispatcher-view", daemon=True)
        self._started = False
        self._start_lock = threading.Lock()

    def _start(self) -> None:
        """The view and status threads start with this node's first store change (it is a
        manager): a worker runs neither."""
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                self._status.start()
                self._view_thread.start()
                self._started = True

    def liveness(self, manager: Any) -> Liveness:
        """The leader-only component that marks silent nodes Down (for the LeaderSupervisor)."""
        return Liveness(self, manager)

    def leadership_gained(self) -> None:
        """A new leader gives every node a full grace period to find it, and forgets what nodes
        told an earlier term of its own (it may be stale)."""
        self._leader_since = time.monotonic()
        self._last_seen.clear()
        with self._reported_lock:
            self._reported.clear()
        self._status.clear()
        self._task_status.clear()
        self.notify()

    def leadership_lost(self) -> None:
        self._leader_since = None
        self._status.clear()
        self._task_status.clear()
        self.notify()
        self._wake(ALL)  # their streams end: the nodes move to the new leader

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._status.close()
        self._task_status.close()
        self._wake(ALL)

    def notify(self) -> None:
        """The store or the leadership changed (called on the apply thread): the view thread
        takes the change in."""
        self._start()
        self._dirty.set()

    # -- the shared view -------------------------------------------------------------------------------
    def _view_loop(self) -> None:
        keeper: ViewKeeper | None = None
        keeper_of: Any = None
        while not self._stop.is_set():
            self._dirty.wait()
            self._dirty.clear()
            manager = self.rt.manager
            if keeper is None or keeper_of is not manager:
                if keeper is not None:
                    keeper.close()
                keeper, keeper_of = (None, None) if manager is None else (
                    ViewKeeper(manager.machine, manager.store.leader_id), manager)
                if keeper is None:
                    self._view = None
                    continue
            try:
                wake = keeper.update()
            except Exception:  # noqa: BLE001 - keep the last view; read everything next time
                log.exception("could not update the session view")
                keeper.close()
                keeper = None
                continue
            self._view = keeper.view
            if wake:
                self._wake(wake)
        if keeper is not None:
            keeper.close()

    def _wake(self, node_ids: Iterable[str]) -> None:
        """Wake those nodes' sessions (``ALL``: every one), from any thread."""
        loop = self._loop
        if loop is None:
            return
        ids = ALL if node_ids is ALL else frozenset(node_ids)
        try:
            loop.call_soon_threadsafe(self._wake_on_loop, ids)
        except RuntimeError:  # the loop is closed: so are its sessions
            pass

    def _wake_on_loop(self, node_ids: frozenset[str]) -> None:
        if node_ids is ALL:
            streams: Iterable[_Stream] = list(self._streams.values())
        else:
            streams = [s for s in (self._streams.get(i) for i in node_ids) if s is not None]
        for stream in streams:
            stream.wake.set()

    # -- helpers -----------------------------------------------------------------------------------
    def _leader_manager(self) -> Any:
        manager = self.rt.require_manager()
        if not manager.is_leader():
            raise errors.not_leader(manager.leader_addr())
        return manager

    @staticmethod
    def _caller(context: Any) -> tuple[str, bytes]:
        """(node ID, certificate) of the verified caller."""
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:
            raise SwarmError("no client certificate", grpc.StatusCode.UNAUTHENTICATED)
        return _node_id_of(certs[0]), certs[0]

    def _report(self, manager: Any, node_id: str, cert: bytes, claimed_trust_root: str | None,
                budgeted: bool = True, **status: Any) -> None:
        """Record what a node reported and queue what differs from the store.

        The TLS state is recomputed from the connection's certificate on every report, so a
        write skipped now (or lost) is made at a later heartbeat."""
        with self._reported_lock:
            reported = self._reported.setdefault(node_id, {})
            reported.update(status)
            known_root = (reported.get("tls") or {}).get("trust_root", "")
        claim = known_root if claimed_trust_root is None else claimed_trust_root
        tls = manager.tls_fields(node_id, cert, claim)
        with self._reported_lock:
            if "tls" in tls:
                reported["tls"] = tls["tls"]
            wanted = {**reported, **tls}
        changes = manager.node_status_changes(node_id, wanted)
        if changes:
            self._start()
            self._status.queue(node_id, changes, budgeted)

    # -- RPCs ----------------------------------------------------------------------------------------
    @abort_on_error
    async def Session(self, request: pb.SessionRequest, context: Any) -> AsyncIterator[pb.SessionMessage]:
        manager = self._leader_manager()
        node_id, cert = self._caller(context)
        self._last_seen[node_id] = time.monotonic()
        description = {k: getattr(request.description, k) for k in
                       ("hostname", "os", "architecture", "nano_cpus", "memory_bytes", "engine_version")
                       if getattr(request.description, k)}
        fields.check_description(description)  # refused as at admission (the store keeps the first)
        addr = fields.advertised_host(request.advertise_addr) or peer_ip(context)
        claimed = request.tls_info.trust_root if request.HasField("tls_info") else None
        self._report(manager, node_id, cert, claimed, state="ready", message="", addr=addr)
        log.info("session opened by %s from %s", node_id, peer_ip(context))
        self._loop = asyncio.get_running_loop()
        stream = _Stream()
        # As swarmkit: a node's new session replaces its older one, so one node certificate
        # holds one stream, however many it opens.
        replaced = self._streams.get(node_id)
        self._streams[node_id] = stream
        if replaced is not None:
            replaced.wake.set()
        if self._view is None:
            self.notify()
        try:
            last: pb.SessionMessage | None = None
            assigned = SessionAssignments()
            while not self._stop.is_set() and manager.is_leader() and self._streams.get(node_id) is stream:
                stream.wake.clear()
                view = self._view
                if view is not None:
                    message = view.message(node_id)
                    changes = None if message.removed else assigned.next(view.tasks_of(node_id))
                    if message != last or changes is not None:
                        last = message
                        if changes is not None:
                            message = pb.SessionMessage()
                            message.CopyFrom(last)
                            message.assignments.CopyFrom(changes)
                        yield message
                        if message.removed:
                            return
                try:
                    async with asyncio.timeout(SESSION_RECHECK):
                        await stream.wake.wait()
                except TimeoutError:
                    pass
        finally:
            if self._streams.get(node_id) is stream:
                del self._streams[node_id]

    @abort_on_error
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        manager = self._leader_manager()
        node_id, cert = self._caller(context)
        claimed = request.tls_info.trust_root if request.HasField("tls_info") else None
        if request.leaving:
            self._last_seen.pop(node_id, None)
            self._report(manager, node_id, cert, claimed, state="down", message="node is leaving")
            return pb.HeartbeatResponse(period_ns=manager.heartbeat_ns())
        self._last_seen[node_id] = time.monotonic()
        # Self-healing: whatever made the store say otherwise (a lost or deferred write, a Down
        # that raced this heartbeat), a node that heartbeats is Ready.
        self._report(manager, node_id, cert, claimed, state="ready", message="")
        return pb.HeartbeatResponse(period_ns=manager.heartbeat_ns())

    @abort_on_error
    async def UpdateTaskStatus(self, request: Any, context: Any) -> Any:
        """As swarmkit's: a report of a task not assigned to the caller refuses the whole call;
        one of a task the store no longer holds is skipped."""
        manager = self._leader_manager()
        node_id, _ = self._caller(context)
        if len(request.updates) > MAX_TASK_REPORTS:
            raise errors.invalid(f"too many task status updates in one call (at most {MAX_TASK_REPORTS})")
        if not self._report_calls.take(node_id, time.monotonic()):
            raise SwarmError("too many task status reports from this node; retry later",
                             grpc.StatusCode.RESOURCE_EXHAUSTED)
        reports: dict[str, dict[str, Any]] = {}
        for update in request.updates:
            if not update.HasField("status"):
                continue
            reports[update.task_id[:64]] = _status_fields(update.status)
        owners = manager.machine.read(lambda state: {i: (t["node_id"] if (t := state["tasks"].get(i)) else None)
                                                     for i in reports})
        if any(owner is not None and owner != node_id for owner in owners.values()):
            raise SwarmError(store_services.NOT_ASSIGNED_HERE, grpc.StatusCode.PERMISSION_DENIED)
        reports = {i: s for i, s in reports.items() if owners[i] is not None}
        if not reports:
            return spb.UpdateTaskStatusResponse()
        ticket = Ticket(asyncio.get_running_loop(), len(reports))
        if not self._task_status.start().queue(node_id, reports, ticket):
            raise SwarmError("too many task status reports queued; retry later", grpc.StatusCode.RESOURCE_EXHAUSTED)
        try:
            async with asyncio.timeout(REPORT_TIMEOUT):
                await ticket.future
        except TimeoutError:
            raise SwarmError("the task status reports were not written in time; retry",
                             grpc.StatusCode.UNAVAILABLE) from None
        except RuntimeError as e:
            raise SwarmError(f"the task status reports were not written: {e}", grpc.StatusCode.UNAVAILABLE) from None
        return spb.UpdateTaskStatusResponse()

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
                self._start()
                self._status.queue(node_id, {"state": "down", "message": "heartbeat failure"}, budgeted=False)

    def _prune(self, manager: Any, now: float) -> None:
        """Forget the reports of nodes the store no longer holds (removed nodes)."""
        self._pruned_at = now
        known = manager.machine.read(lambda state: set(state["nodes"]))
        with self._reported_lock:
            gone = [node_id for node_id in self._reported if node_id not in known]
            for node_id in gone:
                del self._reported[node_id]
        for node_id in gone:
            self._status.forget(node_id)


def _status_fields(status: Any) -> dict[str, Any]:
    """A reported status as the store takes it, cut to the store's bounds (it is queued first)."""
    state = status.state if taskstate.is_known(status.state) else ""
    if not state:
        raise errors.invalid(f"unknown task state {status.state[:32]!r}")
    return {"state": state, "timestamp": status.timestamp[:store_services.MAX_TIMESTAMP],
            "message": status.message[:store_services.MAX_STATUS_MESSAGE],
            "err": status.err[:store_services.MAX_STATUS_ERR],
            "exit_code": max(-store_services.INT32_MAX - 1, min(status.exit_code, store_services.INT32_MAX)),
            "pid": max(0, min(status.pid, store_services.INT32_MAX)),
            "container_id": status.container_id[:store_services.MAX_CONTAINER_ID]}


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
