"""Raft membership on the leader: a manager joining Raft (after a reachability check) or leaving it.

Only managers call it, with their node certificates; a follower refuses with the leader's address.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.errors import SwarmError
from swarmd.manager import fields
from swarmd.manager.manager import Manager, node_field
from swarmd.server import abort_on_error
from swarmd.store.raft import StoreError
from swarmd.timeutil import now_rfc3339

if TYPE_CHECKING:
    from swarmd.node.runtime import NodeRuntime

log = logging.getLogger(__name__)

Ctx: TypeAlias = Any  # grpc ships no type information


class RaftMembershipServicer(pb_grpc.RaftMembershipServicer):
    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime

    @abort_on_error
    def Join(self, request: pb.RaftJoinRequest, context: Ctx) -> pb.RaftJoinResponse:
        manager = self.rt.require_manager()
        node_id = self.rt.security_identity(context)
        self.rt.require_leader(manager)
        addr = fields.check_raft_join_addr(request.addr)
        members = raft_join(manager, node_id, addr, self.rt.check_manager_reachable)
        return pb.RaftJoinResponse(members=[pb.RemoteManager(node_id=i, addr=a) for i, a in members])

    @abort_on_error
    def Leave(self, request: pb.RaftLeaveRequest, context: Ctx) -> pb.RaftLeaveResponse:
        manager = self.rt.require_manager()
        node_id = self.rt.security_identity(context)
        self.rt.require_leader(manager)
        raft_leave(manager, node_id)
        return pb.RaftLeaveResponse()


def raft_join(manager: Manager, node_id: str, addr: str, check: Callable[[str, str], None]) -> list[tuple[str, str]]:
    """Leader side of a manager joining Raft: reachability check, record, add member."""
    role = manager.machine.read(lambda state: node_field(state["nodes"].get(node_id), "role"))
    if role != "manager":
        raise SwarmError(f"node {node_id} is not a manager", grpc.StatusCode.PERMISSION_DENIED)
    started = time.monotonic()
    try:
        check(node_id, addr)
        log.debug("%s answers at %s (%.3fs)", node_id, addr, time.monotonic() - started)
    except SwarmError:
        # The joiner gives up and returns to inactive: do not keep a node that never was.
        manager.propose("remove_node", id=node_id, force=True)
        raise
    manager.propose("set_node_role", id=node_id, manager_addr=addr, now=now_rfc3339())
    log.debug("recorded manager %s (%.3fs)", node_id, time.monotonic() - started)
    if node_id not in manager.store.members():
        _add_member_async(manager, node_id)
    log.info("manager %s joins raft at %s", node_id, addr)
    return [(i, a) for i, a in manager.managers()]


def _add_member_async(manager: Manager, node_id: str) -> None:
    """Raft commits the new membership only once the new member acks, and it starts only
    after this answer: append the change, answer as soon as it is appended (pysyncobj applies
    membership on append), and let the commit complete in the background."""
    failure: list[str] = []

    def add() -> None:
        try:
            manager.store.add_member(node_id, timeout=30.0)
        except StoreError as e:
            failure.append(str(e))
            log.warning("adding %s to raft did not complete: %s", node_id, e)

    thread = threading.Thread(target=add, name="raft-add-member", daemon=True)
    thread.start()
    deadline = time.monotonic() + 5.0
    while node_id not in manager.store.members():
        if failure or time.monotonic() > deadline:
            raise SwarmError(f"could not add {node_id} to the raft cluster: "
                             f"{failure[0] if failure else 'timed out'}", grpc.StatusCode.UNKNOWN)
        time.sleep(0.005)


def raft_leave(manager: Manager, node_id: str) -> None:
    """Leader side of a manager leaving: out of Raft, then a Down worker in the node list."""
    if node_id in manager.store.members():
        try:
            manager.store.remove_member(node_id)
        except StoreError as e:  # e.g. the leader itself: a clear refusal, not an internal error
            raise SwarmError(f"could not remove {node_id} from the raft cluster: {e}",
                             grpc.StatusCode.FAILED_PRECONDITION) from None
    manager.propose("set_node_role", id=node_id, role="worker", manager_addr="", state="down",
                    message="node left the swarm", now=now_rfc3339())
