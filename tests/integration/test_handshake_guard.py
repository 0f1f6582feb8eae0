"""Failed TLS handshakes on the remote API are rate-limited per source address, and a flood of
them does not stop a manager from serving (real daemons, real TLS, clients on their own loopback
source addresses)."""

from __future__ import annotations

import json
import re
import selectors
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import join as join_ca
from swarmd.ca import tokens
from swarmd.node.joiner import request_certificate
from swarmd.manager.guard import Limits
from tests.harness import SWARMCTL, Daemon, join, node_rows, node_tls, private_loopback, wait_for

Factory = Callable[..., Daemon]
HANDSHAKE, REFUSED = "handshake", "refused"
WARNING = re.compile(r"refusing connections from (\S+) for (\d+)s after (\d+) failed TLS handshakes")


def wrong_token(token: str) -> str:
    """The same cluster digest with another (well-formed) secret."""
    secret = tokens.parse_join_token(token).secret
    other = "".join("a" if c != "a" else "b" for c in secret)
    return token[:-len(secret)] + other


class WrongTokenClient:
    """A joiner's token-bound TLS handshake, from a chosen source address.

    It trusts only its (wrong) join CA, as the joiner does: a handshake that runs ends with the
    manager's certificate failing verification; a refused connection ends before any of it."""

    def __init__(self, token: str, tmp: Path) -> None:
        ca = join_ca.join_ca(tokens.parse_join_token(token).secret)
        key, cert = ca.client_credentials()
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "ca.pem").write_bytes(ca.cert_pem)
        (tmp / "cert.pem").write_bytes(cert)
        (tmp / "key.pem").write_bytes(key)
        self.sni = ca.sni
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.load_verify_locations(tmp / "ca.pem")
        self.context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")

    def attempt(self, source: str, manager: Daemon) -> str:
        """HANDSHAKE: the handshake ran (and failed); REFUSED: the manager did not answer the
        connection (its SYN is dropped while the source is refused) or cut it before any TLS."""
        with socket.socket() as sock:
            sock.bind((source, 0))
            sock.settimeout(0.5)
            try:
                sock.connect((manager.ip, 2377))
            except TimeoutError:
                return REFUSED
            sock.settimeout(5)
            try:
                with self.context.wrap_socket(sock, server_hostname=self.sni):
                    raise AssertionError("a wrong join token completed a handshake")
            except ssl.SSLCertVerificationError:
                return HANDSHAKE
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError):
                return REFUSED


def manager_stub(m: Daemon) -> tuple[grpc.Channel, pb_grpc.ControlStub]:
    """The control API over the remote port with the manager's own certificate (as `swarmctl -H`)."""
    root, cert, key = node_tls(m.state_dir)
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    channel = grpc.secure_channel(m.listen, creds, options=[("grpc.ssl_target_name_override", "swarm-manager")])
    return channel, pb_grpc.ControlStub(channel)


