"""init, join-token, ca and leave against a real daemon: Docker's texts byte for byte."""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

import pytest
from cryptography import x509

from swarmd.ca import tokens
from tests.harness import Daemon

NOT_MANAGER = ('Error response from daemon: This node is not a swarm manager. Use "swarmctl init" or '
               '"swarmctl join" to connect this node to swarm and try again.\n')
ALREADY = ('Error response from daemon: This node is already part of a swarm. Use "swarmctl leave" to '
           'leave this swarm and join another one.\n')
TOKEN_RE = r"SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}"


def test_init_prints_dockers_text(daemon: Daemon) -> None:
    out = daemon.init()
    m = re.fullmatch(
        r"Swarm initialized: current node \(([0-9a-z]{25})\) is now a manager\.\n\n"
        r"To add a worker to this swarm, run the following command:\n\n"
        rf"    swarmctl join --token ({TOKEN_RE}) (\S+)\n\n"
        r"To add a manager to this swarm, run 'swarmctl join-token manager' and follow the instructions\.\n",
        out)
    assert m, out
    node_id, token, addr = m.groups()
    assert addr == f"{daemon.ip}:2377"
    assert token == daemon.ok("join-token", "-q", "worker").strip()
    info = daemon.info()
    assert (info.local_node_state, info.node_id, info.control_available) == ("active", node_id, True)


def test_manager_only_commands_refused_when_inactive(daemon: Daemon) -> None:
    for args in (["node", "ls"], ["join-token", "worker"], ["ca"], ["network", "ls"], ["node", "inspect", "self"]):
        r = daemon.ctl(*args)
        assert (r.returncode, r.stderr) == (1, NOT_MANAGER), args
    r = daemon.ctl("leave")
    assert (r.returncode, r.stderr) == (1, "Error response from daemon: This node is not part of a swarm\n")
    r = daemon.ctl("unlock-key")
    assert (r.returncode, r.stderr) == (1, "could not fetch unlock key: " + NOT_MANAGER)


def test_init_refused_when_already_in_a_swarm(manager: Daemon) -> None:
    r = manager.ctl("init")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", ALREADY)


def test_join_token_outputs(manager: Daemon) -> None:
    worker = manager.ok("join-token", "-q", "worker").strip()
    manager_token = manager.ok("join-token", "--quiet", "manager").strip()
    assert re.fullmatch(TOKEN_RE, worker) and re.fullmatch(TOKEN_RE, manager_token)
    assert worker.split("-")[2] == manager_token.split("-")[2] and worker != manager_token
    addr = f"{manager.ip}:2377"
    for role, token in (("worker", worker), ("manager", manager_token)):
        assert manager.ok("join-token", role) == (
            f"To add a {role} to this swarm, run the following command:\n\n"
            f"    swarmctl join --token {token} {addr}\n\n")

    rotated = manager.ok("join-token", "--rotate", "worker")
    new = manager.ok("join-token", "-q", "worker").strip()
    assert new != worker and new.split("-")[2] == worker.split("-")[2]
    assert rotated == ("Successfully rotated worker join token.\n\n"
                       "To add a worker to this swarm, run the following command:\n\n"
                       f"    swarmctl join --token {new} {addr}\n\n")
    assert manager.ok("join-token", "-q", "manager").strip() == manager_token
    quiet = manager.ok("join-token", "--rotate", "-q", "manager").strip()
    assert quiet != manager_token and quiet == manager.ok("join-token", "-q", "manager").strip()


@pytest.mark.parametrize("role", ["foo", "WORKER"])
def test_join_token_unknown_role(daemon: Daemon, role: str) -> None:
    # Checked by the client before any call, so also when not in a swarm (as Docker does).
    r = daemon.ctl("join-token", role)
    assert (r.returncode, r.stderr) == (1, f"unknown role {role}\n")


