"""The node's lifecycle: inactive → manager or worker, promotion and demotion, and leave.

One ``NodeRuntime`` per daemon. Lifecycle changes (init, join, leave, resume, unlock, role
changes) run one at a time, marked by ``_operation``: a second one waits briefly for the first
or is refused, and no lock is held while one of them does network I/O, so status reads and a
shutdown never wait behind a join. Shutdown stops a running operation at its next step. The
node's local state (``state.json``) has one owner, ``_set_local``, which replaces it whole and
saves it atomically; every other request reads the current role and is answered by the manager
(or forwarded to the leader).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc

from swarmd import __version__, errors, ifaces, netaddr
from swarmd.agent.session import Agent, NotConnected
from swarmd.agent.worker import TaskRunner
from swarmd.node.autolock import KeySealer
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import ids, keyfile, pki, rotation, tokens
from swarmd.ca.store import CertificateStore
from swarmd.errors import SwarmError
from swarmd.fsutil import ensure_dir, remove_tree
from swarmd.node.identity import LockedError, NodeIdentity, WrongUnlockKey
from swarmd.initplan import (
    DEFAULT_LISTEN_ADDR,
    InitPlan,
    check_availability,
    check_listen_port,
    host_description,
    plan_init,
)
from swarmd.node.joiner import JoinResult, request_certificate
from swarmd.manager.authz import AuthzInterceptor
from swarmd.manager.dispatcher import Dispatcher
from swarmd.manager.guard import HandshakeGuard
from swarmd.manager.manager import Manager
from swarmd.manager.security import ManagerSecurity
from swarmd.node.localstate import LocalState
from swarmd.remotes import REQUEST_ID_KEY, Remotes, leader_hint
from swarmd.node.renewal import Renewer
from swarmd.server import start_remote_server
from swarmd.store.transport import PeerNetwork
from swarmd.timeutil import now_rfc3339

log = logging.getLogger(__name__)

Register = Callable[[grpc.Server], None]
RAFT_JOIN_TIMEOUT = 15.0
CALL_TIMEOUT = 15.0
FORWARD_WINDOW = 8.0          # an election takes 0.4–1.4 s; leave room for a few
FORWARD_CONNECT_TIMEOUT = 0.3   # a refused or silent leader is retried after a re-read
FORWARD_AFTER_FAILURE = 2.0     # after any failed attempt, keep looking for a leader this long ...
FORWARD_WINDOW_MAX = 30.0       # ... within this bound on the whole call
FORWARD_CALL_TIMEOUT = 15.0     # one attempt: longer than any call takes on the leader (a demotion waits 10 s)
# Failures after which a forwarded call is tried again (with the same request ID, so a write
# that did commit is not applied twice): the leader went away or changed.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED})
OPERATION_WAIT = 10.0          # how long init, join, leave, unlock wait for another operation
SHUTDOWN_WAIT = 2.0            # how long a shutdown lets a running operation reach its next step
JOIN_SESSION_TIMEOUT = 10.0
DEMOTED_TIMEOUT = 10.0
HANDOVER_TIMEOUT = 10.0        # a leader that leaves waits this long for another to take over
ROLE_RETRY_MIN, ROLE_RETRY_MAX = 0.5, 30.0
JOIN_TIMEOUT_TEXT = ('Timeout was reached before node joined. The attempt to join the swarm will continue in the '
                     'background. Use the "swarmctl info" command to see the current swarm status of your node.')


def _rfc1123(when: datetime) -> str:
    return when.strftime("%a, %d %b %Y %H:%M:%S UTC")


def _role_as_certified(node_id: str) -> str:
    """No store to check against yet: no certificate is capped below the role it names."""
    return "manager"


class _LeaderMoved(Exception):
    """A forwarded attempt that may be retried: the leader is elsewhere (``hint``) or unknown."""

    def __init__(self, hint: str | None) -> None:
        super().__init__(hint or "no leader")
        self.hint = hint


class NodeRuntime:
    def __init__(self, state_dir: Path, hostname: str, register: Register, *, executor: str = "process",
                 task_user: str | None = None) -> None:
        self.state_dir = state_dir
        self.hostname = hostname
        self._register = register
        self._executor_kind = executor
        self._task_user = task_user
        self.tasks: TaskRunner | None = None      # the node's tasks: they outlive sessions and role changes
        self._op_cond = threading.Condition()     # guards _op; never held across I/O
        self._op: str | None = None               # the lifecycle operation under way
        self._stopping = threading.Event()
        self._local_lock = threading.Lock()       # guards replacing and saving self.local
        self.local: LocalState | None = None
        self._wanted_role: str | None = None      # what the leader last asked this node to be
        self._role_wake = threading.Event()
        self._role_told = threading.Condition()   # notified when the leader names a role
        self._role_thread: threading.Thread | None = None
        self.manager: Manager | None = None
        self.security: ManagerSecurity | None = None
        self.agent: Agent | None = None
        self._network: PeerNetwork | None = None
        self._remote: Any = None
        self._guard: HandshakeGuard | None = None
        self._bootstrap_addrs: dict[str, str] = {}
        self.certs = CertificateStore(state_dir / "certificates")
        self.identity = NodeIdentity(self.certs)
        self.locked = False          # an autolocked manager after a restart, until unlocked
        self.expired = False         # certificates expired while the daemon was down
        self.sealer = KeySealer(self.identity, self._cluster_unlock_key, self._rekey)
        self._renewer: Renewer | None = None
        self._renew_lock = threading.Lock()
        self.dispatcher = Dispatcher(self)
        self.remotes = Remotes(self._channel_credentials)

    # -- the lifecycle operation and the local state ----------------------------------------------------
    @contextmanager
    def _operation(self, name: str, wait: float = OPERATION_WAIT) -> Iterator[None]:
        """Run one lifecycle operation at a time; refuse when another does not end in ``wait``."""
        deadline = time.monotonic() + wait
        with self._op_cond:
            while self._op is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SwarmError(f"another operation is in progress ({self._op}); try again later",
                                     grpc.StatusCode.FAILED_PRECONDITION)
                self._op_cond.wait(remaining)
            self._check_stopping()
            self._op = name
        try:
            yield
        finally:
            with self._op_cond:
                self._op = None
                self._op_cond.notify_all()

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise SwarmError("swarmd is shutting down", grpc.StatusCode.FAILED_PRECONDITION)

    def _set_local(self, local: LocalState | None, save: bool = True) -> None:
        """The one writer of the local state: replaced whole, saved atomically."""
        with self._local_lock:
            if save and local is not None:
                local.save(self.state_dir)
            self.local = local

    def _update_local(self, **changes: Any) -> None:
        with self._local_lock:
            if self.local is None:
                return
            local = dataclasses.replace(self.local, **changes)
            local.save(self.state_dir)
            self.local = local

    # -- paths and identity --------------------------------------------------------------------------
    @property
    def raft_dir(self) -> Path:
        return self.state_dir / "raft"

    def _wipe_swarm_state(self) -> None:
        LocalState.remove(self.state_dir)
        self.certs.wipe()
        self.identity.forget()
        self.locked = self.expired = False
        remove_tree(self.raft_dir)

    def _description(self) -> pb.NodeDescription:
        return pb.NodeDescription(**host_description(self.hostname))

    def node_channel_credentials(self) -> grpc.ChannelCredentials:
        m = self.identity.material()
        return grpc.ssl_channel_credentials(root_certificates=m.root_pem, private_key=m.key_pem,
                                            certificate_chain=m.cert_pem)

    def remote_role(self, context: grpc.ServicerContext) -> str | None:
        security = self.security
        return security.identify(context) if security is not None else None

    def security_identity(self, context: grpc.ServicerContext) -> str:
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:
            raise SwarmError("no client certificate", grpc.StatusCode.UNAUTHENTICATED)
        return pki.identity_from_cert(certs[0]).node_id

    def _trust(self) -> tuple[str, dict[str, str], Callable[[str], str | None]]:
        """For the TLS layer. Until this manager's store holds the cluster (a manager that is
        still catching up), any certificate of this cluster's root counts as a member with the
        role it names."""
        local, manager = self.local, self.manager
        cluster_id = local.cluster_id if local else ""
        if manager is None:
            return cluster_id, {}, _role_as_certified
        store_cluster, join_tokens, role_of = manager.trust()
        if not store_cluster:
            return cluster_id, {}, _role_as_certified
        return store_cluster, join_tokens, role_of

    def _store_roots(self) -> bytes:
        manager = self.manager
        return manager.trusted_roots() if manager is not None else b""

    def _manager_addr_of(self, node_id: str) -> str | None:
        manager = self.manager
        addr = manager.manager_addr_of(node_id) if manager is not None else None
        return addr or self._bootstrap_addrs.get(node_id)

    # -- state checks --------------------------------------------------------------------------------
    def cluster_id(self) -> str | None:
        local = self.local
        return local.cluster_id if local else None

    def require_manager(self) -> Manager:
        local, manager = self.local, self.manager
        if local is None:
            raise SwarmError(errors.NOT_MANAGER_INACTIVE, grpc.StatusCode.FAILED_PRECONDITION)
        if self.locked:
            raise SwarmError(errors.SWARM_LOCKED, grpc.StatusCode.FAILED_PRECONDITION)
        if self.expired:
            raise SwarmError(errors.CERTS_EXPIRED, grpc.StatusCode.FAILED_PRECONDITION)
        if manager is None:
            raise SwarmError(errors.NOT_MANAGER_WORKER, grpc.StatusCode.FAILED_PRECONDITION)
        return manager

    def require_leader(self, manager: Manager) -> None:
        if not manager.is_leader():
            raise errors.not_leader(manager.leader_addr())

    # -- talking to other managers ---------------------------------------------------------------------
    def _channel_credentials(self) -> grpc.ChannelCredentials:
        security = self.security
        return security.channel_credentials() if security is not None else self.node_channel_credentials()

    def forward_control(self, method: str, request: Any, request_id: str) -> Any:
        """Run a control call on the leader (reads the CLI shows and all writes).

        The leader may be changing (a manager just got cut off or stopped): each attempt first
        checks with a short deadline that the leader answers at all, and a failed attempt looks
        the leader up again until an election had time to finish. Every attempt carries the same
        request ID, so a write whose answer was lost is not applied twice (``requestid``)."""
        started = time.monotonic()
        deadline = started + FORWARD_WINDOW
        hint: str | None = None
        while True:
            manager = self.require_manager()
            leader = manager.store.leader_id()
            if leader == manager.node_id:
                raise SwarmError("this manager became the leader; retry", grpc.StatusCode.ABORTED)
            addr = hint or (manager.manager_addr_of(leader) if leader else None)
            hint = None
            if addr:
                try:
                    return self._forward_once(addr, method, request, request_id)
                except _LeaderMoved as moved:
                    hint = moved.hint
                    # A long attempt (a leader frozen mid-call) still leaves time to find the next one.
                    deadline = min(max(deadline, time.monotonic() + FORWARD_AFTER_FAILURE),
                                   started + FORWARD_WINDOW_MAX)
            if time.monotonic() >= deadline:
                raise SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN)
            if hint is None:
                time.sleep(0.02)

    def _forward_once(self, addr: str, method: str, request: Any, request_id: str) -> Any:
        with self.remotes.channel(addr) as channel:
            stub = pb_grpc.ControlStub(channel)
            try:
                # A cheap call with a short deadline first: is the leader there at all?
                stub.Version(pb.VersionRequest(), timeout=FORWARD_CONNECT_TIMEOUT, wait_for_ready=True)
                return getattr(stub, method)(request, timeout=FORWARD_CALL_TIMEOUT,
                                             metadata=((REQUEST_ID_KEY, request_id),))
            except grpc.RpcError as e:
                hint = leader_hint(e)
                if hint is not None or e.code() in RETRYABLE or e.details() == errors.NO_LEADER:
                    raise _LeaderMoved(hint) from None
                raise SwarmError(str(e.details()), e.code()) from None

    def check_manager_reachable(self, node_id: str, addr: str) -> None:
        """The leader's check that a joining manager answers on its advertise address."""
        with self.remotes.channel(addr, node_id) as channel:
            try:
                # Any answer proves TLS reached that node (its certificate names node_id).
                pb_grpc.ControlStub(channel).Version(pb.VersionRequest(), timeout=5, wait_for_ready=True)
            except grpc.RpcError:
                raise SwarmError("could not connect to prospective new cluster member using its advertised "
                                 "address: rpc error: code = DeadlineExceeded desc = context deadline exceeded",
                                 grpc.StatusCode.UNKNOWN) from None

    def _call_leader(self, service: str, method: str, request: Any, managers: list[tuple[str, str]]) -> Any:
        """Call a leader-only RPC, following the leader hints of managers that are not it, for as
        long as an election may take (hints can point back and forth while one runs)."""
        deadline = time.monotonic() + FORWARD_WINDOW
        last: SwarmError | None = None
        while True:
            candidates = [a for _, a in managers]
            tried: set[str] = set()
            while candidates:
                self._check_stopping()
                addr = candidates.pop(0)
                if addr in tried:
                    continue
                tried.add(addr)
                with self.remotes.channel(addr) as channel:
                    stub = getattr(pb_grpc, f"{service}Stub")(channel)
                    try:
                        return getattr(stub, method)(request, timeout=RAFT_JOIN_TIMEOUT)
                    except grpc.RpcError as e:
                        last = SwarmError(e.details() or "", e.code())
                        hint = leader_hint(e)
                        if hint is not None:
                            candidates.insert(0, hint)
                        elif e.code() not in RETRYABLE and e.details() != errors.NO_LEADER:
                            raise last from None
            if time.monotonic() >= deadline:
                # UNKNOWN: the CLI reads UNAVAILABLE and DEADLINE_EXCEEDED as its own failures.
                raise SwarmError(last.message if last else errors.NO_LEADER, grpc.StatusCode.UNKNOWN)
            time.sleep(0.1)

    # -- manager and agent components ------------------------------------------------------------------
    def _start_manager(self, local: LocalState, peers: list[tuple[str, str]], raft_join: bool = False) -> None:
        """Remote API first (a joining manager must answer the leader's check), then Raft."""
        m = self.identity.material()
        security = ManagerSecurity(m.root_pem, m.cert_pem, m.key_pem, self._trust, self._store_roots)
        network = PeerNetwork(local.node_id, self._manager_addr_of, security.channel_credentials)
        self._bootstrap_addrs = {i: a for i, a in peers if i != local.node_id}
        self.security, self._network = security, network

        def register(server: grpc.Server) -> None:
            self._register(server)
            pb_grpc.add_RaftServicer_to_server(network.servicer(), server)

        started = time.monotonic()
        guard = self._guard = HandshakeGuard()
        listen_ip = netaddr.host_of(local.listen_addr)
        self._remote = start_remote_server(local.listen_addr, security.server_credentials(guard.on_connection),
                                           [AuthzInterceptor(self.remote_role, on_call=guard.on_call)], register,
                                           on_bound=lambda port: guard.bind(listen_ip, port))
        log.debug("remote API on %s after %.3fs", local.listen_addr, time.monotonic() - started)
        try:
            if raft_join:
                resp = self._call_leader("RaftMembership", "Join",
                                         pb.RaftJoinRequest(addr=local.advertise_addr), peers)
                peers = [(m.node_id, m.addr) for m in resp.members]
                self._bootstrap_addrs = {i: a for i, a in peers if i != local.node_id}
                log.debug("admitted to raft after %.3fs", time.monotonic() - started)
            others = [i for i, _ in peers if i != local.node_id]
            pending = self.identity.pending_data_key
            manager = Manager(local.node_id, self.raft_dir, others, network, data_key=self.identity.ensure_data_key(),
                              other_keys=[pending] if pending else [])
            manager.machine.add_listener(self.dispatcher.notify)
            manager.machine.add_listener(self.sealer.observe)
            manager.leadership.add(self.dispatcher.liveness(manager))
            self.manager = manager
            manager.start()
            self.sealer.finish_interrupted_rotation()
            log.debug("raft store started after %.3fs", time.monotonic() - started)
        except BaseException:
            self._stop_manager()
            raise

    def _stop_manager(self) -> None:
        if self._remote is not None:
            self._remote.stop(1.0)
            self._remote = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        if self.manager is not None:
            self.manager.stop()
            self.manager = None
        elif self._network is not None:
            self._network.close()
        self._network = None
        self.security = None
        self.remotes.renew()  # later calls present the node's own credentials

    def _task_runner(self, node_id: str) -> TaskRunner:
        """The node's task runner, made (adopting what the executor kept) with the first agent."""
        if self.tasks is None:
            from swarmd.agent.exec.api import Executor

            executor: Executor
            if self._executor_kind == "none":
                from swarmd.agent.exec.none import NoExecutor
                executor = NoExecutor()
            else:
                from swarmd.agent.exec.process import ProcessExecutor, ProcessExecutorConfig
                executor = ProcessExecutor(self.executor_dir, ProcessExecutorConfig(task_user=self._task_user))
            self.tasks = TaskRunner(executor, node_id, self.hostname, self._send_task_reports).start()
        return self.tasks

    @property
    def executor_dir(self) -> Path:
        return self.state_dir / "executor"

    def _send_task_reports(self, updates: list[Any]) -> None:
        agent = self.agent
        if agent is None:
            raise NotConnected("no session with a manager")
        agent.report_task_status(updates)

    def _stop_tasks(self) -> None:
        """Leaving the swarm: the node's tasks stop and their state goes (their last reports
        are sent while the session still runs)."""
        tasks, self.tasks = self.tasks, None
        if tasks is not None:
            tasks.stop_all()
            tasks.reporting_idle(2.0)
            tasks.close()
        elif (self.executor_dir / "tasks").is_dir():  # a locked node: no runner adopted them
            from swarmd.agent.exec.process import ProcessExecutor
            executor = ProcessExecutor(self.executor_dir)
            for task_id in executor.adopt():
                executor.remove(task_id)
        remove_tree(self.executor_dir)

    def _start_agent(self, local: LocalState, managers: list[tuple[str, str]], heartbeat_ns: int) -> Agent:
        agent = Agent(local.node_id, self.node_channel_credentials, managers, heartbeat_ns, self._description(),
                      local.advertise_addr, self._on_session, self._tls_info, tasks=self._task_runner(local.node_id))
        self.agent = agent
        agent.start()
        self._renewer = Renewer(lambda: (self.identity.not_before(), self.identity.not_after()),
                                self._renew_in_place)
        self._renewer.start()
        self._role_wake.clear()
        self._role_thread = threading.Thread(target=self._role_loop, args=(agent,), name="role-watcher",
                                             daemon=True)
        self._role_thread.start()
        return agent

    def _tls_info(self) -> pb.TLSInfo:
        m = self.identity.material()
        subject, public_key = rotation.issuer_info(m.cert_pem, m.root_pem)
        return pb.TLSInfo(trust_root=m.root_pem.decode(), cert_issuer_subject=subject,
                          cert_issuer_public_key=public_key)

    def _stop_renewer(self) -> None:
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None

    def _stop_agent(self) -> None:
        self._stop_renewer()
        agent, self.agent = self.agent, None
        if agent is not None:
            agent.stop()
        self._role_wake.set()  # the role watcher sees its agent is gone and ends
        thread, self._role_thread = self._role_thread, None
        if thread is not None and thread is not threading.current_thread() and not self._stopping.is_set():
            thread.join(5.0)  # (a shutdown does not wait for a role change in the middle of a network call)

    # -- start and stop --------------------------------------------------------------------------------
    def resume(self) -> None:
        """Pick the swarm up again from the state dir after a (re)start of the daemon."""
        with self._operation("resuming"):
            ensure_dir(self.state_dir)
            local = LocalState.load(self.state_dir)
            if local is None:
                if self.certs.exists() or self.raft_dir.exists():
                    log.warning("removing the leftovers of an unfinished init or join")
                    self._wipe_swarm_state()
                return
            self._set_local(local, save=False)
            if local.role == "worker" and self.raft_dir.exists():
                # A demotion that stopped half-way: a worker keeps no manager data.
                log.warning("removing the raft data this worker kept from when it was a manager")
                remove_tree(self.raft_dir)
            if self.identity.is_locked_on_disk():
                # A manager of an autolocked swarm (or a worker whose demotion stopped before
                # its key file was stored plain: unlocking it finishes that).
                self.locked = True
                log.warning("this manager is locked: run 'swarmctl unlock' with the swarm's unlock key")
                return
            self.identity.load()
            self._start_components(local)

    def _start_components(self, local: LocalState) -> None:
        """Manager (if one) and agent of a node whose identity is loaded."""
        if local.role == "worker" and self.identity.drop_manager_secrets():
            log.warning("removed the raft data keys this worker kept from when it was a manager")
        not_after = self.identity.not_after()
        now = datetime.now(timezone.utc)
        if not_after <= now:
            self.expired = True
            log.error("error while loading TLS certificate in %s: certificate (1 - %s) not valid after %s, "
                      "and it is currently %s: x509: certificate has expired or is not yet valid",
                      self.certs.cert_path, local.node_id, _rfc1123(not_after), _rfc1123(now))
            return
        managers = [(m["node_id"], m["addr"]) for m in local.remote_managers]
        if local.role == "manager":
            self._start_manager(local, managers)
            assert self.manager is not None
            managers = self.manager.managers() or managers
        self._start_agent(local, managers, self._heartbeat_hint())
        log.info("resumed swarm %s as %s %s", local.cluster_id, local.role, local.node_id)

    # -- autolock ------------------------------------------------------------------------------
    def unlock(self, key: str) -> None:
        with self._operation("unlocking"):
            local = self.local
            if local is None:
                raise SwarmError(errors.NOT_PART_OF_SWARM)
            if not self.locked:
                raise SwarmError(errors.NOT_LOCKED, grpc.StatusCode.FAILED_PRECONDITION)
            try:
                kek = keyfile.parse_unlock_key(key.strip())
            except ValueError:
                raise errors.invalid(errors.INVALID_KEY_STRING) from None
            try:
                self.identity.load(kek)
            except WrongUnlockKey:
                log.warning("unlock refused: the key given does not open this manager's keys")
                raise SwarmError(errors.INVALID_UNLOCK_KEY, grpc.StatusCode.UNAUTHENTICATED) from None
            except (LockedError, keyfile.KeyFileError) as e:
                raise SwarmError(f"swarm component could not be started: {e}") from None
            self.locked = False
            try:
                self._start_components(local)
            except BaseException:
                self._stop_agent()
                self._stop_manager()
                self.locked = True
                self.identity.forget()
                raise
            log.info("manager unlocked")

    def _rekey(self, data_key: bytes) -> None:
        manager = self.manager
        if manager is None:
            raise SwarmError("this node runs no raft store")
        manager.store.rekey(data_key)

    def _cluster_unlock_key(self) -> str | None:
        manager = self.manager
        if manager is None or self.local is None:
            return None
        return str(manager.machine.read(lambda s: s["cluster"].get("unlock_key", "") if s["cluster"] else ""))

    def _heartbeat_hint(self) -> int:
        manager = self.manager
        return manager.heartbeat_ns() if manager is not None else 5 * 10**9

    def begin_shutdown(self) -> None:
        self._stopping.set()
        self._role_wake.set()

    def shutdown(self) -> None:
        """Stop everything within a few seconds, whatever operation is under way: it is told to
        stop and given ``SHUTDOWN_WAIT`` to reach its next step; then its components stop
        under it (what it had not finished is undone at the next start, as after a crash)."""
        self.begin_shutdown()
        with self._op_cond:
            deadline = time.monotonic() + SHUTDOWN_WAIT
            while self._op is not None and time.monotonic() < deadline:
                self._op_cond.wait(max(0.0, deadline - time.monotonic()))
            if self._op is not None:
                log.warning("stopping while %s", self._op)
        self._stop_agent()
        if self.tasks is not None:
            self.tasks.close()  # the tasks go on running: the next start adopts them
        self._stop_manager()
        self.remotes.close()
        self.dispatcher.close()

    # -- init ----------------------------------------------------------------------------------------
    def init(self, req: pb.InitRequest) -> pb.InitResponse:
        with self._operation("initialising a swarm"):
            if self.local is not None:
                if req.force_new_cluster and self.manager is not None:
                    return self._force_new_cluster()
                raise SwarmError(errors.ALREADY_IN_SWARM)
            plan = plan_init(req)
            try:
                return self._create_swarm(plan)
            except BaseException:
                log.warning("init failed; returning the node to inactive")
                self._abandon()
                raise

    def _abandon(self) -> None:
        self._stop_agent()
        self._stop_manager()
        self._wipe_swarm_state()
        self._set_local(None)

    def _create_swarm(self, plan: InitPlan) -> pb.InitResponse:
        node_id, cluster_id = ids.new_id(), ids.new_id()
        root_pem, root_key = pki.create_root_ca()
        key = pki.generate_key()
        cert_pem = pki.sign_node_certificate(
            root_pem, root_key, pki.make_csr(key), node_id, cluster_id, pki.MANAGER_ROLE,
            timedelta(microseconds=plan.spec["node_cert_expiry_ns"] // 1000))
        key_pem = pki.key_to_pem(key)
        unlock_key = keyfile.generate_unlock_key() if plan.spec["autolock_managers"] else ""
        ensure_dir(self.state_dir)
        self.identity.create(root_pem, cert_pem, key_pem,
                             keyfile.parse_unlock_key(unlock_key) if unlock_key else None, with_data_key=True)
        self.sealer.assume(unlock_key)
        local = LocalState(node_id=node_id, cluster_id=cluster_id, role="manager",
                           listen_addr=plan.listen_addr, advertise_addr=plan.advertise_addr,
                           local_addr=plan.local_addr, data_path_addr=plan.data_path_addr,
                           data_path_port=plan.data_path_port,
                           remote_managers=[{"node_id": node_id, "addr": plan.advertise_addr}])
        self._set_local(local, save=False)  # saved once the swarm exists: its presence marks membership
        self._start_manager(local, [])
        assert self.manager is not None
        now = now_rfc3339()
        cluster: dict[str, Any] = {
            "id": cluster_id, "name": "default", "created_at": now, "updated_at": now,
            "spec": plan.spec,
            "root_ca": {"cert": root_pem.decode(), "key": root_key.decode()},
            "join_tokens": {"worker": tokens.generate_join_token(root_pem),
                            "manager": tokens.generate_join_token(root_pem)},
            "default_addr_pool": plan.default_addr_pool, "subnet_size": plan.subnet_size,
            "data_path_port": plan.data_path_port, "force_rotate": 0, "unlock_key": unlock_key,
        }
        node = {
            "id": node_id, "created_at": now, "updated_at": now, "role": "manager",
            "availability": plan.availability, "labels": {}, **host_description(self.hostname),
            "state": "ready", "addr": local.advertise_host, "message": "",
            "manager": {"addr": plan.advertise_addr},
        }
        ingress = {"id": ids.new_id(), "name": "ingress", "ingress": True, "now": now, **plan.ingress.op_fields()}
        self.manager.propose("bootstrap", cluster=cluster, node=node, ingress=ingress)
        self._set_local(local)
        self._start_agent(local, [(node_id, plan.advertise_addr)], plan.spec["dispatcher_heartbeat_ns"])
        log.info("swarm %s created; this node %s is its leader", cluster_id, node_id)
        return pb.InitResponse(node_id=node_id, manager_addr=plan.advertise_addr,
                               worker_token=cluster["join_tokens"]["worker"], unlock_key=unlock_key)

    def _force_new_cluster(self) -> pb.InitResponse:
        """Restart this manager as a one-member cluster keeping its data: the state moves into
        a fresh Raft log whose only member is this node; other managers become Down workers."""
        local, manager = self.local, self.manager
        assert local is not None and manager is not None
        state = manager.machine.dump()
        if state["cluster"] is None:
            raise SwarmError("this manager has no cluster state to keep")
        now = now_rfc3339()
        for node in state["nodes"].values():
            if node["id"] != local.node_id and node.get("manager"):
                node.update(role="worker", manager=None, state="down", updated_at=now,
                            message="removed by --force-new-cluster")
        self._stop_agent()
        self._stop_manager()
        old = self.raft_dir.with_name(f"raft.old-{ids.new_id()[:8]}")
        self.raft_dir.rename(old)
        try:
            self._start_manager(local, [])
            assert self.manager is not None
            self.manager.propose("restore", state=state)
        except BaseException:
            self._stop_manager()
            remove_tree(self.raft_dir)
            old.rename(self.raft_dir)
            raise
        remove_tree(old)
        self._update_local(remote_managers=[{"node_id": local.node_id, "addr": local.advertise_addr}])
        self._start_agent(local, [(local.node_id, local.advertise_addr)], self._heartbeat_hint())
        log.warning("forced a new one-manager cluster from this node's state")
        return pb.InitResponse(node_id=local.node_id, manager_addr=local.advertise_addr,
                               worker_token=state["cluster"]["join_tokens"]["worker"])

    # -- join ------------------------------------------------------------------------------------------
    def join(self, req: pb.JoinRequest) -> pb.JoinResponse:
        with self._operation("joining a swarm"):
            if self.local is not None:
                raise SwarmError(errors.ALREADY_IN_SWARM)
            availability = check_availability(req.availability)
            listen = req.listen_addr or DEFAULT_LISTEN_ADDR
            try:
                interfaces = ifaces.list_interfaces()
                listen_ip, listen_port = netaddr.resolve_listen_addr(listen, interfaces)
                data_path = netaddr.resolve_data_path_addr(req.data_path_addr, interfaces)
            except netaddr.AddrError as e:
                raise errors.invalid(str(e)) from None
            check_listen_port(listen_port)
            try:
                adv_host, adv_port = netaddr.resolve_advertise_addr(req.advertise_addr, listen_port, interfaces)
            except netaddr.AddrError:
                adv_host, adv_port = "", listen_port  # Docker ignores it: the manager sees our address
            advertise = netaddr.join_host_port(adv_host, adv_port) if adv_host else f":{adv_port}"
            result = request_certificate(req.remote_addr, req.token, availability, advertise, self._description())
            try:
                self._check_stopping()
                agent = self._become_member(result, netaddr.join_host_port(listen_ip, listen_port),
                                            result.advertise_addr or advertise, data_path)
            except BaseException:
                log.warning("join failed after the certificate was issued; returning to inactive")
                self._abandon()
                raise
        if not agent.wait_connected(JOIN_SESSION_TIMEOUT):
            # A member now (it holds a certificate and state.json): the session keeps trying.
            log.warning("no session with the leader after %.0fs; still trying", JOIN_SESSION_TIMEOUT)
            raise SwarmError(JOIN_TIMEOUT_TEXT, grpc.StatusCode.UNKNOWN)
        log.debug("session with the leader open")
        return pb.JoinResponse(node_id=result.node_id, role=result.role)

    def _become_member(self, result: JoinResult, listen: str, advertise: str, data_path: str) -> Agent:
        ensure_dir(self.state_dir)
        self.identity.create(result.root_pem, result.cert_pem, result.key_pem,
                             with_data_key=result.role == "manager")
        local = LocalState(node_id=result.node_id, cluster_id=result.cluster_id, role=result.role,
                           listen_addr=listen, advertise_addr=advertise, local_addr=netaddr.host_of(advertise),
                           data_path_addr=data_path,
                           remote_managers=[{"node_id": i, "addr": a} for i, a in result.managers])
        self._set_local(local, save=False)
        managers = result.managers
        if result.role == "manager":
            self._start_manager(local, result.managers,
                                raft_join=True)
            assert self.manager is not None
            if not self.manager.store.wait_ready(RAFT_JOIN_TIMEOUT):
                raise SwarmError("timed out catching up with the swarm's raft log", grpc.StatusCode.UNKNOWN)
            self._check_stopping()
            managers = self.manager.managers() or managers
            local = dataclasses.replace(local, remote_managers=[{"node_id": i, "addr": a} for i, a in managers])
        self._set_local(local)
        agent = self._start_agent(local, managers, result.heartbeat_ns)
        log.info("joined swarm %s as %s %s", result.cluster_id, result.role, result.node_id)
        return agent

    # -- leave -----------------------------------------------------------------------------------------
    def leave(self, force: bool) -> None:
        with self._operation("leaving the swarm"):
            local = self.local
            if local is None:
                raise SwarmError(errors.NOT_PART_OF_SWARM)
            if self.locked and not force:
                raise SwarmError(errors.SWARM_LOCKED)  # as Docker: a locked manager leaves only with --force
            manager = self.manager
            if manager is not None:
                if not force:
                    raise SwarmError(self._leave_warning(manager))
                self._leave_raft(manager)
            self._stop_tasks()
            if self.agent is not None:
                self.agent.leave()
            self._stop_agent()
            self._stop_manager()
            self._wipe_swarm_state()
            log.info("left swarm %s", local.cluster_id)
            self._set_local(None)

    @staticmethod
    def _leave_warning(manager: Manager) -> str:
        msg = "You are attempting to leave the swarm on a node that is participating as a manager. "
        reachable, unreachable = manager.manager_stats()
        if reachable - 2 <= unreachable:
            if reachable == 1 and unreachable == 0:
                return msg + ("Removing the last manager erases all current state of the swarm. Use `--force` "
                              "to ignore this message.")
            msg += (f"Removing this node leaves {reachable - 1} managers out of {reachable + unreachable}. "
                    "Without a Raft quorum your swarm will be inaccessible. ")
        return msg + ("The only way to restore a swarm that has lost consensus is to reinitialize it with "
                      "`--force-new-cluster`. Use `--force` to suppress this message.")

    def _leave_raft(self, manager: Manager) -> None:
        """Best effort: take this manager out of Raft so the others keep a correct quorum."""
        others = [(i, a) for i, a in manager.managers() if i != manager.node_id]
        if not others:
            return
        try:
            # The leader cannot take itself out: it hands over first, and the next leader does.
            if manager.is_leader() and not manager.store.transfer_leadership(timeout=HANDOVER_TIMEOUT):
                log.warning("no other manager took over the leadership in %.0fs; leaving without handing it "
                            "over (the others elect a leader once this one is gone)", HANDOVER_TIMEOUT)
                return
            self._call_leader("RaftMembership", "Leave", pb.RaftLeaveRequest(), others)
        except Exception as e:  # noqa: BLE001 - leaving goes on regardless
            log.warning("could not leave the raft cluster cleanly: %s", e)

    # -- session updates (promotion, demotion, manager list) ----------------------------------------------
    def _on_session(self, message: pb.SessionMessage) -> None:
        local = self.local
        if local is None:
            return
        managers = [{"node_id": m.node_id, "addr": m.addr} for m in message.managers]
        if managers and managers != local.remote_managers:
            self._update_local(remote_managers=managers)
        wanted = message.desired_role
        if wanted in ("worker", "manager"):
            with self._role_told:
                self._wanted_role = wanted
                self._role_told.notify_all()
            if wanted != local.role:
                self._role_wake.set()
                return
        if message.root_ca and message.root_ca != self.identity.material().root_pem:
            self._adopt_root(message.root_ca)
        if message.renew_certificate and self._renewer is not None:
            self._renewer.renew_now()

    def _adopt_root(self, root: bytes) -> None:
        """A root rotation ended: trust the new root, once this node's certificate chains to it
        (otherwise renew first; the new root then comes with the certificate)."""
        try:
            pki.verify_node_cert(self.identity.material().cert_pem, root)
        except ValueError:
            if self._renewer is not None:
                self._renewer.renew_now()
            return
        self.identity.replace_root(root)
        log.info("the swarm's root CA changed; this node now trusts the new root")
        if self.agent is not None:
            self.agent.report_tls()

    def _renew_in_place(self) -> None:
        """A new certificate for this node's role (the renewer's job, and the last step of a
        demotion); when the swarm wants another role, the role watcher changes it first."""
        with self._renew_lock:
            local, agent = self.local, self.agent
            if local is None or agent is None:
                return
            others = [(i, a) for i, a in agent.managers if i != local.node_id or local.role == "manager"]
            root, cert, key, role = self._renew(others)
            if role != local.role:
                return  # the session's desired role drives promotion and demotion
            self.identity.replace_certificate(root, cert, key)
            if self.security is not None:
                self.security.update_node_certificate(cert, key)
            self.remotes.renew()  # calls to managers open channels with the new certificate
            agent.reconnect()  # the new session presents the new certificate and reports it

    def _renew(self, managers: list[tuple[str, str]]) -> tuple[bytes, bytes, bytes, str]:
        key = pki.generate_key()
        resp = self._call_ca_renewal(pki.make_csr(key), managers)
        root = self.identity.material().root_pem
        if resp.root_ca and resp.root_ca != root:
            # A rotation ended: the new root came over a connection the current root authenticated.
            root = resp.root_ca
        pki.verify_node_cert(resp.certificate, root)
        return root, resp.certificate, pki.key_to_pem(key), resp.role

    def _call_ca_renewal(self, csr: bytes, managers: list[tuple[str, str]]) -> Any:
        last: Exception | None = None
        for _, addr in managers:
            self._check_stopping()
            with self.remotes.channel(addr) as channel:
                try:
                    return pb_grpc.CAStub(channel).IssueNodeCertificate(
                        pb.IssueNodeCertificateRequest(csr=csr), timeout=CALL_TIMEOUT)
                except grpc.RpcError as e:
                    last = SwarmError(str(e.details()), e.code())
        raise last or SwarmError("no manager to renew the certificate with")

    def wait_demoted(self, timeout: float = DEMOTED_TIMEOUT) -> None:
        """Wait until the leader tells this node it is a worker (its demotion committed)."""
        with self._role_told:
            if not self._role_told.wait_for(lambda: self._wanted_role == "worker", timeout):
                raise SwarmError("the leadership was handed over, but the new leader did not complete this "
                                 "manager's demotion in time; it completes it as soon as it can",
                                 grpc.StatusCode.UNKNOWN)

    def _role_loop(self, agent: Agent) -> None:
        """Make this node the role the leader asks for, retrying with a growing delay until it
        is (a failed promotion or demotion is not left until the session happens to change)."""
        delay = ROLE_RETRY_MIN
        while True:
            self._role_wake.wait()
            self._role_wake.clear()
            if self._stopping.is_set() or self.agent is not agent:
                return
            try:
                self._reconcile_role()
                delay = ROLE_RETRY_MIN
            except Exception as e:  # noqa: BLE001 - retried below
                log.error("could not become a %s: %s (retrying in %.1fs)", self._wanted_role,
                          e.message if isinstance(e, SwarmError) else e, delay)
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, ROLE_RETRY_MAX)
                self._role_wake.set()

    def _reconcile_role(self) -> None:
        local, wanted = self.local, self._wanted_role
        if local is None or wanted is None:
            return
        if wanted != local.role:
            with self._operation(f"becoming a {wanted}", wait=0.0):
                local = self.local
                if local is None or local.role == wanted:
                    return
                if wanted == "manager":
                    self._promote(local)
                else:
                    self._demote(local)
        local = self.local
        if local is not None and self.identity.certified_role() != local.role:
            self._renew_in_place()  # a demoted node's manager certificate is replaced

    def _promote(self, local: LocalState) -> None:
        managers = self.agent.managers if self.agent is not None else []
        root, cert, key, role = self._renew(managers)
        if role != "manager":
            raise SwarmError("the swarm no longer asks this node to be a manager")
        self.identity.replace_certificate(root, cert, key)
        promoted = dataclasses.replace(local, role="manager")
        try:
            self._start_manager(promoted, managers, raft_join=True)
            assert self.manager is not None
            if not self.manager.store.wait_ready(RAFT_JOIN_TIMEOUT):
                raise SwarmError("timed out catching up with the swarm's raft log")
            self._check_stopping()
        except BaseException:
            self._stop_manager()
            self._forget_manager_data()
            raise
        self._set_local(promoted)
        log.info("this node is now a manager")

    def _demote(self, local: LocalState) -> None:
        """The leader took this node out of Raft: stop the store and keep no manager secret (the
        Raft data holds the CA key, the join tokens and the unlock key) before the worker
        certificate is written."""
        self._stop_manager()
        # state.json first: a crash before the wipe leaves a worker, which wipes at its start.
        self._set_local(dataclasses.replace(local, role="worker"))
        self._forget_manager_data()
        log.info("this node is now a worker")

    def _forget_manager_data(self) -> None:
        remove_tree(self.raft_dir)
        self.identity.drop_manager_secrets()  # and workers are never locked
        self.sealer.assume(None)

    # -- info ------------------------------------------------------------------------------------------
    def info(self) -> pb.InfoResponse:
        local, manager = self.local, self.manager
        resp = pb.InfoResponse(local_node_state="inactive", hostname=self.hostname, server_version=__version__)
        if local is None:
            return resp
        if self.locked or self.expired:
            # Docker shows no node ID and no managers for a node that cannot start its swarm.
            resp.local_node_state = "locked" if self.locked else "error"
            resp.node_addr = local.advertise_host
            resp.error = errors.SWARM_LOCKED if self.locked else errors.CERTS_EXPIRED
            return resp
        resp.local_node_state = "active"
        resp.node_id = local.node_id
        resp.node_addr = local.advertise_host
        if manager is None:
            resp.remote_managers.extend(pb.RemoteManager(node_id=m["node_id"], addr=m["addr"])
                                        for m in local.remote_managers)
            return resp
        resp.remote_managers.extend(pb.RemoteManager(node_id=i, addr=a) for i, a in manager.managers())
        try:
            resp.nodes, resp.managers = manager.counts()
            resp.cluster.CopyFrom(manager.cluster_pb())
            resp.control_available = True
        except SwarmError as e:
            resp.error = e.message
        return resp
