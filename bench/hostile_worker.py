#!/usr/bin/env python3
"""What one worker certificate and one worker token can cost a manager.

    .venv/bin/python bench/hostile_worker.py                  # 15 s of each attack
    .venv/bin/python bench/hostile_worker.py --seconds 5 --json

Against ONE real manager (private temp dir and 127.77.N.M address, stopped by PID at the end):

1. **TLS flood**: a hostile client with a real worker certificate (admitted with its own key)
   sends heartbeats from ``--threads`` threads for ``--seconds``, each with a 1.4 MB
   ``tls_info.trust_root`` that differs on every call and forged issuer fields. Reported: calls
   made, growth of ``raft/``, Raft entries written (the version of a probe write before and
   after), the manager's VmRSS/VmHWM.
2. **Admission flood**: one token, one source address, joins (CSR admissions over the
   token-bound handshake) as fast as ``--threads`` threads go for ``--seconds``. Reported:
   admitted, refused (and the refusal text), admissions per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterlib import (BenchError, Daemon, check_binaries, clean_up, control_stub,  # noqa: E402
                        install_signal_handlers, log, proc_status, render_table)

from swarmd.api.swarm.v1 import swarm_pb2 as pb  # noqa: E402
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc  # noqa: E402
from swarmd.ca import join, pki, tokens  # noqa: E402

TRUST_ROOT_BYTES = 1400 * 1024
CALL_TIMEOUT = 15.0


def joiner_channel(manager: Daemon, token: str) -> grpc.Channel:
    ca = join.join_ca(tokens.token_secret(token))
    key, cert = ca.client_credentials()
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(manager.listen, creds, options=[("grpc.ssl_target_name_override", ca.sni)])


def admit(manager: Daemon, token: str, hostname: str) -> tuple[bytes, bytes]:
    key = pki.generate_key()
    with joiner_channel(manager, token) as ch:
        resp = pb_grpc.CAStub(ch).IssueNodeCertificate(pb.IssueNodeCertificateRequest(
            csr=pki.make_csr(key), description=pb.NodeDescription(hostname=hostname)), timeout=CALL_TIMEOUT)
    return resp.certificate, pki.key_to_pem(key)


def raft_index(manager: Daemon, name: str) -> int:
    channel, stub = control_stub(manager.sock)
    try:
        return int(stub.CreateNetwork(pb.CreateNetworkRequest(name=name), timeout=CALL_TIMEOUT).network.version)
    finally:
        channel.close()


def raft_bytes(manager: Daemon) -> int:
    return sum(p.stat().st_size for p in (manager.root / "state" / "raft").rglob("*") if p.is_file())


def tls_flood(manager: Daemon, token: str, seconds: float, threads: int) -> dict[str, float]:
    cert, key = admit(manager, token, "hostile")
    root = (manager.root / "state" / "certificates" / "swarm-root-ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    channel = grpc.secure_channel(manager.listen, creds, options=[
        ("grpc.ssl_target_name_override", "swarm-manager"), ("grpc.max_send_message_length", 8 << 20)])
    stub = pb_grpc.DispatcherStub(channel)
    session = stub.Session(pb.SessionRequest(tls_info=pb.TLSInfo(trust_root=root.decode())), timeout=seconds + 60)
    next(session)
    before_index, before_bytes = raft_index(manager, "probe-before"), raft_bytes(manager)
    calls, failures = [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def attack(worker: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            head = f"-----BEGIN CERTIFICATE-----\n{worker:04d}{i:012d}"
            forged = pb.TLSInfo(trust_root=head + "A" * (TRUST_ROOT_BYTES - len(head)),
                                cert_issuer_subject=f"forged-{i}", cert_issuer_public_key=f"forged-key-{worker}-{i}")
            try:
                stub.Heartbeat(pb.HeartbeatRequest(tls_info=forged), timeout=CALL_TIMEOUT)
                ok = True
            except grpc.RpcError:
                ok = False
            with lock:
                calls[0] += 1
                failures[0] += 0 if ok else 1

    workers = [threading.Thread(target=attack, args=(w,), daemon=True) for w in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    status = proc_status(manager.pid)
    after_index, after_bytes = raft_index(manager, "probe-after"), raft_bytes(manager)
    session.cancel()
    channel.close()
    return {"calls": calls[0], "failed calls": failures[0], "raft entries": after_index - before_index - 1,
            "raft/ growth MiB": (after_bytes - before_bytes) / (1 << 20), "VmRSS MiB": status["VmRSS"] / 1024,
            "VmHWM MiB": status["VmHWM"] / 1024}


def admission_flood(manager: Daemon, token: str, seconds: float, threads: int) -> tuple[dict[str, float], Counter[str]]:
    admitted, errors = [0], Counter[str]()
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + seconds

    def attack(worker: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                admit(manager, token, f"flood-{worker}-{i}")
                with lock:
                    admitted[0] += 1
            except grpc.RpcError as e:
                with lock:
                    errors[str(e.details())[:120]] += 1

    workers = [threading.Thread(target=attack, args=(w,), daemon=True) for w in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    wall = time.monotonic() - started
    return {"admitted": admitted[0], "refused": sum(errors.values()), "admitted/s": admitted[0] / wall}, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A hostile worker and a hostile joiner against one manager.")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each attack (default 15)")
    ap.add_argument("--threads", type=int, default=4, help="attacking threads (default 4)")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (manager log)")
    args = ap.parse_args(argv)
    check_binaries()
    install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="swarmbench-hostile-"))
    ok = False
    try:
        manager = Daemon(tmp, "m1")
        manager.start().wait_ready()
        manager.init()
        token = manager.token("worker")
        log(f"manager {manager.listen} (pid {manager.pid}); {args.seconds:.0f} s TLS flood, {args.threads} threads")
        tls = tls_flood(manager, token, args.seconds, args.threads)
        log(f"{args.seconds:.0f} s admission flood, {args.threads} threads")
        joins, errors = admission_flood(manager, token, args.seconds, args.threads)
        manager.stop()
        ok = True
    except BenchError as e:
        log(f"bench failed: {e}")
        return 1
    finally:
        clean_up(tmp, keep=not ok or args.keep)
    if args.json:
        json.dump({"tls_flood": tls, "admission_flood": joins, "admission_errors": dict(errors)}, sys.stdout, indent=2)
        print()
        return 0
    rows = [("metric", "value")]
    rows += [(f"TLS flood: {k}", f"{v:.1f}" if isinstance(v, float) else str(v)) for k, v in tls.items()]
    rows += [(f"admission flood: {k}", f"{v:.1f}" if isinstance(v, float) else str(v)) for k, v in joins.items()]
    print(render_table(rows, numeric=False))
    for text, count in errors.most_common():
        print(f"refused x{count}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
