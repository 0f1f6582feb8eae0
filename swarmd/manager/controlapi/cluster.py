"""The cluster object: its spec (defaults and checks), join tokens, autolock and unlock key,
root CA rotation."""

from __future__ import annotations

from typing import Any

from swarmd import errors
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import keyfile, rotation, tokens
from swarmd.errors import SwarmError
from swarmd.manager import convert
from swarmd.manager.controlapi.base import ControlAPI, Ctx
from swarmd.manager.controlapi.forwarding import on_leader
from swarmd.manager.manager import Manager
from swarmd.server import abort_on_error
from swarmd.store.objects import Cluster
from swarmd.timeutil import now_rfc3339

DEFAULT_CERT_EXPIRY_NS = 2160 * 3600 * 10**9
MIN_CERT_EXPIRY_NS = 3600 * 10**9
DEFAULT_HEARTBEAT_NS = 5 * 10**9

DEFAULT_SPEC: dict[str, Any] = {
    "task_history_limit": 5,
    "dispatcher_heartbeat_ns": DEFAULT_HEARTBEAT_NS,
    "node_cert_expiry_ns": DEFAULT_CERT_EXPIRY_NS,
    "snapshot_interval": 10000,
    "keep_old_snapshots": 0,
    "log_entries_for_slow_followers": 500,
    "heartbeat_tick": 1,
    "election_tick": 10,
    "autolock_managers": False,
}


class ClusterAPI(ControlAPI):
    @abort_on_error
    @on_leader
    def GetCluster(self, request: pb.GetClusterRequest, context: Ctx) -> pb.GetClusterResponse:
        return pb.GetClusterResponse(cluster=self.rt.require_manager().cluster_pb())

    @abort_on_error
    @on_leader
    def GetJoinToken(self, request: pb.GetJoinTokenRequest, context: Ctx) -> pb.GetJoinTokenResponse:
        manager = self.rt.require_manager()
        token = join_token(manager, request.role, request.rotate)
        local = self.rt.local
        return pb.GetJoinTokenResponse(token=token, manager_addr=local.advertise_addr if local else "")

    @abort_on_error
    @on_leader
    def GetUnlockKey(self, request: pb.GetUnlockKeyRequest, context: Ctx) -> pb.GetUnlockKeyResponse:
        cluster = self.rt.require_manager().cluster()
        return pb.GetUnlockKeyResponse(unlock_key=cluster.get("unlock_key", ""))

    @abort_on_error
    @on_leader
    def UpdateCluster(self, request: pb.UpdateClusterRequest, context: Ctx) -> pb.UpdateClusterResponse:
        cluster, unlock_key = update_cluster(self.rt.require_manager(), request)
        return pb.UpdateClusterResponse(cluster=convert.cluster(cluster), unlock_key=unlock_key)


def spec_overrides(req: pb.InitRequest | pb.UpdateClusterRequest) -> dict[str, Any]:
    """The spec fields an init or update sets (only the flags given), checked as Docker does."""
    changes: dict[str, Any] = {}
    if req.has_cert_expiry:
        if req.cert_expiry_ns < MIN_CERT_EXPIRY_NS:
            raise errors.invalid(errors.rpc_text("INVALID_ARGUMENT", errors.MIN_CERT_EXPIRY))
        changes["node_cert_expiry_ns"] = req.cert_expiry_ns
    if req.has_dispatcher_heartbeat:
        if req.dispatcher_heartbeat_ns < 0:
            raise errors.invalid(errors.rpc_text("INVALID_ARGUMENT", errors.NEGATIVE_HEARTBEAT))
        changes["dispatcher_heartbeat_ns"] = req.dispatcher_heartbeat_ns or DEFAULT_HEARTBEAT_NS
    if req.has_task_history_limit:
        if req.task_history_limit < 0:
            raise errors.invalid("task history retention limit cannot be negative")
        changes["task_history_limit"] = req.task_history_limit
    if req.has_snapshot_interval and req.snapshot_interval:
        changes["snapshot_interval"] = req.snapshot_interval
    if req.has_max_snapshots:
        changes["keep_old_snapshots"] = req.max_snapshots
    return changes


def join_token(manager: Manager, role: str, rotate: bool) -> str:
    if role not in ("worker", "manager"):
        raise errors.invalid(f"unknown role {role}")
    if rotate:
        root = manager.cluster()["root_ca"]["cert"].encode()
        manager.propose("rotate_join_token", role=role, token=tokens.generate_join_token(root),
                        now=now_rfc3339())
    return str(manager.cluster()["join_tokens"][role])


def update_cluster(manager: Manager, req: pb.UpdateClusterRequest) -> tuple[Cluster, str]:
    """Spec changes and autolock; returns the cluster and its unlock key afterwards."""
    changes = spec_overrides(req)
    autolock = bool(manager.cluster()["spec"]["autolock_managers"])
    unlock_key: str | None = None
    if req.has_autolock:
        changes["autolock_managers"] = req.autolock
        if req.autolock and not autolock:
            unlock_key = keyfile.generate_unlock_key()
        elif not req.autolock and autolock:
            unlock_key = ""
        autolock = req.autolock
    if req.rotate_unlock_key:
        if not autolock:
            raise SwarmError("cannot rotate because autolock is not turned on")
        unlock_key = keyfile.generate_unlock_key()
    if req.rotate_root_ca:
        rotation.start(manager.cluster(), req, spec_overrides(req), manager.propose)  # also applies --cert-expiry
        changes.pop("node_cert_expiry_ns", None)
    elif req.signing_ca_cert or req.signing_ca_key:
        raise errors.invalid("a signing CA is only used to rotate the root CA")
    if changes or unlock_key is not None:
        manager.propose("update_cluster", spec=changes, unlock_key=unlock_key, now=now_rfc3339())
    cluster = manager.cluster()
    return cluster, str(cluster.get("unlock_key", ""))
