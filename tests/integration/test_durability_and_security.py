"""Restart, kill -9, the mutual-TLS remote API, secrets in logs, and a daemon that survives abuse."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import grpc
import pytest

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import pki
from tests.harness import SWARMCTL, Daemon, node_tls


def snapshot(d: Daemon) -> dict[str, object]:
    info = d.info()
    return {
        "node": info.node_id,
        "cluster": info.cluster.id,
        "worker": d.ok("join-token", "-q", "worker"),
        "manager": d.ok("join-token", "-q", "manager"),
        "networks": d.ok("network", "ls"),
        "node_spec": json.loads(d.ok("node", "inspect", "self"))[0]["Spec"],
        "ca": d.ok("ca"),
    }


def test_restart_resumes_the_swarm(manager: Daemon) -> None:
    manager.ok("network", "create", "persisted")
    manager.ok("node", "update", "--label-add", "k=v", "self")
    before = snapshot(manager)
    assert manager.stop() == 0
    manager.start()
    assert snapshot(manager) == before
    remote_ls(manager)  # listening on the remote API again


def test_acknowledged_writes_survive_kill_9(manager: Daemon) -> None:
    manager.ok("join-token", "--rotate", "worker")
    manager.ok("network", "create", "after-rotate")
    before = snapshot(manager)
    manager.kill9()
    manager.start()
    assert snapshot(manager) == before


def _tls_args(d: Daemon) -> list[str]:
    certs = d.state_dir / "certificates"
    return ["-H", f"tcp://{d.listen}", "--tlscacert", str(certs / "swarm-root-ca.crt"),
            "--tlscert", str(certs / "swarm-node.crt"), "--tlskey", str(certs / "swarm-node.key")]


def remote_ls(d: Daemon) -> str:
    r = subprocess.run([SWARMCTL, *_tls_args(d), "node", "ls", "-q"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_remote_cli_with_a_manager_certificate(manager: Daemon) -> None:
    assert remote_ls(manager) == manager.info().node_id + "\n"
    # Init and leave are for the local socket only.
    r = subprocess.run([SWARMCTL, *_tls_args(manager), "leave", "--force"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Permission denied" in r.stderr
    assert manager.info().local_node_state == "active"


def _call_remote(d: Daemon, creds: grpc.ChannelCredentials) -> grpc.RpcError | None:
    with grpc.secure_channel(d.listen, creds, options=[("grpc.ssl_target_name_override", "swarm-manager")]) as ch:
        try:
            pb_grpc.ControlStub(ch).ListNodes(pb.ListNodesRequest(), timeout=5)
        except grpc.RpcError as e:
            return e
    return None


def test_remote_api_requires_a_certificate_of_this_cluster(manager: Daemon, tmp_path: Path) -> None:
    root = (manager.state_dir / "certificates" / "swarm-root-ca.crt").read_bytes()
    # No client certificate: the TLS handshake itself fails.
    err = _call_remote(manager, grpc.ssl_channel_credentials(root_certificates=root))
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
    # A manager certificate from another CA: refused at the handshake as well.
    other_root, other_key = pki.create_root_ca()
    key = pki.generate_key()
    cert = pki.sign_node_certificate(other_root, other_key, pki.make_csr(key), "intruder0000000000000000x",
                                     manager.info().cluster.id, pki.MANAGER_ROLE,
                                     pki.DEFAULT_NODE_CERT_EXPIRATION)
    err = _call_remote(manager, grpc.ssl_channel_credentials(root, pki.key_to_pem(key), cert))
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
    # Plain TCP without TLS gets nowhere either.
    with grpc.insecure_channel(manager.listen) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.ControlStub(ch).Info(pb.InfoRequest(), timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_secrets_never_reach_the_log(manager: Daemon) -> None:
    manager.ok("join-token", "--rotate", "manager")
    secrets = [manager.ok("join-token", "-q", r).strip() for r in ("worker", "manager")]
    key_body = "".join(node_tls(manager.state_dir)[2].decode().splitlines()[1:-1])
    manager.restart()
    log = manager.log()
    assert "swarm" in log  # the log is real and not empty
    for token in secrets:
        assert token.rsplit("-", 1)[1] not in log
    assert key_body[:40] not in log


def test_daemon_survives_garbage_and_unknown_calls(manager: Daemon) -> None:
    # Raw junk on the control socket and on the remote port.
    for family, address in ((socket.AF_UNIX, str(manager.socket)), (socket.AF_INET, (manager.ip, 2377))):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(address)
            s.sendall(b"\x00\xff" * 5000 + b"GET / HTTP/1.1\r\n\r\n")
    # An RPC that does not exist, and an oversized message.
    with grpc.insecure_channel(f"unix:{manager.socket}") as ch:
        junk = ch.unary_unary("/swarm.v1.Control/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as exc:
            junk(b"\x01\x02", timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.ControlStub(ch).GetNode(pb.GetNodeRequest(ref="x" * (5 << 20)), timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert manager.info().local_node_state == "active"
    assert manager.ok("node", "ls", "-q").strip() == manager.info().node_id


def test_control_socket_is_private(daemon: Daemon) -> None:
    assert daemon.socket.stat().st_mode & 0o777 == 0o600


def test_one_daemon_per_state_dir_and_socket(daemon: Daemon, tmp_path: Path) -> None:
    from tests.harness import SWARMD

    r = subprocess.run([SWARMD, "--state-dir", str(daemon.state_dir), "--control-socket", str(tmp_path / "other.sock")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "another swarmd is already using the state dir" in r.stderr
    r = subprocess.run([SWARMD, "--state-dir", str(tmp_path / "other-state"), "--control-socket", str(daemon.socket)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "another swarmd is already serving" in r.stderr
    assert daemon.info().local_node_state == "inactive"  # the first one is untouched
