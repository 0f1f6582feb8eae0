#!/usr/bin/env python3
"""Autolock benchmark: how long an autolocked manager takes from `swarmctl unlock` to serving.

    .venv/bin/python bench/bench_autolock.py              # 7 rounds, table
    .venv/bin/python bench/bench_autolock.py --rounds 3 --json

Each round: a fresh daemon in a private temp dir on its own 127.77.N.M address, `init --autolock`,
a restart (the manager comes up locked), then the unlock. Measured:
- "unlock → ready": from starting `swarmctl unlock` (key on stdin) until `ListNodes` answers on the
  control socket (the manager's Raft store is open and it leads again);
- "swarmctl unlock": the wall time of the command itself;
- "Unlock RPC → ready": the same without the CLI's Python start-up (a direct gRPC call).
Every process is stopped by PID, also on errors.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterlib import (PROCS, SWARMCTL, BenchError, Daemon, Metrics, check_binaries, clean_up,  # noqa: E402
                        control_stub, install_signal_handlers, log, report)

from swarmd.api.swarm.v1 import swarm_pb2 as pb  # noqa: E402

M_READY = "unlock -> ready (swarmctl)"
M_CLI = "swarmctl unlock"
M_RPC = "Unlock RPC -> ready"
TARGET = ("<=", 1.0)


def locked_manager(tmp: Path, name: str) -> tuple[Daemon, str]:
    d = Daemon(tmp, name).start()
    d.wait_ready()
    out = d.ctl("init", "--autolock", "--advertise-addr", d.ip, "--listen-addr", d.listen)[1]
    key = next(line.strip() for line in out.splitlines() if line.strip().startswith("SWMKEY-1-"))
    d.stop()
    d.start()
    d.wait_ready(lambda r: r.local_node_state == "locked")
    return d, key


def wait_serving(d: Daemon, t0: float, timeout: float = 10.0) -> float:
    channel, stub = control_stub(d.sock)
    try:
        while True:
            try:
                stub.ListNodes(pb.ListNodesRequest(), timeout=1.0)
                return time.perf_counter() - t0
            except grpc.RpcError:
                if time.perf_counter() - t0 > timeout:
                    raise BenchError(f"{d.name}: not serving {timeout:.0f}s after unlock:\n{d.log_tail()}") from None
                time.sleep(0.002)
    finally:
        channel.close()


def round_cli(tmp: Path, r: int) -> tuple[float, float]:
    d, key = locked_manager(tmp, f"cli{r}")
    try:
        t0 = time.perf_counter()
        proc = PROCS.spawn([str(SWARMCTL), "-H", f"unix://{d.sock}", "unlock"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate((key + "\n").encode(), timeout=30)
        cli = time.perf_counter() - t0
        PROCS.forget(proc)
        if proc.returncode != 0:
            raise BenchError(f"swarmctl unlock failed: {err.decode().strip()}")
        return wait_serving(d, t0), cli
    finally:
        d.stop()


def round_rpc(tmp: Path, r: int) -> float:
    d, key = locked_manager(tmp, f"rpc{r}")
    try:
        channel, stub = control_stub(d.sock)
        try:
            t0 = time.perf_counter()
            stub.Unlock(pb.UnlockRequest(key=key), timeout=10)
        finally:
            channel.close()
        return wait_serving(d, t0)
    finally:
        d.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    args = ap.parse_args()
    check_binaries()
    install_signal_handlers()
    m = Metrics()
    m.declare(M_READY, "s", TARGET)
    m.declare(M_CLI, "s")
    m.declare(M_RPC, "s", TARGET)
    tmp = Path(tempfile.mkdtemp(prefix="swarmd-bench-autolock-"))
    try:
        for r in range(args.rounds):
            ready, cli = round_cli(tmp, r)
            m.add(M_READY, ready)
            m.add(M_CLI, cli)
            m.add(M_RPC, round_rpc(tmp, r))
            log(f"round {r + 1}/{args.rounds}: unlock->ready {ready:.3f}s (cli {cli:.3f}s), "
                f"rpc->ready {m.values[M_RPC][-1]:.3f}s")
    finally:
        clean_up(tmp, keep=False)
    report(m, args.json)
    return 1 if m.misses() else 0


if __name__ == "__main__":
    sys.exit(main())
