"""The node's lifecycle: inactive → manager (→ worker with joining), and back on leave.

One ``NodeRuntime`` per daemon. Lifecycle changes (init, leave, resume, shutdown) are serialised
by one lock; every other request reads the current role and is answered by the manager.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from swarmd import __version__, errors, netaddr
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import ids, pki, tokens
from swarmd.ca.store import CertificateStore
from swarmd.errors import SwarmError
from swarmd.fsutil import ensure_dir, remove_tree
from swarmd.manager import ipam
from swarmd.manager.manager import Manager
from swarmd.nodestate import LocalState
from swarmd.server import ServerCredentials
from swarmd.timeutil import now_rfc3339

log = logging.getLogger(__name__)

DEFAULT_LISTEN_ADDR = "0.0.0.0:2377"
DEFAULT_CERT_EXPIRY_NS = 2160 * 3600 * 10**9
MIN_CERT_EXPIRY_NS = 3600 * 10**9
DEFAULT_HEARTBEAT_NS = 5 * 10**9
DEFAULT_DATA_PATH_PORT = 4789
AVAILABILITIES = ("active", "pause", "drain")

# Starts the remote API for a manager; returns a handle with stop(grace).
RemoteStarter = Callable[[str, ServerCredentials], Any]


@dataclass
class InitPlan:
    """A fully validated init request: nothing is written before all of it checks out."""

    listen_addr: str
    advertise_addr: str
    local_addr: str
    data_path_addr: str
    data_path_port: int
    availability: str
    default_addr_pool: list[str]
    subnet_size: int
    spec: dict[str, Any]


def host_description(hostname: str) -> dict[str, Any]:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "hostname": hostname,
        "os": platform.system().lower(),
        "architecture": platform.machine(),
        "nano_cpus": (os.cpu_count() or 1) * 10**9,
        "memory_bytes": pages,
        "engine_version": __version__,
    }


class NodeRuntime:
    def __init__(self, state_dir: Path, hostname: str, start_remote: RemoteStarter) -> None:
        self.state_dir = state_dir
        self.hostname = hostname
        self._start_remote = start_remote
        self._lock = threading.RLock()
        self.local: LocalState | None = None
        self.manager: Manager | None = None
        self._remote: Any = None
        self.certs = CertificateStore(state_dir / "certificates")

    # -- paths ---------------------------------------------------------------------------------
    @property
    def raft_dir(self) -> Path:
        return self.state_dir / "raft"

    def _wipe_swarm_state(self) -> None:
        LocalState.remove(self.state_dir)
        self.certs.wipe()
        remove_tree(self.raft_dir)

    # -- start and stop ------------------------------------------------------------------------
    def resume(self) -> None:
        """Pick the swarm up again from the state dir after a (re)start of the daemon."""
        with self._lock:
            ensure_dir(self.state_dir)
            local = LocalState.load(self.state_dir)
            if local is None:
                if self.certs.exists() or self.raft_dir.exists():
                    log.warning("removing the leftovers of an unfinished init or join")
                    self._wipe_swarm_state()
                return
            root, cert, key = self.certs.load()
            self.local = local
            if local.role == "manager":
                self._start_manager(local, root, cert, key)
                assert self.manager is not None
                self.manager.set_node_status(local.node_id, state="ready", addr=local.advertise_host)
            log.info("resumed swarm %s as %s %s", local.cluster_id, local.role, local.node_id)

    def _start_manager(self, local: LocalState, root: bytes, cert: bytes, key: bytes) -> None:
        creds = ServerCredentials(root, cert, key)
        self._remote = self._start_remote(local.listen_addr, creds)
        manager = Manager(local.node_id, self.raft_dir)
        try:
            manager.start()
        except BaseException:
            self._remote.stop(None)
            self._remote = None
            raise
        self.manager = manager

    def _stop_manager(self) -> None:
        if self._remote is not None:
            self._remote.stop(1.0).wait(2.0)
            self._remote = None
        if self.manager is not None:
            self.manager.stop()
            self.manager = None

    def shutdown(self) -> None:
        with self._lock:
            self._stop_manager()

    # -- state checks --------------------------------------------------------------------------
    def cluster_id(self) -> str | None:
        local = self.local
        return local.cluster_id if local else None

    def require_manager(self) -> Manager:
        local, manager = self.local, self.manager
        if local is None:
            raise SwarmError(errors.NOT_MANAGER_INACTIVE, grpc.StatusCode.FAILED_PRECONDITION)
        if manager is None:
            raise SwarmError(errors.NOT_MANAGER_WORKER, grpc.StatusCode.FAILED_PRECONDITION)
        return manager

    # -- init ----------------------------------------------------------------------------------
    def plan_init(self, req: pb.InitRequest) -> InitPlan:
        """Docker's validation order (swarm-behaviour.md §3.2), all before anything is created."""
        listen = req.listen_addr or DEFAULT_LISTEN_ADDR
        try:
            interfaces = netaddr.list_interfaces()
            listen_ip, listen_port = netaddr.resolve_listen_addr(listen, interfaces)
            adv_host, adv_port = netaddr.resolve_advertise_addr(req.advertise_addr, listen_port, interfaces)
            data_path = netaddr.resolve_data_path_addr(req.data_path_addr, interfaces)
            local_addr = netaddr.local_addr(listen_ip, adv_host, interfaces)
        except netaddr.AddrError as e:
            raise errors.invalid(str(e)) from None
        try:
            pools, size = ipam.validate_pool(list(req.default_addr_pool), req.subnet_size)
        except ipam.IPAMError as e:
            raise errors.invalid(str(e)) from None
        port = req.data_path_port or DEFAULT_DATA_PATH_PORT
        if not 1024 <= port <= 49151:
            raise errors.invalid(f"Datapath port number is not in valid range (1024-49151) : {port}")
        availability = (req.availability or "active").lower()
        if availability not in AVAILABILITIES:
            raise errors.invalid(f'invalid availability "{req.availability}", only active, pause and drain are supported')
        expiry = req.cert_expiry_ns if req.has_cert_expiry else DEFAULT_CERT_EXPIRY_NS
        if expiry < MIN_CERT_EXPIRY_NS:
            raise errors.invalid(errors.rpc_text("INVALID_ARGUMENT", errors.MIN_CERT_EXPIRY))
        heartbeat = req.dispatcher_heartbeat_ns if req.has_dispatcher_heartbeat else DEFAULT_HEARTBEAT_NS
        if heartbeat < 0:
            raise errors.invalid(errors.rpc_text("INVALID_ARGUMENT", errors.NEGATIVE_HEARTBEAT))
        if req.has_task_history_limit and req.task_history_limit < 0:
            raise errors.invalid("task history retention limit cannot be negative")
        if req.autolock:
            raise SwarmError(errors.AUTOLOCK_UNSUPPORTED, grpc.StatusCode.UNIMPLEMENTED)
        spec = {
            "task_history_limit": req.task_history_limit if req.has_task_history_limit else 5,
            "dispatcher_heartbeat_ns": heartbeat,
            "node_cert_expiry_ns": expiry,
            "snapshot_interval": req.snapshot_interval if req.has_snapshot_interval and req.snapshot_interval else 10000,
            "keep_old_snapshots": req.max_snapshots if req.has_max_snapshots else 0,
            "log_entries_for_slow_followers": 500,
            "heartbeat_tick": 1,
            "election_tick": 10,
            "autolock_managers": False,
        }
        listen_addr = netaddr.join_host_port(listen_ip, listen_port)
        return InitPlan(listen_addr=listen_addr, advertise_addr=netaddr.join_host_port(adv_host, adv_port),
                        local_addr=local_addr, data_path_addr=data_path, data_path_port=port,
                        availability=availability, default_addr_pool=pools, subnet_size=size, spec=spec)

    def init(self, req: pb.InitRequest) -> pb.InitResponse:
        with self._lock:
            if self.local is not None:
                if req.force_new_cluster and self.manager is not None:
                    return self._force_new_cluster()
                raise SwarmError(errors.ALREADY_IN_SWARM)
            plan = self.plan_init(req)
            try:
                return self._create_swarm(plan)
            except BaseException:
                log.warning("init failed; returning the node to inactive")
                self._stop_manager()
                self._wipe_swarm_state()
                self.local = None
                raise

    def _create_swarm(self, plan: InitPlan) -> pb.InitResponse:
        node_id, cluster_id = ids.new_id(), ids.new_id()
        root_pem, root_key = pki.create_root_ca()
        key = pki.generate_key()
        cert_pem = pki.sign_node_certificate(
            root_pem, root_key, pki.make_csr(key), node_id, cluster_id, pki.MANAGER_ROLE,
            timedelta(microseconds=plan.spec["node_cert_expiry_ns"] // 1000))
        key_pem = pki.key_to_pem(key)
        ensure_dir(self.state_dir)
        self.certs.save(root_pem, cert_pem, key_pem)
        local = LocalState(node_id=node_id, cluster_id=cluster_id, role="manager",
                           listen_addr=plan.listen_addr, advertise_addr=plan.advertise_addr,
                           local_addr=plan.local_addr, data_path_addr=plan.data_path_addr,
                           data_path_port=plan.data_path_port,
                           remote_managers=[{"node_id": node_id, "addr": plan.advertise_addr}])
        self.local = local  # the remote API's authorisation needs the cluster ID from now on
        self._start_manager(local, root_pem, cert_pem, key_pem)
        assert self.manager is not None
        now = now_rfc3339()
        cluster: dict[str, Any] = {
            "id": cluster_id, "name": "default", "created_at": now, "updated_at": now,
            "spec": plan.spec,
            "root_ca": {"cert": root_pem.decode(), "key": root_key.decode()},
            "join_tokens": {"worker": tokens.generate_join_token(root_pem),
                            "manager": tokens.generate_join_token(root_pem)},
            "default_addr_pool": plan.default_addr_pool, "subnet_size": plan.subnet_size,
            "data_path_port": plan.data_path_port, "force_rotate": 0,
        }
        node = {
            "id": node_id, "created_at": now, "updated_at": now, "role": "manager",
            "availability": plan.availability, "labels": {}, **host_description(self.hostname),
            "state": "ready", "addr": local.advertise_host, "message": "",
            "manager": {"addr": plan.advertise_addr},
        }
        ingress = {"id": ids.new_id(), "name": "ingress", "ingress": True, "now": now}
        self.manager.propose("bootstrap", cluster=cluster, node=node, ingress=ingress)
        local.save(self.state_dir)
        log.info("swarm %s created; this node %s is its leader", cluster_id, node_id)
        return pb.InitResponse(node_id=node_id, manager_addr=plan.advertise_addr,
                               worker_token=cluster["join_tokens"]["worker"])

    def _force_new_cluster(self) -> pb.InitResponse:
        """Restart this manager's store as a one-member cluster keeping its data.

        With a single member the membership is already just this node, so a restart of the
        store is all it takes."""
        local, manager = self.local, self.manager
        assert local is not None and manager is not None
        manager.stop()
        self.manager = None
        manager = Manager(local.node_id, self.raft_dir)
        manager.start()
        self.manager = manager
        cluster = manager.cluster()
        return pb.InitResponse(node_id=local.node_id, manager_addr=local.advertise_addr,
                               worker_token=cluster["join_tokens"]["worker"])

    # -- leave ---------------------------------------------------------------------------------
    def leave(self, force: bool) -> None:
        with self._lock:
            if self.local is None:
                raise SwarmError(errors.NOT_PART_OF_SWARM)
            if self.manager is not None and not force:
                _, managers = self.manager.counts()
                if managers <= 1:
                    raise SwarmError(errors.LEAVE_LAST_MANAGER)
            self._stop_manager()
            self._wipe_swarm_state()
            log.info("left swarm %s", self.local.cluster_id)
            self.local = None

    # -- info ----------------------------------------------------------------------------------
    def info(self) -> pb.InfoResponse:
        local, manager = self.local, self.manager
        resp = pb.InfoResponse(local_node_state="inactive", hostname=self.hostname,
                               server_version=__version__)
        if local is None:
            return resp
        resp.local_node_state = "active"
        resp.node_id = local.node_id
        resp.node_addr = local.advertise_host
        if manager is None:
            resp.remote_managers.extend(pb.RemoteManager(node_id=m["node_id"], addr=m["addr"])
                                        for m in local.remote_managers)
            return resp
        resp.remote_managers.extend(pb.RemoteManager(node_id=i, addr=a) for i, a in manager.manager_addrs())
        try:
            resp.nodes, resp.managers = manager.counts()
            resp.cluster.CopyFrom(manager.cluster_pb())
            resp.control_available = True
        except SwarmError as e:
            resp.error = e.message
        return resp