def remote_ctl(m: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    certs = m.state_dir / "certificates"
    return subprocess.run([SWARMCTL, "-H", f"tcp://{m.listen}", "--tlscacert", str(certs / "swarm-root-ca.crt"),
                           "--tlscert", str(certs / "swarm-node.crt"), "--tlskey", str(certs / "swarm-node.key"),
                           *args], check=False, capture_output=True, text=True, timeout=30)


def warnings(d: Daemon) -> list[tuple[str, int, int]]:
    return [(ip, int(secs), int(n)) for ip, secs, n in WARNING.findall(d.log())]


def assert_no_secrets(tokens_: list[str], *daemons: Daemon) -> None:
    for token in tokens_:
        secret = tokens.parse_join_token(token).secret
        for d in daemons:
            text = d.log()
            assert token not in text and secret not in text, f"a join token secret is in {d.hostname}'s log"


def test_a_source_with_a_wrong_token_is_refused_and_others_still_join(daemons: Factory, tmp_path: Path) -> None:
    m = daemons("m1")
    m.init()
    token = m.ok("join-token", "-q", "worker").strip()
    bad = wrong_token(token)
    client = WrongTokenClient(bad, tmp_path / "client")
    source = private_loopback()

    outcomes = [client.attempt(source, m) for _ in range(10)]
    assert outcomes == [HANDSHAKE] * 10  # below the threshold every handshake runs
    # Past it the source is refused: at once, but a client this fast may connect again a few
    # times before the manager has seen its last connection close (security.md).
    outcomes = []
    while REFUSED not in outcomes and len(outcomes) < 20:
        outcomes.append(client.attempt(source, m))
    assert outcomes[-1] == REFUSED, outcomes
    assert client.attempt(source, m) == REFUSED  # still within the 1 s backoff
    assert wait_for(lambda: warnings(m), 5, what="the backoff warning") == [(source, 1, 10)]

    # The source keeps trying while a worker and a manager join from another source address.
    stop = threading.Event()
    seen: list[str] = []

    def keep_trying() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            seen.append(client.attempt(source, m))
            stop.wait(0.05)

    flooder = threading.Thread(target=keep_trying, daemon=True)
    flooder.start()
    try:
        w1, m2 = daemons("w1"), daemons("m2")
        assert join(w1, m) == "This node joined a swarm as a worker.\n"
        assert join(m2, m, "manager") == "This node joined a swarm as a manager.\n"
        wait_for(lambda: node_rows(m).get("w1", [""])[0] == "Ready", 10, what="w1 Ready")
    finally:
        stop.set()
        flooder.join(10)
    assert not flooder.is_alive()
    backoffs = [w for w in warnings(m) if w[0] == source]
    # Each backoff lets a handshake through when it ends (two, if one closes while the next
    # connects), and that failure starts the next, twice as long.
    assert seen.count(REFUSED) > seen.count(HANDSHAKE)
    assert seen.count(HANDSHAKE) <= 2 * len(backoffs), (seen, backoffs)
    assert [secs for _, secs, _ in backoffs] == [min(2 ** i, 60) for i in range(len(backoffs))]
    assert {ip for ip, _, _ in warnings(m)} == {source}  # the joins were never penalised
    assert_no_secrets([token, bad, m.ok("join-token", "-q", "manager").strip()], m, w1, m2)


def test_a_correct_join_is_never_penalised(daemons: Factory) -> None:
    """A join makes no connection without a call (its TCP check runs only after a failure)."""
    m = daemons("m1")
    m.init()
    token = m.ok("join-token", "-q", "worker").strip()
    workers = [daemons(f"w{i}") for i in range(4)]
    for _ in range(3):
        for w in workers:
            assert join(w, m) == "This node joined a swarm as a worker.\n"
        for w in workers:
            assert w.ok("leave") == "Node left the swarm.\n"
    assert warnings(m) == []
    assert_no_secrets([token], m, *workers)


def test_a_flood_of_failing_handshakes_does_not_stop_the_manager(daemons: Factory, tmp_path: Path) -> None:
    m = daemons("m1")
    m.init("--dispatcher-heartbeat", "1s")
    token = m.ok("join-token", "-q", "worker").strip()
    w1 = daemons("w1")
    assert join(w1, m) == "This node joined a swarm as a worker.\n"
    wait_for(lambda: node_rows(m).get("w1", [""])[0] == "Ready", 10, what="w1 Ready")
    w1_id = w1.info().node_id
    bad = wrong_token(token)
    client = WrongTokenClient(bad, tmp_path / "client")
    sources = [private_loopback() for _ in range(4)]
    worker_log_before = w1.log().count("heartbeat failed")

    stop = threading.Event()
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def flood(source: str) -> None:
        deadline = time.monotonic() + 30
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                outcomes.append(client.attempt(source, m))
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=flood, args=(sources[i % len(sources)],), daemon=True) for i in range(8)]
    channel, stub = manager_stub(m)
    rounds = 0
    try:
        stub.Info(pb.InfoRequest(), timeout=5)  # connected before the flood starts
        for t in threads:
            t.start()
        flood_until = time.monotonic() + 5
        while time.monotonic() < flood_until:
            stub.Info(pb.InfoRequest(), timeout=2)
            nodes = {n.id: n for n in stub.ListNodes(pb.ListNodesRequest(), timeout=2).nodes}
            fresh, fresh_stub = manager_stub(m)  # a new connection through the guard, mid-flood
            with fresh:
                fresh_stub.ListNodes(pb.ListNodesRequest(), timeout=2)
            rounds += 1
            assert nodes[w1_id].state == "ready"  # its heartbeats keep arriving
            time.sleep(0.1)
        r = remote_ctl(m, "node", "ls", "-q")
        assert r.returncode == 0 and w1_id in r.stdout, r.stderr
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        channel.close()
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    assert rounds >= 1
    # Unlimited, each source would run hundreds of handshakes a second; refused, it gets its
    # threshold, the few that start before its last failure is seen, and one per backoff.
    assert outcomes.count(REFUSED) > 0
    assert 0 < outcomes.count(HANDSHAKE) < 60 * len(sources), outcomes.count(HANDSHAKE)

    assert m.proc is not None and m.proc.poll() is None
    assert m.info().local_node_state == "active"
    assert node_rows(m)["w1"][0] == "Ready"
    assert "missed 3 heartbeats" not in m.log()
    assert w1.log().count("heartbeat failed") == worker_log_before
    refused = warnings(m)
    assert {ip for ip, _, _ in refused} == set(sources)
    assert len(refused) <= 10  # one per backoff start, and no more than ten a minute
    assert_no_secrets([token, bad], m, w1)


def connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
        return True
    except OSError:
        return False


class IdleFlood:
    """Plain TCP connections that send nothing, from chosen source addresses; it tells how many
    the manager has closed."""

    def __init__(self, target: Daemon, sources: list[str], per_source: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.by_source: dict[str, int] = dict.fromkeys(sources, 0)
        for source in sources:
            for _ in range(per_source):
                sock = socket.socket()
                sock.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
                sock.bind((source, 0))
                sock.setblocking(False)
                sock.connect_ex((target.ip, 2377))
                self.selector.register(sock, selectors.EVENT_READ, source)
                self.by_source[source] += 1

    def still_open(self) -> int:
        """Reap what the manager closed; the connections left open (a connect the manager
        has not answered, its SYN dropped while the source is refused, is not one)."""
        for key, _ in self.selector.select(timeout=0):
            sock = key.fileobj
            try:
                if sock.recv(1):  # type: ignore[union-attr]
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            self.selector.unregister(sock)
            sock.close()  # type: ignore[union-attr]
            self.by_source[key.data] -= 1
        return sum(1 for key in self.selector.get_map().values() if connected(key.fileobj))  # type: ignore[arg-type]

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def cluster_is_healthy(m1: Daemon) -> bool:
    """The control API answers through the remote port, m1 leads, m2 is reachable, w1 is Ready."""
    r = remote_ctl(m1, "node", "ls", "--format", "json")
    if r.returncode != 0:
        return False
    rows = {row["Hostname"]: (row["Status"], row["ManagerStatus"])
            for row in map(json.loads, r.stdout.splitlines())}
    return rows == {"m1": ("Ready", "Leader"), "m2": ("Ready", "Reachable"), "w1": ("Ready", "")}


def test_idle_connection_floods_are_capped_and_the_cluster_keeps_working(daemons: Factory) -> None:
    """Thousands of connections that never start a handshake, from one source and from many:
    the leader keeps leading, the control API answers, the worker stays Ready, and the manager
    cuts the flood down to the caps on connections without an authenticated call."""
    limits = Limits()
    m1, m2, w1 = daemons("m1"), daemons("m2"), daemons("w1")
    m1.init("--dispatcher-heartbeat", "1s")
    assert join(m2, m1, "manager") == "This node joined a swarm as a manager.\n"
    assert join(w1, m1) == "This node joined a swarm as a worker.\n"
    wait_for(lambda: cluster_is_healthy(m1), 20, what="m1 leading, m2 reachable, w1 Ready")

    one, many = [private_loopback()], [private_loopback() for _ in range(100)]
    floods = [(one, 2000, f"closed \\d+ connections from {re.escape(one[0])}: over the limit of "
                          f"{limits.max_unproven_per_source} connections without an authenticated call"),
              (many, 20, f"closed \\d+ connections from \\d+ sources: over the limit of "
                         f"{limits.max_unproven} connections without an authenticated call")]
    for sources, per_source, cut in floods:
        flood = IdleFlood(m1, sources, per_source)
        try:
            wait_for(lambda: re.search(cut, m1.log()), 20, step=0.1, what="the flood cut to the limit")
            for _ in range(5):  # while the rest of the flood is held
                assert cluster_is_healthy(m1), m1.log()[-3000:]
            # What is left fails its handshake in time: the flooding source is refused.
            wait_for(lambda: flood.still_open() == 0, 20, step=0.1, what="the rest of the flood closed")
            assert cluster_is_healthy(m1)
        finally:
            flood.close()
    assert {ip for ip, _, _ in warnings(m1)} >= set(one)
    assert cluster_is_healthy(m1)
    assert "missed 3 heartbeats" not in m1.log()
    assert m1.proc is not None and m1.proc.poll() is None


def test_a_blocked_source_stays_blocked_after_5000_other_sources(daemons: Factory, tmp_path: Path) -> None:
    m = daemons("m1")
    m.init()
    client = WrongTokenClient(wrong_token(m.ok("join-token", "-q", "worker").strip()), tmp_path / "client")
    source = private_loopback()
    outcomes: list[str] = []
    while REFUSED not in outcomes and len(outcomes) < 30:
        outcomes.append(client.attempt(source, m))
    assert outcomes[-1] == REFUSED, outcomes
    assert warnings(m) == [(source, 1, 10)]
    # Each failure after a backoff doubles the next: 1 s, 2 s, 4 s, then 8 s.
    for _ in range(3):
        wait_for(lambda: client.attempt(source, m) == HANDSHAKE, 10, step=0.05, what="the backoff to end")
        wait_for(lambda: client.attempt(source, m) == REFUSED, 5, step=0, what="the next backoff")

    # Within its 8 s backoff, 5,000 other sources each fail once: a connection that closes
    # without a call, held while the next few hundred open (so any way of watching sees it).
    def connect(other: str) -> socket.socket:
        sock = socket.socket()
        sock.bind((other, 0))
        sock.settimeout(0.2)
        try:
            sock.connect((m.ip, 2377))
        except TimeoutError:
            pass  # past the global budget, one failure refuses a source: fine
        return sock

    others = [private_loopback() for _ in range(5000)]
    held: list[socket.socket] = []
    for batch in range(0, len(others), 500):
        opened = [connect(other) for other in others[batch:batch + 500]]
        for sock in held:
            sock.close()
        held = opened
        time.sleep(0.25)  # the flood's pace (2,000 sources a second), well inside the backoff
    for sock in held:
        sock.close()
    assert client.attempt(source, m) == REFUSED  # still refused: it was not forgotten


def test_200_joins_from_one_source_are_all_admitted(daemons: Factory) -> None:
    """A fleet behind one NAT address: no join counts as a failure, however many there are."""
    m = daemons("m1")
    m.init()
    token = m.ok("join-token", "-q", "worker").strip()
    results: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = list(range(200))

    def joiner() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            desc = pb.NodeDescription(hostname=f"nat-{i:03d}", os="linux", architecture="x86_64")
            try:
                result = request_certificate(m.listen, token, "active", "", desc)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                results.append(result.node_id)

    threads = [threading.Thread(target=joiner, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and len(set(results)) == 200, errors[:3]
    assert warnings(m) == []
    listed = m.ok("node", "ls", "-q").split()
    assert set(results) <= set(listed)