@pytest.mark.parametrize("args", [[], ["worker", "manager"]])
def test_join_token_argument_count(daemon: Daemon, args: list[str]) -> None:
    r = daemon.ctl("join-token", *args)
    assert r.returncode == 1
    assert r.stderr == ("swarmctl: 'swarmctl join-token' requires 1 argument\n\n"
                        "Usage:  swarmctl join-token [OPTIONS] (worker|manager)\n\n"
                        "Run 'swarmctl join-token --help' for more information\n")


def test_ca_prints_the_stored_root_and_tokens_carry_its_digest(manager: Daemon) -> None:
    stored = (manager.state_dir / "certificates" / "swarm-root-ca.crt").read_bytes()
    assert manager.ok("ca").encode() == stored
    root = x509.load_pem_x509_certificate(stored)
    assert root.subject.rfc4514_string() == "CN=swarm-ca"
    for role in ("worker", "manager"):
        token = tokens.parse_join_token(manager.ok("join-token", "-q", role).strip())
        assert token.digest_hex == hashlib.sha256(stored).hexdigest()
    r = manager.ctl("ca", "--cert-expiry", "2h")
    assert (r.returncode, r.stderr) == (1, "`--cert-expiry` flag requires the `--rotate` flag to update the CA\n")


def test_node_certificate_and_key_on_disk(manager: Daemon) -> None:
    certs = manager.state_dir / "certificates"
    cert = x509.load_pem_x509_certificate((certs / "swarm-node.crt").read_bytes())
    info = manager.info()
    names = {a.oid: a.value for a in cert.subject}
    assert names[x509.NameOID.COMMON_NAME] == info.node_id
    assert names[x509.NameOID.ORGANIZATIONAL_UNIT_NAME] == "swarm-manager"
    assert names[x509.NameOID.ORGANIZATION_NAME] == info.cluster.id
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["swarm-manager", info.node_id, "swarm-ca"]
    assert (certs / "swarm-node.key").stat().st_mode & 0o777 == 0o600
    assert certs.stat().st_mode & 0o777 == 0o700
    assert (manager.state_dir / "state.json").stat().st_mode & 0o777 == 0o600
    assert (manager.state_dir / "raft").stat().st_mode & 0o777 == 0o700
    for f in (manager.state_dir / "raft").iterdir():
        assert f.stat().st_mode & 0o077 == 0, f


def test_leave_last_manager_needs_force(manager: Daemon) -> None:
    r = manager.ctl("leave")
    assert r.returncode == 1
    assert r.stderr == ("Error response from daemon: You are attempting to leave the swarm on a node that is "
                        "participating as a manager. Removing the last manager erases all current state of the "
                        "swarm. Use `--force` to ignore this message.\n")
    assert manager.info().local_node_state == "active"
    assert manager.ok("leave", "--force") == "Node left the swarm.\n"
    assert manager.info().local_node_state == "inactive"
    assert sorted(p.name for p in manager.state_dir.iterdir()) == []
    # And the node can start a brand-new swarm.
    first = manager.info().node_id
    manager.init()
    assert manager.info().node_id != first


def test_force_new_cluster_keeps_the_state(manager: Daemon) -> None:
    before = manager.info()
    manager.ok("network", "create", "keep")
    out = manager.ok("init", "--force-new-cluster")
    assert f"current node ({before.node_id})" in out
    assert "keep" in manager.ok("network", "ls")
    assert manager.info().cluster.id == before.cluster.id


def test_failed_init_leaves_nothing_behind(daemon: Daemon) -> None:
    # Occupy the listen address so the remote API cannot bind: init must fail cleanly.
    with socket.socket() as blocker:
        blocker.bind((daemon.ip, 2377))
        blocker.listen()
        r = daemon.ctl("init", "--advertise-addr", daemon.ip, "--listen-addr", daemon.listen)
    assert r.returncode == 1
    assert r.stderr.startswith("Error response from daemon: manager stopped: failed to listen on remote API address")
    assert daemon.info().local_node_state == "inactive"
    assert not daemon.state_dir.exists() or list(daemon.state_dir.iterdir()) == []
    daemon.init()  # and a later init works
    assert daemon.info().local_node_state == "active"


