"""``service logs``: a service's or a task's lines, from the nodes that hold its tasks.

The leader's log broker (``logbroker``) asks the nodes and relays their lines; another manager
forwards the whole stream to the leader (``forward_stream``) and relays it back, cancelling the
leader's side when its own caller goes away. A followed service's new tasks join the stream
(looked for every ``RESCAN_SECONDS``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from swarmd import errors
from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.errors import SwarmError
from swarmd.manager.controlapi.base import ControlAPI, Ctx
from swarmd.manager.controlapi.service import resolve_service
from swarmd.manager.controlapi.task import resolve_task
from swarmd.manager.logbroker import LogBroker, Subscription
from swarmd.manager.manager import Manager
from swarmd.remotes import leader_hint
from swarmd.server import abort_on_error
from swarmd.store.state import State

if TYPE_CHECKING:
    from swarmd.node.runtime import NodeRuntime

RESCAN_SECONDS = 1.0
FORWARD_CONNECT_TIMEOUT = 5.0


class LogsAPI(ControlAPI):
    @abort_on_error
    def ServiceLogs(self, request: spb.ServiceLogsRequest, context: Ctx) -> Iterator[spb.ServiceLogsMessage]:
        yield from self.service_logs(request, context)

    def service_logs(self, request: spb.ServiceLogsRequest,
                     context: Ctx) -> Generator[spb.ServiceLogsMessage, None, None]:
        """Both servers' handler: it needs only ``context.add_callback`` (``streambridge``)."""
        manager = self.rt.require_manager()
        if not manager.is_leader():
            yield from forward_stream(self.rt, manager, request, context)
            return
        yield from serve_logs(manager, self.rt.dispatcher.logs, request, context)


def log_targets(state: State, ref: str) -> tuple[list[spb.LogTask], int, str | None]:
    """The tasks ``ref`` names (a service, else a task), the slot width Docker pads the prefix
    to, and the service to look for new tasks of (None for a task). Docker's text when neither."""
    service = None
    try:
        service = resolve_service(state, ref)
    except SwarmError as e:
        if e.code != grpc.StatusCode.NOT_FOUND:
            raise
    if service is not None:
        replicas = service["spec"].get("replicas") if service["spec"].get("mode") == "replicated" else None
        width = len(str(replicas)) if replicas else 1
        return tasks_of(state, service["id"]), width, service["id"]
    try:
        task = resolve_task(state, ref)
    except SwarmError as e:
        if e.code != grpc.StatusCode.NOT_FOUND:
            raise
        raise errors.not_found(f"no such task or service: {ref}") from None
    return [log_task(state, task)], len(str(task["slot"])), None


def tasks_of(state: State, service_id: str) -> list[spb.LogTask]:
    """Every task of the service that reached a node (its history included: its node keeps its logs)."""
    tasks = state["tasks"]
    found = [tasks[i] for i in tasks.lookup("service", service_id)]
    found.sort(key=lambda t: (t["slot"], t["node_id"], t["created_at"], t["id"]))
    return [log_task(state, t) for t in found if t["node_id"]]


def log_task(state: State, task: Any) -> spb.LogTask:
    node = state["nodes"].get(task["node_id"]) if task["node_id"] else None
    return spb.LogTask(task_id=task["id"], service_id=task["service_id"], service_name=task["service_name"],
                       slot=task["slot"], node_id=task["node_id"], node_hostname=node["hostname"] if node else "")


def serve_logs(manager: Manager, broker: LogBroker, request: spb.ServiceLogsRequest,
               context: Ctx) -> Iterator[spb.ServiceLogsMessage]:
    tasks, width, service_id = manager.read(lambda state: log_targets(state, request.ref))
    first = spb.ServiceLogsMessage(tasks=tasks, slot_width=width)
    sub = broker.subscribe(tasks, request.follow, request.tail, request.since_ns, first)
    context.add_callback(lambda: broker.reader_gone(sub))  # when the call ends, however it ends
    try:
        yield from _relay(manager, broker, sub, service_id)
    finally:
        problem = broker.finish(sub)
    if problem is not None:  # after the last line, as Docker's warning comes
        raise SwarmError(problem, grpc.StatusCode.UNKNOWN)


def _relay(manager: Manager, broker: LogBroker, sub: Subscription,
           service_id: str | None) -> Iterator[spb.ServiceLogsMessage]:
    scanned = time.monotonic()
    while True:
        items = broker.take(sub, RESCAN_SECONDS)
        if items is None:
            return
        yield from items
        if sub.follow and service_id is not None and time.monotonic() - scanned >= RESCAN_SECONDS:
            if not manager.is_leader():
                raise SwarmError("the leader changed: the log stream ended", grpc.StatusCode.UNKNOWN)
            scanned = time.monotonic()
            broker.extend(sub, manager.machine.read(lambda state: tasks_of(state, service_id)))


def forward_stream(rt: NodeRuntime, manager: Manager, request: spb.ServiceLogsRequest,
                   context: Ctx) -> Iterator[spb.ServiceLogsMessage]:
    """Relay the leader's stream. Not retried once lines have arrived (they would repeat); a
    leader that moved before the first one is looked up once more."""
    for attempt in range(2):
        addr = manager.leader_addr()
        if not addr:
            raise SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN)
        started = False
        gone = threading.Event()
        with rt.remotes.channel(addr) as channel:
            stub = pb_grpc.ControlStub(channel)
            try:
                stub.Version(pb.VersionRequest(), timeout=FORWARD_CONNECT_TIMEOUT, wait_for_ready=True)
                call = stub.ServiceLogs(request)

                def went_away(call: Any = call) -> None:
                    gone.set()
                    call.cancel()
                context.add_callback(went_away)
                for message in call:
                    started = True
                    yield message
                return
            except grpc.RpcError as e:
                code = e.code()
                moved = leader_hint(e) is not None or code in (grpc.StatusCode.UNAVAILABLE,
                                                               grpc.StatusCode.DEADLINE_EXCEEDED)
                if code == grpc.StatusCode.CANCELLED and gone.is_set():
                    return
                if started or attempt or not moved:
                    raise SwarmError(e.details() or str(code), code) from None
