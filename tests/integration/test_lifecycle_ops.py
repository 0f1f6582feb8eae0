"""Lifecycle operations against real daemons: a shutdown does not wait for a join stuck on the
network, a join whose session never opens says so, and a role change that fails is retried."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from swarmd.ca import tokens
from tests.harness import SWARMCTL, Daemon, join, node_rows, private_loopback, wait_for

Factory = Callable[..., Daemon]
JOIN_TIMEOUT = ('Error response from daemon: Timeout was reached before node joined. The attempt to join the swarm '
                'will continue in the background. Use the "swarmctl info" command to see the current swarm status '
                'of your node.\n')


class SilentListener:
    """Accepts TCP connections and never says a word: a manager that hangs mid-handshake."""

    def __init__(self) -> None:
        self.addr = (private_loopback(), 2377)
        self.sock = socket.create_server(self.addr)
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


def test_sigterm_during_a_join_stuck_on_the_network_stops_the_daemon(daemon: Daemon, silent: SilentListener) -> None:
    token = tokens.generate_join_token(b"some root")
    joining = subprocess.Popen([SWARMCTL, "-H", f"unix://{daemon.socket}", "join", "--token", token,
                                "--listen-addr", daemon.listen, f"{silent.addr[0]}:2377"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The join's TLS connection, which never gets an answer.
        wait_for(lambda: len(silent.accepted) >= 1, 15, what="the join to reach the silent manager")
        assert daemon.stop(signal.SIGTERM, timeout=5.0) == 0
    finally:
        joining.kill()
        joining.wait(5)
    daemon.start()
    assert daemon.info().local_node_state == "inactive"


def test_a_join_whose_session_never_opens_says_so(daemons: Factory) -> None:
    m, w = daemons("m"), daemons("w")
    # The manager advertises an address where nothing answers: a joiner gets its certificate
    # through the listen address, but its session (to the advertised address) never opens.
    m.ok("init", "--advertise-addr", f"{private_loopback()}:2377", "--listen-addr", m.listen)
    token = m.ok("join-token", "-q", "worker").strip()
    r = w.ctl("join", "--token", token, "--listen-addr", w.listen, m.listen)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", JOIN_TIMEOUT)
    assert w.info().local_node_state == "active"  # joined; the session keeps trying
    assert "session with the leader open" not in w.log()


def local_role(d: Daemon) -> str:
    return str(json.loads((d.state_dir / "state.json").read_text())["role"])


def test_a_failed_promotion_is_retried_until_it_succeeds(daemons: Factory) -> None:
    m, w = daemons("m"), daemons("w")
    m.init()
    join(w, m)
    # Something else holds the address the promoted node must listen on.
    blocker = socket.create_server((w.ip, 2377))
    try:
        m.ok("node", "promote", "w")
        wait_for(lambda: "could not become a manager" in w.log(), 20, what="a failed promotion")
        assert local_role(w) == "worker"
    finally:
        blocker.close()

    def promoted() -> bool:
        # Two managers, the new one still starting: the leader may briefly have no majority.
        try:
            rows = node_rows(m)
        except AssertionError as e:
            assert "The swarm does not have a leader" in str(e)
            return False
        # The leader sees it reachable once it joined Raft; the node records the role right after.
        return rows["w"][2] == "Reachable" and local_role(w) == "manager"
    wait_for(promoted, 60, step=0.2, what="the retried promotion")
