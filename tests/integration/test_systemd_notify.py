"""The systemd notify protocol as a real ``swarmd`` speaks it, received on a real AF_UNIX datagram
socket the test binds (what systemd does for a ``Type=notify`` unit): READY=1 with a STATUS once
the control socket serves, RELOADING=1 then READY=1 on SIGHUP (with the log level re-read from
``--config``), STOPPING=1 and exit 0 on SIGTERM. Every wait is bounded; every daemon started here
is killed by PID in a finalizer, also when the test fails."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swarmd import systemd
from tests.harness import private_loopback

BIN = Path(sys.executable).parent
SWARMD = BIN / "swarmd"
SWARMCTL = BIN / "swarmctl"
NOTIFY_TIMEOUT = 10.0
EXIT_TIMEOUT = 10.0
CTL_TIMEOUT = 30.0


def parse(datagram: bytes) -> dict[str, str]:
    """One notify datagram: newline-separated KEY=VALUE assignments."""
    fields: dict[str, str] = {}
    for line in datagram.decode().splitlines():
        key, sep, value = line.partition("=")
        assert sep, f"malformed notify line {line!r} in {datagram!r}"
        fields[key] = value
    return fields


class NotifySocket:
    """A bound AF_UNIX SOCK_DGRAM socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(address)
        self.received: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("\0"):
            Path(self.address).unlink(missing_ok=True)

    def recv(self, timeout: float) -> dict[str, str] | None:
        readable, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
        if not readable:
            return None
        msg = parse(self.sock.recv(4096))
        self.received.append(msg)
        return msg

    def wait_for(self, key: str, value: str | None = None, timeout: float = NOTIFY_TIMEOUT,
                 proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> dict[str, str]:
        """The next message carrying ``key`` (=``value``), skipping others (STATUS updates)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value or '*'} within {timeout}s; received {self.received}"
                                     + (f"\nlog:\n{log.read_text(errors='replace')}" if log else ""))
            msg = self.recv(min(left, 0.2))
            if msg is not None and key in msg and (value is None or msg[key] == value):
                return msg
            if msg is None and proc is not None and proc.poll() is not None:
                # Drain what the process sent before exiting, then give up.
                while (msg := self.recv(0)) is not None:
                    if key in msg and (value is None or msg[key] == value):
                        return msg
                raise AssertionError(f"swarmd exited with {proc.returncode} before {key}={value or '*'}; "
                                     f"received {self.received}"
                                     + (f"\nlog:\n{log.read_text(errors='replace')}" if log else ""))


class NotifiedDaemon:
    """A real swarmd whose NOTIFY_SOCKET is the test's datagram socket."""

    def __init__(self, root: Path, *extra: str, config: Path | None = None) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.socket = root / "swarmd.sock"
        self.log = root / "swarmd.log"
        self.notify = NotifySocket(str(root / "notify.sock"))
        self.ip = private_loopback()
        args = [str(SWARMD), "--state-dir", str(self.state_dir), "--control-socket", str(self.socket),
                "--hostname", "notify-test", "--log-format", "plain", *extra]
        if config is not None:
            args += ["--config", str(config)]
        env = {**os.environ, "NOTIFY_SOCKET": str(root / "notify.sock")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def wait_for(self, key: str, value: str | None = None, timeout: float = NOTIFY_TIMEOUT) -> dict[str, str]:
        return self.notify.wait_for(key, value, timeout, proc=self.proc, log=self.log)

    def signal(self, signum: int) -> None:
        assert self.proc.poll() is None, f"swarmd already exited with {self.proc.returncode}"
        os.kill(self.proc.pid, signum)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SWARMCTL), "-H", f"unix://{self.socket}", *args], capture_output=True,
                              text=True, input="", timeout=CTL_TIMEOUT, check=False)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """Finalizer: SIGKILL by PID if still running; always reap and close the socket."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(EXIT_TIMEOUT)
        finally:
            self.notify.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., NotifiedDaemon]]:
    started: list[NotifiedDaemon] = []

    def start(*extra: str, config: Path | None = None, name: str = "d") -> NotifiedDaemon:
        root = tmp_path / name
        root.mkdir()
        d = NotifiedDaemon(root, *extra, config=config)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


def wait_exit(d: NotifiedDaemon, timeout: float = EXIT_TIMEOUT) -> int:
    try:
        return d.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"swarmd still running {timeout}s after SIGTERM:\n{d.log_text()}") from None


def test_ready_reload_and_stop(start_daemon: Callable[..., NotifiedDaemon], tmp_path: Path) -> None:
    config = tmp_path / "swarmd.conf"
    config.write_text("# swarmd settings\nlog-level=info\n")
    d = start_daemon(config=config)

    ready = d.wait_for("READY", "1")
    assert ready.get("STATUS", "").startswith("swarm inactive"), d.notify.received
    assert str(d.socket) in ready["STATUS"]
    # Nothing may claim readiness before the control socket serves: it answers at once.
    r = d.ctl("info")
    assert r.returncode == 0, r.stderr
    assert "Swarm: inactive" in r.stdout

    # systemctl reload: SIGHUP re-reads log-level= from --config.
    config.write_text("log-level=debug\n")
    d.signal(signal.SIGHUP)
    d.wait_for("RELOADING", "1")
    d.wait_for("READY", "1")
    assert "log level is now debug" in d.log_text()
    assert "reload failed" not in d.log_text()
    # A bad value is reported and the daemon keeps serving at the old level.
    config.write_text("log-level=verbose\n")
    d.signal(signal.SIGHUP)
    d.wait_for("RELOADING", "1")
    d.wait_for("READY", "1")
    assert "reload failed" in d.log_text() and "verbose" in d.log_text()
    assert d.ctl("info").returncode == 0

    # systemctl stop: SIGTERM → STOPPING=1, exit 0, control socket removed.
    d.signal(signal.SIGTERM)
    d.wait_for("STOPPING", "1")
    assert wait_exit(d) == 0, d.log_text()
    assert not d.socket.exists()
    assert "shutting down" in d.log_text()


def json_records(d: NotifiedDaemon) -> list[dict[str, str]]:
    return [json.loads(line) for line in d.log_text().splitlines() if line.startswith("{")]


def test_sighup_debug_level_takes_effect(start_daemon: Callable[..., NotifiedDaemon], tmp_path: Path) -> None:
    """After the reload the new level really filters records, not just the message says so."""
    config = tmp_path / "swarmd.conf"
    config.write_text("log-level=warning\n")
    d = start_daemon("--log-format", "json", config=config)
    d.wait_for("READY", "1")
    # At warning, the INFO "ready" line is filtered out.
    assert not [r for r in json_records(d) if r["level"] == "info"], d.log_text()
    config.write_text("log-level=debug\n")
    d.signal(signal.SIGHUP)
    d.wait_for("RELOADING", "1")
    d.wait_for("READY", "1")
    assert {"level": "info", "logger": "swarmd", "msg": "log level is now debug"}.items() <= \
        json_records(d)[-1].items(), d.log_text()
    d.signal(signal.SIGTERM)
    d.wait_for("STOPPING", "1")
    assert wait_exit(d) == 0
    # INFO records pass now: the shutdown line is logged (as JSON, on stderr).
    assert any(r["level"] == "info" and r["msg"] == "shutting down" for r in json_records(d)), d.log_text()


def test_control_socket_is_mode_0600(start_daemon: Callable[..., NotifiedDaemon]) -> None:
    d = start_daemon()
    d.wait_for("READY", "1")
    st = d.socket.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert stat.S_IMODE(d.state_dir.stat().st_mode) == 0o700


def test_active_swarm_status_and_clean_stop(start_daemon: Callable[..., NotifiedDaemon]) -> None:
    """A manager stops with exit 0 and comes back reporting an active swarm in its STATUS."""
    d = start_daemon()
    d.wait_for("READY", "1")
    r = d.ctl("init", "--advertise-addr", d.ip, "--listen-addr", f"{d.ip}:2377")
    assert r.returncode == 0, r.stderr
    d.signal(signal.SIGTERM)
    d.wait_for("STOPPING", "1")
    assert wait_exit(d) == 0, d.log_text()
    assert not d.socket.exists()
    d.notify.close()

    again = NotifiedDaemon(d.root)  # same state dir and socket, fresh notify socket
    try:
        ready = again.wait_for("READY", "1")
        assert ready.get("STATUS", "").startswith("swarm active"), again.notify.received
        r = again.ctl("info")
        assert r.returncode == 0 and "Swarm: active" in r.stdout, r.stdout + r.stderr
        again.signal(signal.SIGTERM)
        again.wait_for("STOPPING", "1")
        assert wait_exit(again) == 0, again.log_text()
    finally:
        again.kill()


def test_start_failure_reports_status_not_ready(start_daemon: Callable[..., NotifiedDaemon], tmp_path: Path) -> None:
    """A daemon that cannot start says why in STATUS=, never sends READY=1, and exits 1
    (systemd then marks the unit failed and Restart=on-failure applies)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    # The later --control-socket wins: its parent is a file, so the socket cannot be created.
    d = start_daemon("--control-socket", str(blocker / "swarmd.sock"))
    try:
        code = d.proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"swarmd did not give up:\n{d.log_text()}") from None
    assert code == 1
    while d.notify.recv(0.2) is not None:
        pass
    assert not any("READY" in m for m in d.notify.received), d.notify.received
    statuses = [m["STATUS"] for m in d.notify.received if "STATUS" in m]
    assert statuses and statuses[-1].startswith("failed: "), d.notify.received
    assert "swarmd cannot start:" in d.log_text()


# -- swarmd.systemd.notify on its own ------------------------------------------------------------

def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"swarmd-test-{os.getpid()}-{uuid.uuid4().hex}"
    receiver = NotifySocket("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1\nSTATUS=abstract ok") is True
        assert receiver.recv(NOTIFY_TIMEOUT) == {"READY": "1", "STATUS": "abstract ok"}
    finally:
        receiver.close()


def test_notify_path_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    receiver = NotifySocket(str(path))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("STOPPING=1") is True
        assert receiver.recv(NOTIFY_TIMEOUT) == {"STOPPING": "1"}
    finally:
        receiver.close()


def test_notify_is_a_noop_without_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    # A socket that went away is not an error for the daemon either.
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", f"@swarmd-test-absent-{uuid.uuid4().hex}")
    assert systemd.notify("READY=1") is False
