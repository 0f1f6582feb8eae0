"""The node's side of its session with the leader (DESIGN §6).

One thread holds the ``Session`` stream (the leader pushes managers, heartbeat period, desired
role, and the node's assignments, which go to the task runner, ``worker``); another sends a
``Heartbeat`` every period on the same channel, and the runner's reports use it too. When the stream or a
heartbeat fails, the agent moves on: first to the leader a manager named, then through the
manager list, with a short backoff between rounds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.remotes import leader_hint, open_channel

if TYPE_CHECKING:
    from swarmd.agent.worker import TaskRunner

log = logging.getLogger(__name__)

REPORT_TIMEOUT = 15.0  # the manager answers once the reports are written (it waits 10 s at most)


class NotConnected(Exception):
    """No session now: a report waits for the next one."""

Credentials = Callable[[], grpc.ChannelCredentials]


class Agent:
    def __init__(self, node_id: str, credentials: Credentials, managers: list[tuple[str, str]],
                 heartbeat_ns: int, description: pb.NodeDescription, advertise_addr: str,
                 on_message: Callable[[pb.SessionMessage], None],
                 tls_info: Callable[[], pb.TLSInfo] = pb.TLSInfo, tasks: TaskRunner | None = None) -> None:
        self.node_id = node_id
        self._credentials = credentials
        self._managers = list(managers)
        self._leader_hint: str | None = None
        self._period = max(heartbeat_ns, 10**8) / 1e9
        self._description = description
        self._advertise = advertise_addr
        self._on_message = on_message
        self._tls_info = tls_info
        self._tasks = tasks
        self._sent_tls: pb.TLSInfo | None = None
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._channel: grpc.Channel | None = None
        self._thread = threading.Thread(target=self._run, name="agent-session", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def report_tls(self) -> None:
        """Send a heartbeat now: the certificate or trust root changed (renewal, rotation)."""
        self._kick.set()

    def reconnect(self) -> None:
        """Open a new session: the node certificate changed, and an open connection keeps
        presenting the one it was made with (which a finished root rotation no longer trusts)."""
        self._cancel()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._kick.set()
        self._cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def leave(self, timeout: float = 2.0) -> None:
        """Graceful leave: tell the leader first so the node shows Down at once."""
        channel = self._channel
        if channel is not None and self._connected.is_set():
            try:
                pb_grpc.DispatcherStub(channel).Heartbeat(pb.HeartbeatRequest(leaving=True), timeout=timeout)
            except grpc.RpcError as e:
                log.info("could not announce the leave: %s", e.details())
        self.stop()

    def report_task_status(self, updates: list[spb.TaskStatusUpdate]) -> None:
        """Send task reports on the session's channel (the runner's reporter thread)."""
        channel = self._channel
        if channel is None or not self._connected.is_set():
            raise NotConnected("no session with a manager")
        pb_grpc.DispatcherStub(channel).UpdateTaskStatus(spb.UpdateTaskStatusRequest(updates=updates),
                                                         timeout=REPORT_TIMEOUT)

    @property
    def managers(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._managers)

    # -- the session loop ------------------------------------------------------------------------------
    def _candidates(self) -> list[str]:
        with self._lock:
            addrs = [a for _, a in self._managers]
            hint = self._leader_hint
        ordered = ([hint] if hint else []) + [a for a in addrs if a != hint]
        return ordered

    def _cancel(self) -> None:
        with self._lock:
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            for addr in self._candidates():
                if self._stop.is_set():
                    return
                if self._session(addr):
                    backoff = 0.1
                    break
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _session(self, addr: str) -> bool:
        """Run one session against ``addr``; True if it was established at some point."""
        established = False
        channel = open_channel(addr, self._credentials(), "swarm-manager")
        self._channel = channel
        heartbeat_stop = threading.Event()
        try:
            tls = self._tls_info()
            call = pb_grpc.DispatcherStub(channel).Session(
                pb.SessionRequest(description=self._description, advertise_addr=self._advertise, tls_info=tls))
            self._sent_tls = tls
            with self._lock:
                self._call = call
            if self._tasks is not None:
                self._tasks.session_started()
            for message in call:
                if not established:
                    established = True
                    self._connected.set()
                    threading.Thread(target=self._heartbeats, args=(channel, heartbeat_stop),
                                     name="agent-heartbeat", daemon=True).start()
                self._absorb(message)
                if message.removed:
                    log.warning("this node was removed from the swarm")
                    self._stop.set()
                    if self._tasks is not None:  # its tasks stop, as on a leave
                        threading.Thread(target=self._tasks.stop_all, name="tasks-stop", daemon=True).start()
        except grpc.RpcError as e:
            details = e.details() or ""
            hint = leader_hint(e)
            if hint is not None:
                self._leader_hint = hint
            elif not self._stop.is_set():
                log.info("session with %s ended: %s", addr, details or e.code())
        finally:
            heartbeat_stop.set()
            self._connected.clear()
            with self._lock:
                self._call = None
            self._channel = None
            channel.close()
        return established

    def _absorb(self, message: pb.SessionMessage) -> None:
        with self._lock:
            if message.managers:
                self._managers = [(m.node_id, m.addr) for m in message.managers]
            self._leader_hint = message.leader_addr or self._leader_hint
            if message.heartbeat_period_ns:
                self._period = message.heartbeat_period_ns / 1e9
        if message.HasField("assignments") and self._tasks is not None:
            if not self._tasks.assignments(message.assignments):
                self._cancel()  # a gap: a new session starts with the full set
                return
        try:
            self._on_message(message)
        except Exception:  # noqa: BLE001 - a failing reaction must not end the session
            log.exception("handling a session update failed")

    def _heartbeats(self, channel: grpc.Channel, stop: threading.Event) -> None:
        stub = pb_grpc.DispatcherStub(channel)
        while not stop.is_set() and not self._stop.is_set():
            self._kick.wait(self._period)
            self._kick.clear()
            if stop.is_set() or self._stop.is_set():
                return
            try:
                tls = self._tls_info()
                changed = tls if tls != self._sent_tls else None
                stub.Heartbeat(pb.HeartbeatRequest(tls_info=changed), timeout=max(self._period, 1.0))
                if changed is not None:
                    self._sent_tls = changed
            except grpc.RpcError as e:
                log.info("heartbeat failed (%s); looking for a manager", e.details() or e.code())
                self._cancel()
                return
