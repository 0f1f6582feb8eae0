"""Several hosts as separate swarmd processes on distinct loopback addresses."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from tests.harness import SWARMCTL, Daemon, join, leader_of, node_rows, node_tls, wait_for

WORKER_ONLY = ("Error response from daemon: This node is not a swarm manager. Worker nodes can't be used to "
               "view or modify cluster state. Please run this command on a manager node or promote the current "
               "node to a manager.\n")
INVALID_TOKEN = ("Error response from daemon: rpc error: code = InvalidArgument desc = A valid join token is "
                 "necessary to join this cluster\n")

Factory = Callable[..., Daemon]


def test_worker_joins_and_leaves(daemons: Factory) -> None:
    m1 = daemons("m1")
    m1.init()
    w1 = daemons("w1")
    assert join(w1, m1) == "This node joined a swarm as a worker.\n"
    rows = wait_for(lambda: node_rows(m1).get("w1", [""])[0] == "Ready" and node_rows(m1), 10, what="w1 Ready")
    assert rows["w1"] == ["Ready", "Active", ""] and rows["m1"][2] == "Leader"

    info = w1.ok("info")
    assert "  Is Manager: false\n" in info and f"  Node Address: {w1.ip}\n" in info
    assert f"  Manager Addresses:\n   {m1.listen}\n" in info
    assert json.loads(w1.ok("info", "--format", "json"))["ControlAvailable"] is False
    for args in (["node", "ls"], ["join-token", "worker"], ["ca"], ["network", "ls"]):
        r = w1.ctl(*args)
        assert (r.returncode, r.stderr) == (1, WORKER_ONLY), args
    r = w1.ctl("init")
    assert r.returncode == 1 and "already part of a swarm" in r.stderr

    w1_id = w1.info().node_id
    r = m1.ctl("node", "rm", w1_id)
    assert (r.returncode, r.stderr) == (1, f"Error response from daemon: rpc error: code = FailedPrecondition desc = "
                                           f"node {w1_id} is not down and can't be removed\n")
    started = time.monotonic()
    assert w1.ok("leave") == "Node left the swarm.\n"
    assert time.monotonic() - started < 2.0
    assert w1.info().local_node_state == "inactive"
    assert node_rows(m1)["w1"][0] == "Down"  # at once on a graceful leave
    assert m1.ok("node", "rm", w1_id) == w1_id + "\n"
    assert "w1" not in node_rows(m1)


def test_join_failures_leave_the_node_as_it_was(daemons: Factory) -> None:
    m1 = daemons("m1")
    m1.init()
    w1 = daemons("w1")
    token = m1.ok("join-token", "-q", "worker").strip()

    def attempt(tok: str, addr: str = m1.listen) -> subprocess.CompletedProcess[str]:
        r = w1.ctl("join", "--token", tok, "--advertise-addr", w1.ip, "--listen-addr", w1.listen, addr)
        assert w1.info().local_node_state == "inactive"
        assert not w1.state_dir.exists() or list(w1.state_dir.iterdir()) == []
        return r

    for bad in ("foo", "SWMTKN-1-abc", token[:-1], token.replace("SWMTKN-1", "SWMTKN-2")):
        r = attempt(bad)
        assert (r.returncode, r.stderr) == (1, "Error response from daemon: invalid join token\n"), bad
    r = attempt(token[:-25] + "a" * 25)
    assert (r.returncode, r.stderr) == (1, INVALID_TOKEN)
    r = attempt(token.upper())
    assert (r.returncode, r.stderr) == (1, INVALID_TOKEN)
    r = attempt("")
    assert (r.returncode, r.stderr) == (1, INVALID_TOKEN)
    digest = token.split("-")[2]
    edited = token.replace(digest, digest[:-1] + ("0" if digest[-1] != "0" else "1"))
    r = attempt(edited)
    expected = format(int(edited.split("-")[2], 36), "x").rjust(64, "0")
    assert (r.returncode, r.stderr) == (1, f"Error response from daemon: remote CA does not match fingerprint. "
                                           f"Expected: {expected}\n")
    # Nobody listens there: a clear error, quickly.
    with socket.socket() as s:
        s.bind((w1.ip, 0))
        closed = f"{w1.ip}:{s.getsockname()[1]}"
    started = time.monotonic()
    r = attempt(token, closed)
    assert r.returncode == 1 and "connection refused" in r.stderr
    assert time.monotonic() - started < 20
    # A rotated token is refused from the next handshake on.
    m1.ok("join-token", "--rotate", "worker")
    r = attempt(token)
    assert (r.returncode, r.stderr) == (1, INVALID_TOKEN)
    assert join(w1, m1) == "This node joined a swarm as a worker.\n"
    r = w1.ctl("join", "--token", token, m1.listen)
    assert r.returncode == 1 and "already part of a swarm" in r.stderr


def test_token_digest_matches_the_root_on_disk(daemons: Factory) -> None:
    m1 = daemons("m1")
    m1.init()
    w1 = daemons("w1")
    join(w1, m1)
    root = (w1.state_dir / "certificates" / "swarm-root-ca.crt").read_bytes()
    assert root == (m1.state_dir / "certificates" / "swarm-root-ca.crt").read_bytes()
    token = m1.ok("join-token", "-q", "worker").strip()
    assert int(token.split("-")[2], 36) == int(hashlib.sha256(root).hexdigest(), 16)


@pytest.fixture
def cluster(daemons: Factory) -> dict[str, Daemon]:
    """Three managers and two workers."""
    nodes = {name: daemons(name) for name in ("m1", "m2", "m3", "w1", "w2")}
    nodes["m1"].init()
    for name in ("m2", "m3"):
        assert join(nodes[name], nodes["m1"], "manager") == "This node joined a swarm as a manager.\n"
    for name in ("w1", "w2"):
        assert join(nodes[name], nodes["m2"]) == "This node joined a swarm as a worker.\n"
    wait_for(lambda: all(r[0] == "Ready" for r in node_rows(nodes["m1"]).values()), 15, what="all nodes Ready")
    return nodes


def test_three_managers_two_workers(cluster: dict[str, Daemon]) -> None:
    m1, m2, m3, w1 = cluster["m1"], cluster["m2"], cluster["m3"], cluster["w1"]
    for m in (m1, m2, m3):
        rows = node_rows(m)
        assert sorted(rows) == ["m1", "m2", "m3", "w1", "w2"]
        assert [rows[n][2] for n in ("m1", "m2", "m3", "w1", "w2")] == ["Leader", "Reachable", "Reachable", "", ""]
        info = m.ok("info")
        assert "  Is Manager: true\n  ClusterID:" in info and "  Managers: 3\n  Nodes: 5\n" in info
        assert info.count(":2377\n") == 3
    for w in (w1, cluster["w2"]):
        assert sorted(json.loads(w.ok("info", "--format", "json"))["RemoteManagers"],
                      key=lambda m: m["Addr"]) == sorted(
            ({"NodeID": m.info().node_id, "Addr": m.listen} for m in (m1, m2, m3)), key=lambda m: m["Addr"])
    # Writes on any manager land everywhere; the join command names the manager asked.
    m3.ok("network", "create", "from-m3")
    for m in (m1, m2, m3):
        assert "from-m3" in m.ok("network", "ls")
        assert f" {m.listen}\n\n" in m.ok("join-token", "worker")
    assert m2.ok("node", "inspect", "self").count(m2.info().node_id) >= 1

    # Rotation on one manager is refused by every manager from the next handshake on.
    old = m2.ok("join-token", "-q", "worker").strip()
    m2.ok("join-token", "--rotate", "worker")
    for m in (m1, m2, m3):
        probe = Daemon(m.root.parent, f"probe-{m.hostname}")
        probe.start()
        try:
            r = probe.ctl("join", "--token", old, "--advertise-addr", probe.ip, "--listen-addr", probe.listen,
                          m.listen)
            assert (r.returncode, r.stderr) == (1, INVALID_TOKEN), m.hostname
        finally:
            probe.stop()


def test_manager_rules(cluster: dict[str, Daemon]) -> None:
    m1, m2, w1 = cluster["m1"], cluster["m2"], cluster["w1"]
    w1_id, m2_id = w1.info().node_id, m2.info().node_id
    r = m1.ctl("node", "rm", m2_id)
    assert (r.returncode, r.stderr) == (1, f"Error response from daemon: rpc error: code = FailedPrecondition desc = "
                                           f"node {m2_id} is a cluster manager and is a member of the raft cluster. "
                                           "It must be demoted to worker before removal\n")
    r = m1.ctl("node", "rm", "--force", m2_id)
    assert r.returncode == 1 and "must be demoted to worker before removal" in r.stderr
    r = m1.ctl("leave")
    assert r.returncode == 1 and r.stderr == (
        "Error response from daemon: You are attempting to leave the swarm on a node that is participating as a "
        "manager. The only way to restore a swarm that has lost consensus is to reinitialize it with "
        "`--force-new-cluster`. Use `--force` to suppress this message.\n")
    assert m1.ok("node", "promote", "w1") == "Node w1 promoted to a manager in the swarm.\n"
    wait_for(lambda: node_rows(m1)["w1"][2] == "Reachable", 15, what="w1 to join raft")
    wait_for(lambda: w1.info().control_available, 10, what="w1 to serve as a manager")
    assert m1.ok("node", "promote", "w1") == f"Node {w1_id} is already a manager.\n"
    assert m1.ok("node", "demote", w1_id) == f"Manager {w1_id} demoted in the swarm.\n"
    wait_for(lambda: node_rows(m1)["w1"][2] == "" and not w1.info().control_available, 15, what="w1 demoted")
    assert m1.ok("node", "demote", "w1") == f"Node {w1_id} is already a worker.\n"
    r = m1.ctl("node", "promote", "nosuchnode")
    assert (r.returncode, r.stderr) == (1, "Error response from daemon: node nosuchnode not found\n")
    assert node_rows(w1 if w1.info().control_available else m1)["w1"][0] == "Ready"


def test_demoting_the_last_manager_is_refused(daemons: Factory) -> None:
    m1 = daemons("m1")
    m1.init()
    r = m1.ctl("node", "demote", "self")
    assert (r.returncode, r.stderr) == (1, "Error response from daemon: rpc error: code = FailedPrecondition desc = "
                                           "attempting to demote the last manager of the swarm\n")


def test_leader_failover_and_rejoin(cluster: dict[str, Daemon]) -> None:
    managers = [cluster[n] for n in ("m1", "m2", "m3")]
    leader = leader_of(managers)
    survivors = [m for m in managers if m is not leader]
    leader.kill9()
    killed = time.monotonic()

    def write() -> bool:
        r = survivors[0].ctl("network", "create", f"after-{int(time.monotonic() * 1000)}")
        return r.returncode == 0
    wait_for(write, 10, step=0.05, what="a write after the leader died")
    assert time.monotonic() - killed < 5.0
    new_leader = leader_of(survivors)
    assert new_leader is not leader
    wait_for(lambda: node_rows(new_leader)[leader.hostname][2] == "Unreachable", 10, what="old leader Unreachable")
    leader.start()
    wait_for(lambda: node_rows(new_leader)[leader.hostname][2] == "Reachable", 15, what="old leader back")
    wait_for(lambda: "after-" in leader.ok("network", "ls"), 10, what="the old leader to catch up")


def test_everything_survives_restarts(cluster: dict[str, Daemon]) -> None:
    managers = [cluster[n] for n in ("m1", "m2", "m3")]
    managers[1].ok("network", "create", "acknowledged")
    for m in managers:
        m.kill9()
    for w in (cluster["w1"], cluster["w2"]):
        w.restart()
    for m in managers:
        m.start()
    leader = leader_of(managers)
    assert "acknowledged" in leader.ok("network", "ls")
    wait_for(lambda: all(r[0] == "Ready" for r in node_rows(leader).values()), 20, what="all Ready again")
    assert cluster["w1"].info().local_node_state == "active"


def test_certificates_decide_who_may_call_what(cluster: dict[str, Daemon]) -> None:
    m1, w1 = cluster["m1"], cluster["w1"]
    certs = w1.state_dir / "certificates"
    r = subprocess.run([SWARMCTL, "-H", f"tcp://{m1.listen}", "--tlscacert", str(certs / "swarm-root-ca.crt"),
                        "--tlscert", str(certs / "swarm-node.crt"), "--tlskey", str(certs / "swarm-node.key"),
                        "node", "ls"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Permission denied" in r.stderr
    root, cert, key = node_tls(w1.state_dir)
    creds = grpc.ssl_channel_credentials(root, key, cert)
    with grpc.secure_channel(m1.listen, creds, options=[("grpc.ssl_target_name_override", "swarm-manager")]) as ch:
        for call, req in ((pb_grpc.ControlStub(ch).ListNodes, pb.ListNodesRequest()),
                          (pb_grpc.ControlStub(ch).GetJoinToken, pb.GetJoinTokenRequest(role="manager")),
                          (pb_grpc.RaftMembershipStub(ch).Join, pb.RaftJoinRequest(addr="127.0.0.1:1"))):
            with pytest.raises(grpc.RpcError) as exc:
                call(req, timeout=5)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A removed node's certificate is refused although it is still valid.
    w1_id = w1.info().node_id
    w1.stop()
    m1.ok("node", "rm", "--force", w1_id)
    with grpc.secure_channel(m1.listen, creds, options=[("grpc.ssl_target_name_override", "swarm-manager")]) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.DispatcherStub(ch).Heartbeat(pb.HeartbeatRequest(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_missed_heartbeats_mark_a_node_down_and_reconnects_ready(daemons: Factory) -> None:
    m1 = daemons("m1")
    m1.init("--dispatcher-heartbeat", "1s")
    w1 = daemons("w1")
    join(w1, m1)
    wait_for(lambda: node_rows(m1).get("w1", [""])[0] == "Ready", 10, what="w1 Ready")
    w1.kill9()
    killed = time.monotonic()
    wait_for(lambda: node_rows(m1)["w1"][0] == "Down", 10, step=0.1, what="w1 Down")
    assert 2.0 < time.monotonic() - killed < 6.0  # three missed 1 s periods, not at once
    pretty = m1.ok("node", "inspect", "--pretty", "w1")
    assert " State:\t\t\tDown\n Message:              \tHeartbeat failure\n" in pretty
    w1.start()
    wait_for(lambda: node_rows(m1)["w1"][0] == "Ready", 10, what="w1 Ready again")


def test_manager_join_needs_a_reachable_advertise_address(daemons: Factory) -> None:
    m1 = daemons("m1")
    m1.init()
    m2 = daemons("m2")
    token = m1.ok("join-token", "-q", "manager").strip()
    nowhere = m2.ip.rsplit(".", 1)[0] + ".250"  # a loopback address nothing listens on
    r = m2.ctl("join", "--token", token, "--advertise-addr", nowhere, "--listen-addr", m2.listen, m1.listen)
    assert r.returncode == 1
    assert r.stderr == ("Error response from daemon: could not connect to prospective new cluster member using its "
                        "advertised address: rpc error: code = DeadlineExceeded desc = context deadline exceeded\n")
    assert m2.info().local_node_state == "inactive"
    assert sorted(node_rows(m1)) == ["m1"]
    assert join(m2, m1, "manager") == "This node joined a swarm as a manager.\n"


def test_force_new_cluster_recovers_from_lost_quorum(cluster: dict[str, Daemon]) -> None:
    m1, m2, m3 = cluster["m1"], cluster["m2"], cluster["m3"]
    m1.ok("network", "create", "before-the-loss")
    m2.kill9()
    m3.kill9()
    r = wait_for(lambda: (lambda r: r.returncode == 1 and r)(m1.ctl("network", "create", "no-quorum")), 15,
                 step=0.2, what="writes to fail without quorum")
    assert r.stderr.endswith("Make sure more than half of the managers are online.\n")
    out = m1.ok("init", "--force-new-cluster")
    assert out.startswith(f"Swarm initialized: current node ({m1.info().node_id}) is now a manager.")
    m1.ok("network", "create", "after-recovery")
    nets = m1.ok("network", "ls")
    assert "before-the-loss" in nets and "after-recovery" in nets and "no-quorum" not in nets
    rows = node_rows(m1)
    assert rows["m1"][2] == "Leader" and rows["m2"] == ["Down", "Active", ""] and rows["m3"][2] == ""
    assert "  Managers: 1\n" in m1.ok("info")


def test_join_token_kept_out_of_argv(daemons: Factory, tmp_path: Path) -> None:
    m1 = daemons("m1")
    m1.init()
    w1, w2 = daemons("w1"), daemons("w2")
    token = m1.ok("join-token", "-q", "worker").strip()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    assert w1.ok("join", "--token-file", str(token_file), "--advertise-addr", w1.ip, "--listen-addr", w1.listen,
                 m1.listen) == "This node joined a swarm as a worker.\n"
    w2.env["SWARM_JOIN_TOKEN"] = token
    assert w2.ok("join", "--advertise-addr", w2.ip, "--listen-addr", w2.listen,
                 m1.listen) == "This node joined a swarm as a worker.\n"
    r = w2.ctl("join", "--token", token, "--token-file", str(token_file), m1.listen)
    assert (r.returncode, r.stderr) == (1, "--token and --token-file cannot be used together\n")
    r = w2.ctl("join", "--token-file", str(tmp_path / "missing"), m1.listen)
    assert r.returncode == 1 and r.stderr.startswith("could not read --token-file")
