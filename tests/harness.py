"""Real swarmd processes for tests: private state dir, socket and loopback address each, every
process stopped by PID, every wait bounded."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc

BIN = Path(sys.executable).parent
SWARMD = str(BIN / "swarmd")
SWARMCTL = str(BIN / "swarmctl")

_counter = itertools.count(2)


def private_loopback() -> str:
    """A loopback address no other test (or xdist worker) of this run uses."""
    n = next(_counter)
    return f"127.{100 + os.getpid() % 150}.{n // 250}.{n % 250 + 2}"


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM a process the test started, SIGKILL it if it does not end within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for(predicate: Callable[[], Any], timeout: float, step: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


class Daemon:
    def __init__(self, root: Path, name: str = "node", hostname: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.root = root / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.root / "state"
        self.socket = self.root / "swarmd.sock"
        self.log_path = self.root / "swarmd.log"
        self.hostname = hostname or name
        self.ip = private_loopback()
        self.listen = f"{self.ip}:2377"
        self.env = {**os.environ, **(extra_env or {})}
        self.env.pop("NOTIFY_SOCKET", None)
        self.proc: subprocess.Popen[bytes] | None = None

    # -- process ------------------------------------------------------------------------------
    def start(self, wait: bool = True, *args: str) -> Daemon:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [SWARMD, "--state-dir", str(self.state_dir), "--control-socket", str(self.socket),
             "--hostname", self.hostname, "--log-level", "debug", *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"swarmd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.info()
                return True
            except grpc.RpcError:
                return False
        wait_for(ready, timeout, what="swarmd to serve its control socket")

    def info(self) -> pb.InfoResponse:
        with grpc.insecure_channel(f"unix:{self.socket}") as ch:
            return pb_grpc.ControlStub(ch).Info(pb.InfoRequest(), timeout=2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise AssertionError(f"swarmd did not stop within {timeout}s after signal {sig}")

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> Daemon:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- CLI ----------------------------------------------------------------------------------
    def ctl(self, *args: str, input: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SWARMCTL, "-H", f"unix://{self.socket}", *args], capture_output=True,
                              text=True, input=input if input is not None else "", timeout=timeout,
                              env=self.env)

    def ok(self, *args: str, input: str | None = None) -> str:
        r = self.ctl(*args, input=input)
        assert r.returncode == 0, f"swarmctl {' '.join(args)} failed ({r.returncode}): {r.stderr}"
        return r.stdout

    def init(self, *args: str) -> str:
        return self.ok("init", "--advertise-addr", self.ip, "--listen-addr", self.listen, *args)


def node_tls(state_dir: Path, kek: bytes | None = None) -> tuple[bytes, bytes, bytes]:
    """(root, certificate, clear key PEM) of a node: its key file carries headers and may be sealed."""
    from swarmd.ca import keyfile

    certs = state_dir / "certificates"
    key = keyfile.decode((certs / "swarm-node.key").read_bytes(), kek).key_pem
    return (certs / "swarm-root-ca.crt").read_bytes(), (certs / "swarm-node.crt").read_bytes(), key


def join(node: Daemon, manager: Daemon, role: str = "worker", *extra: str) -> str:
    token = manager.ok("join-token", "-q", role).strip()
    return node.ok("join", "--token", token, "--advertise-addr", node.ip, "--listen-addr", node.listen,
                   *extra, manager.listen)


def node_rows(d: Daemon) -> dict[str, list[str]]:
    """`node ls` as {hostname: [status, availability, manager status]} (hostnames are unique in tests)."""
    import json

    rows = {}
    for line in d.ok("node", "ls", "--format", "json").splitlines():
        row = json.loads(line)
        rows[row["Hostname"]] = [row["Status"], row["Availability"], row["ManagerStatus"]]
    return rows


def leader_of(managers: list[Daemon]) -> Daemon:
    def find() -> Daemon | None:
        for d in managers:
            try:
                rows = node_rows(d)
            except AssertionError:
                continue
            if rows.get(d.hostname, ["", "", ""])[2] == "Leader":
                return d
        return None
    leader: Daemon = wait_for(find, 15, step=0.1, what="a leader")
    return leader
