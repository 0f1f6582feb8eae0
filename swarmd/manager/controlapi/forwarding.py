"""Where a call is served, and when its answer may leave.

A Control call that reads cluster state or writes is served by the leader (DESIGN §5): another
manager forwards it there (``on_leader``). A call any manager serves itself, the CA's, has what
it read as the leader confirmed once (``confirmed_once``). Either way the answer, or a refusal
read from the state, leaves only once it is linearizable (``serve_here``, ``Manager.read``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from swarmd import errors
from swarmd.ca import ids
from swarmd.errors import SwarmError
from swarmd.manager import requestid
from swarmd.manager.controlapi.base import ControlAPI, Ctx
from swarmd.manager.manager import LeadershipMoved, Manager
from swarmd.remotes import REQUEST_ID_KEY

T = TypeVar("T")


def on_leader(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Serve on the leader; elsewhere forward the call there. "self" means the node that was
    asked, so it is resolved here, and answers that name "this manager" are made local again.

    On the leader, the writes of a forwarded call are tagged with the forwarder's request ID
    (``requestid``), so the forwarder may retry a call whose answer it lost. A leader that
    hands its leadership over while serving (its own demotion) forwards the rest."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: ControlAPI, request: Any, context: Ctx) -> Any:
        manager = self.rt.require_manager()
        # Every call has an ID (the forwarder's, or a new one): if this leader loses the
        # leadership while its write is in flight, the new leader is asked with the same ID and
        # applies the write only if it had not committed.
        request_id = _request_id(context) or ids.new_id()
        if manager.is_leader():
            try:
                with requestid.scope(request_id):
                    return serve_here(manager, fn, self, request, context)
            except LeadershipMoved:
                pass  # forwarded below, to the manager that leads now
            except SwarmError as e:
                if e.code != grpc.StatusCode.ABORTED:  # the write did not commit: the leader changed
                    raise
        if getattr(request, "ref", None) == "self" and name != "RemoveNode":  # `node rm` takes no "self"
            request.ref = manager.node_id
        if name == "ListTasks":  # `node ps` names nodes, "self" among them
            request.nodes[:] = [manager.node_id if ref == "self" else ref for ref in request.nodes]
        try:
            response = self.rt.forward_control(name, request, request_id)
        except SwarmError as e:
            if e.code != grpc.StatusCode.ABORTED:
                raise
            with requestid.scope(request_id):
                return serve_here(manager, fn, self, request, context)  # elected meanwhile
        if hasattr(response, "self_id"):
            response.self_id = manager.node_id
        if hasattr(response, "manager_addr") and self.rt.local is not None:
            response.manager_addr = self.rt.local.advertise_addr
        return response
    return wrapper


def serve_here(manager: Manager, fn: Callable[..., T], *args: Any) -> T:
    """Serve a call here; its answer, or its refusal, once it is linearizable (``Manager.read``):
    a refusal read from the state (a node not found, say) must not come from old state either."""
    try:
        response = fn(*args)
    except LeadershipMoved:
        raise
    except SwarmError as e:
        if e.message != errors.NO_LEADER and requestid.needs_confirmation():
            manager.confirm_leadership()
        raise
    if requestid.needs_confirmation():
        manager.confirm_leadership()
    return response


def confirmed_once(manager: Manager, call: Callable[[], T]) -> T:
    """For a call any manager serves itself (the CA): what it reads as the leader is confirmed
    once, before it answers, instead of once per read (``Manager.read``)."""
    with requestid.scope(None, leader_only=False):
        return serve_here(manager, call)


def _request_id(context: Ctx) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            return value
    return None
