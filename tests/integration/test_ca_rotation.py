"""Root CA rotation and the certificate lifecycle with real daemons: every node moves to the new
root, tokens are replaced, an operator's CA can be supplied, a node that was down rejoins, and a
certificate that expired while its daemon was down is reported with Docker's text."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from swarmd.ca import pki, rotation
from tests.harness import Daemon, join, node_rows, node_tls, wait_for

PROGRESS = re.compile(
    r"desired root digest: sha256:[0-9a-f]{64}\n"
    r"  rotated TLS certificates: \[=*>? *\] \d+/\d+ nodes\n"
    r"  rotated CA certificates:  \[=*>? *\] \d+/\d+ nodes\n")


def issuer_key(state_dir: Path) -> str:
    root, cert, _ = node_tls(state_dir)
    return rotation.issuer_info(cert, root)[1]


def test_rotation_moves_every_node_and_replaces_both_tokens(daemons: Callable[..., Daemon]) -> None:
    m1 = daemons("m1")
    m1.init()
    m2, w1, w2 = daemons("m2"), daemons("w1"), daemons("w2")
    join(m2, m1, "manager")
    join(w1, m1)
    join(w2, m1)
    old_root = m1.ok("ca")
    m2.ok("node", "ls")  # m2 forwards to the leader: its channel there predates the rotation
    old_tokens = {r: m1.ok("join-token", "-q", r).strip() for r in ("worker", "manager")}

    r = m1.ctl("ca", "--rotate", timeout=60)
    assert r.returncode == 0, r.stderr
    new_root = m1.ok("ca")
    assert new_root != old_root and r.stdout.endswith(new_root)
    progress = r.stdout[:-len(new_root)]
    lines = progress.splitlines(keepends=True)
    assert lines and len(lines) % 3 == 0
    assert all(PROGRESS.fullmatch("".join(lines[i:i + 3])) for i in range(0, len(lines), 3)), progress
    assert progress.rstrip("\n").endswith("  rotated CA certificates:  [" + "=" * 50 + ">] 4/4 nodes")
    digest = rotation.root_digest(new_root.encode())
    assert progress.startswith(f"desired root digest: {digest}\n")

    new_key = rotation.spki_b64(new_root.encode())
    for d in (m1, m2, w1, w2):
        assert (d.state_dir / "certificates" / "swarm-root-ca.crt").read_text() == new_root, d.hostname
        assert issuer_key(d.state_dir) == new_key, d.hostname
        _, cert, _ = node_tls(d.state_dir)
        pki.verify_node_cert(cert, new_root.encode())
    tokens = {r: m1.ok("join-token", "-q", r).strip() for r in ("worker", "manager")}
    for role in ("worker", "manager"):
        assert tokens[role] != old_tokens[role]
        assert tokens[role].split("-")[2] != old_tokens[role].split("-")[2]  # the digest names the new root
    assert m2.ok("join-token", "-q", "worker").strip() == tokens["worker"]
    assert all(row[0] == "Ready" for row in node_rows(m2).values())
    # The old token no longer admits anyone; the new one does.
    late = daemons("late")
    bad = late.ctl("join", "--token", old_tokens["worker"], "--advertise-addr", late.ip, "--listen-addr",
                   late.listen, m1.listen, timeout=60)
    assert bad.returncode == 1 and "A valid join token is necessary to join this cluster" in bad.stderr
    join(late, m1)
    assert late.info().local_node_state == "active"
    # Writes still commit through the managers' new certificates.
    m2.ok("network", "create", "--driver", "overlay", "after-rotation")


def test_rotation_to_an_operator_ca_and_its_errors(daemons: Callable[..., Daemon], tmp_path: Path) -> None:
    m1 = daemons("m1")
    m1.init()
    w1 = daemons("w1")
    join(w1, m1)
    cert, key = pki.create_root_ca()
    (tmp_path / "ca.crt").write_bytes(cert)
    (tmp_path / "ca.key").write_bytes(key)
    (tmp_path / "junk").write_text("not a certificate\n")

    def fails(*args: str) -> str:
        r = m1.ctl("ca", *args)
        assert r.returncode == 1, args
        return r.stderr

    assert fails("--ca-cert", str(tmp_path / "ca.crt")) == \
        "`--ca-cert` flag requires the `--rotate` flag to update the CA\n"
    assert fails("--rotate", "--ca-cert", str(tmp_path / "ca.crt")) == \
        "the --ca-cert flag requires that a --ca-key flag and/or --external-ca flag be provided as well\n"
    usage = "\n\nUsage:  swarmctl ca [OPTIONS]\n\nRun 'swarmctl ca --help' for more information\n"
    junk = m1.ctl("ca", "--rotate", "--ca-cert", str(tmp_path / "junk"), "--ca-key", str(tmp_path / "ca.key"))
    assert (junk.returncode, junk.stderr) == (125, f'invalid argument "{tmp_path / "junk"}" for "--ca-cert" flag: '
                                                   "file contents must be in PEM format" + usage)
    assert fails("--rotate", "--ca-key", str(tmp_path / "ca.key")) == (
        "Error response from daemon: rpc error: code = InvalidArgument desc = if a signing CA key is provided, "
        "the signing CA cert must also be provided\n")
    current = m1.ok("ca").encode()
    missing = m1.ctl("ca", "--rotate", "--ca-cert", str(tmp_path / "ca.crt"), "--ca-key", str(tmp_path / "other.key"))
    assert (missing.returncode, missing.stderr) == (
        125, f'invalid argument "{tmp_path / "other.key"}" for "--ca-key" flag: '
             f"open {tmp_path / 'other.key'}: no such file or directory" + usage)
    assert m1.ok("ca").encode() == current  # nothing changed

    r = m1.ctl("ca", "--rotate", "--ca-cert", str(tmp_path / "ca.crt"), "--ca-key", str(tmp_path / "ca.key"),
               "-q", timeout=60)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert m1.ok("ca").encode() == cert
    wait_for(lambda: (w1.state_dir / "certificates" / "swarm-root-ca.crt").read_bytes() == cert, 10,
             what="the worker to trust the operator's root")
    assert fails("--rotate", "--ca-cert", str(tmp_path / "ca.crt"), "--ca-key", str(tmp_path / "ca.key")) == (
        "Error response from daemon: rpc error: code = InvalidArgument desc = Cannot update to a cert with an "
        "identical key\n")

    # With the operator's key, certificates of any age can be made. One 89 % through its life is
    # renewed over mutual TLS as soon as the worker starts...
    w1.stop()
    _, worker_cert, _ = node_tls(w1.state_dir)
    old = aged_copy(worker_cert, cert, key, timedelta(days=80), timedelta(days=10))
    (w1.state_dir / "certificates" / "swarm-node.crt").write_bytes(old)
    w1.start()
    wait_for(lambda: node_tls(w1.state_dir)[1] != old, 15, what="the worker to renew its aging certificate")
    fresh = x509.load_pem_x509_certificate(node_tls(w1.state_dir)[1])
    assert datetime.now(timezone.utc) - fresh.not_valid_before_utc < timedelta(hours=2)
    assert fresh.not_valid_after_utc - datetime.now(timezone.utc) > timedelta(days=80)
    assert pki.identity_from_cert(node_tls(w1.state_dir)[1]).node_id == pki.identity_from_cert(old).node_id
    assert "node certificate renewed" in w1.log()

    # ...and one that expired while the worker was down:
    # the worker then reports Docker's text and can only leave.
    w1.stop()
    _, worker_cert, _ = node_tls(w1.state_dir)
    (w1.state_dir / "certificates" / "swarm-node.crt").write_bytes(
        aged_copy(worker_cert, cert, key, timedelta(hours=3), -timedelta(hours=1)))
    w1.start()
    info = w1.info()
    expired = "Swarm certificates have expired. To replace them, leave the swarm and join again."
    assert (info.local_node_state, info.error) == ("error", expired)
    r = w1.ctl("node", "ls")
    assert r.stderr == f"Error response from daemon: {expired}\n"
    assert "certificate has expired or is not yet valid" in w1.log()
    w1.ok("leave")
    assert w1.info().local_node_state == "inactive"


def aged_copy(cert_pem: bytes, ca_cert_pem: bytes, ca_key_pem: bytes, age: timedelta, left: timedelta) -> bytes:
    """The same node certificate (subject, key, extensions), issued ``age`` ago and valid for
    ``left`` more (negative: expired that long ago)."""
    leaf = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(ca.subject)
               .public_key(leaf.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - age).not_valid_after(now + left))
    for ext in leaf.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_a_worker_down_during_the_rotation_rejoins_with_the_new_token(daemons: Callable[..., Daemon]) -> None:
    m1 = daemons("m1")
    m1.init("--dispatcher-heartbeat", "1s")
    w1 = daemons("w1")
    join(w1, m1)
    w1.stop()
    wait_for(lambda: node_rows(m1)["w1"][0] == "Down", 15, what="the stopped worker to be Down")
    r = m1.ctl("ca", "--rotate", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("] 1/1 nodes") >= 2  # the node that is up; the Down one is not waited for
    w1.start()
    assert w1.info().local_node_state == "active"  # it still believes in its swarm...
    assert node_rows(m1)["w1"][0] == "Down"        # ...but its old certificate is no longer trusted
    w1.ok("leave")
    join(w1, m1)
    rows = [line for line in m1.ok("node", "ls").splitlines() if " w1 " in line]
    assert len(rows) == 2 and sum(" Ready " in row for row in rows) == 1