@pytest.mark.parametrize("args, stderr", [
    (["--advertise-addr", "999.1.1.1"], "Error response from daemon: advertise address must be a non-zero IP "
                                        "address or network interface (with optional port number)\n"),
    (["--advertise-addr", "0.0.0.0"], "Error response from daemon: advertise address must be a non-zero IP "
                                      "address or network interface (with optional port number)\n"),
    (["--advertise-addr", "nosuchif0"], "Error response from daemon: advertise address must be a non-zero IP "
                                        "address or network interface (with optional port number)\n"),
    (["--advertise-addr", "127.0.0.1", "--listen-addr", "nosuchif0"],
     "Error response from daemon: listen address must be an IP address or network interface (with optional "
     "port number)\n"),
    (["--advertise-addr", "127.0.0.1", "--data-path-addr", "nosuchif0"],
     "Error response from daemon: data path address must be a non-zero IP address or network interface "
     "(without a port number)\n"),
    (["--advertise-addr", "127.0.0.1", "--data-path-port", "80"],
     "Error response from daemon: Datapath port number is not in valid range (1024-49151) : 80\n"),
    (["--advertise-addr", "127.0.0.1", "--cert-expiry", "30m"],
     "Error response from daemon: rpc error: code = InvalidArgument desc = minimum certificate expiry time is: "
     "1h0m0s\n"),
    (["--advertise-addr", "127.0.0.1", "--default-addr-pool", "10.0.0.0/8", "--default-addr-pool-mask-length", "30"],
     "Error response from daemon: subnet size is out of range: 30\n"),
    (["--advertise-addr", "127.0.0.1", "--availability", "sleep"],
     'invalid availability "sleep", only active, pause and drain are supported\n'),
])
def test_init_rejects_bad_input_and_stays_inactive(daemon: Daemon, args: list[str], stderr: str) -> None:
    r = daemon.ctl("init", *args)
    assert (r.returncode, r.stderr) == (1, stderr)
    assert daemon.info().local_node_state == "inactive"


def test_init_flag_parse_errors_exit_125(daemon: Daemon) -> None:
    r = daemon.ctl("init", "--listen-addr", "0.0.0.0:abc")
    assert r.returncode == 125
    assert r.stderr == ('invalid argument "0.0.0.0:abc" for "--listen-addr" flag: parse "tcp://0.0.0.0:abc": '
                        'invalid port ":abc" after host\n\nUsage:  swarmctl init [OPTIONS]\n\n'
                        "Run 'swarmctl init --help' for more information\n")
    r = daemon.ctl("init", "--cert-expiry", "soon")
    assert r.returncode == 125 and r.stderr.startswith(
        'invalid argument "soon" for "--cert-expiry" flag: time: invalid duration "soon"\n')
    r = daemon.ctl("init", "--no-such-flag")
    assert (r.returncode, r.stderr) == (125, "unknown flag: --no-such-flag\nSee 'swarmctl init --help'.\n")


def test_docker_port_quirk_is_kept(daemon: Daemon) -> None:
    """Docker stores the advertise port text verbatim (10.77.0.1:abc is accepted)."""
    out = daemon.ok("init", "--advertise-addr", f"{daemon.ip}:4000", "--listen-addr", daemon.listen)
    assert f" {daemon.ip}:4000\n" in out


def test_no_daemon_is_one_clear_line(tmp_path: Path) -> None:
    d = Daemon(tmp_path, "absent")
    r = d.ctl("info")
    assert r.returncode == 1
    assert r.stderr == (f"Cannot connect to the swarmd daemon at unix://{d.socket}. "
                        "Is the swarmd daemon running?\n")
