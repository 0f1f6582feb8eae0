"""``swarmd``: the per-host daemon. Starts inactive, resumes a swarm from its state dir, serves
the control API on a Unix socket, and speaks the systemd notify protocol.

Signals: SIGTERM/SIGINT stop cleanly; SIGHUP re-reads the log level from ``--config``.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from swarmd import __version__, coredump, logs, paths, systemd

log = logging.getLogger("swarmd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="swarmd", description="Swarm mode daemon: one per host.")
    p.add_argument("--state-dir", type=Path, default=None,
                   help=f"swarm state: certificates, raft log, state.json (default {paths.SYSTEM_STATE_DIR} "
                        "as root, $XDG_STATE_HOME/swarmd otherwise)")
    p.add_argument("--control-socket", type=Path, default=None,
                   help=f"Unix socket of the control API, mode 0600 (default {paths.SYSTEM_CONTROL_SOCKET} "
                        "as root, $XDG_RUNTIME_DIR/swarmd.sock otherwise)")
    p.add_argument("--hostname", default=None, help="node name reported to the swarm (default: the host name)")
    p.add_argument("--log-level", choices=logs.LEVELS, default=None, help="log level (default info)")
    p.add_argument("--log-format", choices=("plain", "json"), default="plain", help="log line format")
    p.add_argument("--config", type=Path, default=None,
                   help="optional file of key=value lines; SIGHUP re-reads its log-level")
    p.add_argument("--executor", choices=("process", "none"), default="process",
                   help="what runs this node's tasks: programs as supervised processes (default), or none "
                        "(the node rejects every task assigned to it)")
    p.add_argument("--task-user", default=None, metavar="USER",
                   help="who runs tasks whose service names no --user (default: nobody when swarmd runs as "
                        "root, else swarmd's own user)")
    p.add_argument("--reset-state", action="store_true",
                   help="remove this node's swarm state from --state-dir and exit (refused while a swarmd "
                        "uses it); for a node that cannot start or leave: remove it from the swarm first")
    p.add_argument("--version", action="version", version=f"swarmd {__version__}")
    return p.parse_args(argv)


def run_reset_state(state_dir: Path) -> int:
    from swarmd.errors import SwarmError
    from swarmd.node.reset import reset_state

    try:
        removed = reset_state(state_dir.absolute())
    except (SwarmError, OSError) as e:
        print(f"swarmd: cannot reset the state dir: {e}", file=sys.stderr)
        return 1
    print(f"swarmd: removed {', '.join(removed)} from {state_dir}" if removed
          else f"swarmd: {state_dir} holds no swarm state")
    return 0


def read_config(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        from swarmd.manager.authz import AuthzInterceptor, local_identity
        from swarmd.node.runtime import NodeRuntime

        self.args = args
        self.state_dir: Path = (args.state_dir or paths.default_state_dir()).absolute()
        self.socket_path: Path = (args.control_socket or paths.default_control_socket()).absolute()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._control: Any = None

        self.runtime = NodeRuntime(self.state_dir, args.hostname or socket.gethostname(), self._register,
                                   executor=args.executor, task_user=args.task_user)
        self._local_interceptor = AuthzInterceptor(local_identity)

    def _register_control(self, server: Any) -> None:
        """The control socket's services. Not the dispatcher: nodes call it, never a local
        user, and its handlers are coroutines of the remote API's loop."""
        from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
        from swarmd.ca.servicer import CAServicer
        from swarmd.manager.controlapi.servicer import ControlServicer
        from swarmd.manager.issuer import ManagerIssuer
        from swarmd.manager.membership import RaftMembershipServicer

        pb_grpc.add_ControlServicer_to_server(ControlServicer(self.runtime), server)
        pb_grpc.add_CAServicer_to_server(CAServicer(ManagerIssuer(self.runtime)), server)
        pb_grpc.add_RaftMembershipServicer_to_server(RaftMembershipServicer(self.runtime), server)

    def _register(self, server: Any) -> None:
        """The remote API's services (the Raft transport adds its own)."""
        from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc

        self._register_control(server)
        pb_grpc.add_DispatcherServicer_to_server(self.runtime.dispatcher, server)

    def _lock_state_dir(self) -> None:
        """One daemon per state dir: a second one would corrupt the Raft log."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self._lock_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another swarmd is already using the state dir {self.state_dir}") from None
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket_path))
        except OSError:
            pass  # nothing serves there: a stale socket file is replaced
        else:
            raise RuntimeError(f"another swarmd is already serving {self.socket_path}")
        finally:
            probe.close()

    def _status(self) -> str:
        local = self.runtime.local
        if local is None:
            return f"swarm inactive; control socket {self.socket_path}"
        if self.runtime.locked:
            return f"swarm locked: run 'swarmctl unlock'; control socket {self.socket_path}"
        if self.runtime.expired:
            return f"swarm certificates expired: leave and join again; control socket {self.socket_path}"
        return f"swarm active as {local.role} {local.node_id}; control socket {self.socket_path}"

    def run(self) -> int:
        from swarmd.server import start_control_server

        systemd.notify("STATUS=starting")
        self._lock_state_dir()
        self.runtime.resume()
        self._control = start_control_server(self.socket_path, self._local_interceptor, self._register_control)
        status = self._status()
        log.info("swarmd %s ready: %s", __version__, status)
        systemd.notify(f"READY=1\nSTATUS={status}")
        while not self._stop.is_set():
            self._stop.wait(1.0)
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if self._status() != status:
                status = self._status()
                systemd.notify(f"STATUS={status}")
        systemd.notify("STOPPING=1")
        log.info("shutting down")
        self.runtime.begin_shutdown()  # an operation under way stops at its next step
        self._control.stop(1.0).wait(2.0)
        self.runtime.shutdown()
        self.socket_path.unlink(missing_ok=True)
        return 0

    def reload(self) -> None:
        systemd.notify("RELOADING=1")
        try:
            level = read_config(self.args.config).get("log-level") or self.args.log_level or "info"
            if level not in logs.LEVELS:
                raise ValueError(f"unknown log level {level!r}")
            logs.set_level(level)
            log.info("log level is now %s", level)
        except (OSError, ValueError) as e:
            log.error("reload failed: %s", e)
        systemd.notify("READY=1")

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self._stop.set()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.reset_state:
        os.umask(0o077)
        sys.exit(run_reset_state(args.state_dir or paths.default_state_dir()))
    try:
        # The same precedence as a SIGHUP reload: --config's log-level, then --log-level.
        level = read_config(args.config).get("log-level") or args.log_level or "info"
    except OSError as e:
        sys.exit(f"swarmd: cannot read --config: {e}")
    if level not in logs.LEVELS:
        sys.exit(f"swarmd: unknown log level {level!r}")
    if args.task_user is not None:
        from swarmd.agent.exec.api import ExecError
        from swarmd.agent.exec.user import resolve_user
        try:
            resolve_user(args.task_user)
        except ExecError as e:
            sys.exit(f"swarmd: invalid --task-user: {e}")
    logs.setup(level, args.log_format)
    coredump.forbid_core_dumps()  # before any key is read
    os.umask(0o077)
    try:
        daemon = Daemon(args)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, daemon.on_signal)
        code = daemon.run()
    except Exception as e:  # noqa: BLE001 - report start-up failures in one line, not a traceback
        log.debug("start-up failed", exc_info=True)
        log.error("swarmd cannot start: %s", e)
        systemd.notify(f"STATUS=failed: {e}")
        code = 1
    # Every write is already on disk; exit without waiting on stray non-daemon threads (a
    # wedged library thread must not keep a stopping daemon alive).
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
