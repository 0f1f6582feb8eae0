#!/usr/bin/env python3
"""Single-node benchmark of swarmd/swarmctl: start-up, CLI latency, idle footprint, store writes.

Run with the project's interpreter (the binaries are looked up next to it):

    .venv/bin/python bench/bench_single_node.py --rounds 15
    .venv/bin/python bench/bench_single_node.py --rounds 5 --json > results.json

Every round uses a fresh private temp dir, a fresh inactive daemon, and its own loopback
listen address (127.0.0.X:2377, never 0.0.0.0). Every process the bench starts is tracked by
PID and stopped (SIGTERM, then SIGKILL) at the end, also on errors and on Ctrl-C/SIGTERM.
See bench/README.md for what each metric means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc

from swarmd.api.swarm.v1 import swarm_pb2 as pb

BIN_DIR = Path(sys.executable).parent
SWARMD = BIN_DIR / "swarmd"
SWARMCTL = BIN_DIR / "swarmctl"

POLL_INTERVAL = 0.005      # readiness poll period (s)
READY_TIMEOUT = 20.0       # give up on a daemon that is not ready after this long (s)
CLI_TIMEOUT = 60.0
IDLE_SETTLE = 3.0          # wait after init before reading RSS (s)
IDLE_CPU_WINDOW = 5.0      # window over which idle CPU is measured (s)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# metric -> target (ms, or MiB for RSS); PASS/MISS is decided on the median.
TARGETS: dict[str, float] = {
    "swarmctl init": 500.0,
    "swarmctl join-token -q worker": 250.0,
    "swarmd start-to-ready (fresh)": 1000.0,
    "swarmd start-to-ready (resume swarm)": 1000.0,
    "idle manager VmRSS": 80.0,
}


# ---------------------------------------------------------------------------------------------
# Process bookkeeping: everything started here is stopped here, by PID.
# ---------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent))
# One set of helpers for every bench: process keeper, /proc readings, statistics.
import clusterlib  # noqa: E402
from clusterlib import (PROCS, BenchError, _on_signal, control_stub, log, percentile,  # noqa: E402
                        proc_status, render_table)

stub_for = control_stub


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def pick_listen_addr(used: set[str]) -> str:
    """A free 127.0.0.X:2377 this bench has not used yet (avoids TIME_WAIT and other users)."""
    candidates = [f"127.0.0.{x}" for x in range(20, 250)]
    random.shuffle(candidates)
    for ip in candidates:
        if ip in used:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((ip, 2377))
        except OSError:
            continue
        finally:
            s.close()
        used.add(ip)
        return f"{ip}:2377"
    raise BenchError("no free 127.0.0.X:2377 address")


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()  # fields from #3 (state) on
    return int(fields[11]) + int(fields[12])


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    started: float
    log_path: Path
    sock: Path

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def start_daemon(tmp: Path, hostname: str, tag: str) -> Daemon:
    sock = tmp / "ctl.sock"
    log_path = tmp / f"swarmd-{tag}.log"
    logf = open(log_path, "wb")
    try:
        started = time.perf_counter()
        proc = PROCS.spawn([str(SWARMD), "--state-dir", str(tmp / "state"), "--control-socket", str(sock),
                            "--hostname", hostname],
                           stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                           start_new_session=True)
    finally:
        logf.close()
    return Daemon(proc, started, log_path, sock)


def wait_ready(d: Daemon, accept: Callable[[pb.InfoResponse], bool] = lambda r: True) -> tuple[float, pb.InfoResponse]:
    """Seconds from Popen to the first Info answer that ``accept``s, polling every ~5 ms.

    Each attempt uses a fresh channel, so gRPC's reconnect back-off (1 s after a failed
    connect) cannot stretch the measurement; an attempt on a missing socket fails at once."""
    deadline = d.started + READY_TIMEOUT
    next_poll = time.perf_counter()
    while True:
        if d.proc.poll() is not None:
            raise BenchError(f"swarmd exited with {d.proc.returncode} before it was ready:\n{d.log_tail()}")
        if d.sock.exists():
            channel, stub = stub_for(d.sock)
            try:
                resp = stub.Info(pb.InfoRequest(), timeout=0.5, wait_for_ready=False)
                t = time.perf_counter() - d.started
                if accept(resp):
                    return t, resp
            except grpc.RpcError:
                pass
            finally:
                channel.close()
        now = time.perf_counter()
        if now > deadline:
            raise BenchError(f"swarmd not ready after {READY_TIMEOUT:.0f}s:\n{d.log_tail()}")
        next_poll += POLL_INTERVAL
        if next_poll > now:
            time.sleep(next_poll - now)
        else:
            next_poll = now


def run_cli(sock: Path | None, *args: str) -> tuple[float, str]:
    """Wall time of one swarmctl invocation, from Popen to exit. Fails on a non-zero exit."""
    argv = [str(SWARMCTL)] + (["-H", f"unix://{sock}"] if sock else []) + list(args)
    return run_timed(argv)


def run_timed(argv: list[str]) -> tuple[float, str]:
    elapsed, out, _, _ = clusterlib.run_timed(argv)
    return elapsed, out


# ---------------------------------------------------------------------------------------------
# One round
# ---------------------------------------------------------------------------------------------

@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)
    write_latencies: list[float] = field(default_factory=list)  # pooled over rounds (ms)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)


def one_round(r: int, args: argparse.Namespace, s: Samples, used_addrs: set[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="swarmbench-"))
    daemon: Daemon | None = None
    try:
        listen = pick_listen_addr(used_addrs)
        hostname = f"bench-{r}"

        # CLI floor: the interpreter and swarmctl's imports, without any RPC.
        s.add("python -c pass (interpreter floor)", run_timed([sys.executable, "-c", "pass"])[0] * 1e3)
        s.add("swarmctl --help (no RPC)", run_cli(None, "--help")[0] * 1e3)

        # 1. start to ready, fresh state dir
        daemon = start_daemon(tmp, hostname, "fresh")
        t, resp = wait_ready(daemon)
        if resp.local_node_state != "inactive":
            raise BenchError(f"fresh daemon reports {resp.local_node_state!r}")
        s.add("swarmd start-to-ready (fresh)", t * 1e3)
        s.add("swarmctl info (inactive)", run_cli(daemon.sock, "info")[0] * 1e3)

        # 2. init on this fresh inactive daemon
        t, _ = run_cli(daemon.sock, "init", "--advertise-addr", "127.0.0.1", "--listen-addr", listen)
        s.add("swarmctl init", t * 1e3)

        # 5. idle footprint: settle, then RSS, then CPU over a window with nothing else running
        time.sleep(IDLE_SETTLE)
        st = proc_status(daemon.proc.pid)
        s.add("idle manager VmRSS", st["VmRSS"] / 1024)
        s.add("idle manager VmHWM", st["VmHWM"] / 1024)
        s.add("idle manager threads", st["Threads"])
        c0, w0 = cpu_ticks(daemon.proc.pid), time.perf_counter()
        time.sleep(IDLE_CPU_WINDOW)
        c1, w1 = cpu_ticks(daemon.proc.pid), time.perf_counter()
        s.add("idle manager CPU", (c1 - c0) / CLK_TCK / (w1 - w0) * 100)

        # 3./4. cheap CLI calls, a few samples per round
        for _ in range(args.cli_reps):
            t, token = run_cli(daemon.sock, "join-token", "-q", "worker")
            if not token.startswith("SWMTKN-1-"):
                raise BenchError(f"unexpected join-token output {token!r}")
            s.add("swarmctl join-token -q worker", t * 1e3)
            s.add("swarmctl info (manager)", run_cli(daemon.sock, "info")[0] * 1e3)
            s.add("swarmctl node ls", run_cli(daemon.sock, "node", "ls")[0] * 1e3)

        # 6. store writes straight through the control API: each rotation is one raft write
        channel, stub = stub_for(daemon.sock)
        try:
            t0 = time.perf_counter()
            stub.Info(pb.InfoRequest(), timeout=5)  # connect outside the timed loop
            s.add("gRPC Info round trip (warm channel)", (time.perf_counter() - t0) * 1e3)
            infos = []
            for _ in range(20):
                t0 = time.perf_counter()
                stub.Info(pb.InfoRequest(), timeout=5)
                infos.append((time.perf_counter() - t0) * 1e3)
            s.values["gRPC Info round trip (warm channel)"][-1] = statistics.median(infos)
            lat: list[float] = []
            req = pb.GetJoinTokenRequest(role="worker", rotate=True)
            w_start = time.perf_counter()
            for _ in range(args.writes):
                t0 = time.perf_counter()
                stub.GetJoinToken(req, timeout=10)
                lat.append((time.perf_counter() - t0) * 1e3)
            w_total = time.perf_counter() - w_start
        finally:
            channel.close()
        s.write_latencies.extend(lat)
        s.add("store writes/s (GetJoinToken rotate)", args.writes / w_total)
        s.add("store write latency p50", percentile(lat, 50))
        s.add("store write latency p99", percentile(lat, 99))
        s.add("manager VmRSS after writes", proc_status(daemon.proc.pid)["VmRSS"] / 1024)

        # 1b. restart: stop the manager, start a daemon on the same state dir, time its resume
        s.add("swarmd stop (SIGTERM to exit, manager)", PROCS.stop(daemon.proc) * 1e3)
        if daemon.proc.returncode != 0:
            raise BenchError(f"swarmd exited {daemon.proc.returncode} on SIGTERM:\n{daemon.log_tail()}")
        daemon = start_daemon(tmp, hostname, "resume")
        t, resp = wait_ready(daemon)
        s.add("swarmd start-to-ready (resume swarm)", t * 1e3)
        if resp.local_node_state != "active" or not resp.control_available:
            t, resp = wait_ready(daemon, lambda r: r.local_node_state == "active" and r.control_available)
        s.add("swarmd resume to control_available", t * 1e3)

        # leave, for completeness (returns the node to inactive)
        s.add("swarmctl leave --force", run_cli(daemon.sock, "leave", "--force")[0] * 1e3)
        PROCS.stop(daemon.proc)
        daemon = None
    finally:
        if daemon is not None:
            PROCS.stop(daemon.proc)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"  kept {tmp}")


# ---------------------------------------------------------------------------------------------
# Statistics and output
# ---------------------------------------------------------------------------------------------

UNITS = {
    "idle manager VmRSS": "MiB", "idle manager VmHWM": "MiB", "manager VmRSS after writes": "MiB",
    "idle manager CPU": "% core", "idle manager threads": "", "store writes/s (GetJoinToken rotate)": "/s",
}

ORDER = [
    "swarmd start-to-ready (fresh)",
    "swarmd start-to-ready (resume swarm)",
    "swarmd resume to control_available",
    "swarmctl init",
    "swarmctl join-token -q worker",
    "swarmctl info (inactive)",
    "swarmctl info (manager)",
    "swarmctl node ls",
    "swarmctl leave --force",
    "swarmd stop (SIGTERM to exit, manager)",
    "idle manager VmRSS",
    "idle manager VmHWM",
    "idle manager threads",
    "idle manager CPU",
    "store writes/s (GetJoinToken rotate)",
    "store write latency p50",
    "store write latency p99",
    "manager VmRSS after writes",
    "gRPC Info round trip (warm channel)",
    "python -c pass (interpreter floor)",
    "swarmctl --help (no RPC)",
]


def summarise(s: Samples) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in ORDER + sorted(set(s.values) - set(ORDER)):
        vals = s.values.get(name)
        if not vals:
            continue
        med = statistics.median(vals)
        target = TARGETS.get(name)
        out[name] = {
            "unit": UNITS.get(name, "ms"), "n": len(vals), "median": med, "min": min(vals), "max": max(vals),
            "p90": percentile(vals, 90), "target": target,
            "status": None if target is None else ("PASS" if med <= target else "MISS"),
        }
    return out


def pooled_writes(s: Samples) -> dict[str, float]:
    lat = s.write_latencies
    if not lat:
        return {}
    return {"n": len(lat), "p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": percentile(lat, 99),
            "min": min(lat), "max": max(lat), "mean": statistics.fmean(lat)}


def fmt(v: float, unit: str) -> str:
    if unit in ("", "/s"):
        return f"{v:.0f}"
    return f"{v:.1f}"


def table(summary: dict[str, dict[str, Any]]) -> str:
    head = ("metric", "unit", "n", "median", "min", "max", "p90", "target", "result")
    rows = [head]
    for name, m in summary.items():
        u = m["unit"]
        target = f"<= {fmt(m['target'], u)}" if m["target"] is not None else "-"
        rows.append((name, u or "-", str(m["n"]), fmt(m["median"], u), fmt(m["min"], u), fmt(m["max"], u),
                     fmt(m["p90"], u), target, m["status"] or "-"))
    return render_table(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Single-node swarmd/swarmctl benchmark.")
    ap.add_argument("--rounds", type=int, default=15, help="rounds, each in a fresh temp dir (default 15)")
    ap.add_argument("--json", action="store_true", help="print machine-readable results instead of the table")
    ap.add_argument("--writes", type=int, default=300, help="sequential store writes per round (default 300)")
    ap.add_argument("--cli-reps", type=int, default=3,
                    help="samples per round of join-token/info/node ls (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep each round's temp dir (logs) for inspection")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.writes < 1 or args.cli_reps < 1:
        ap.error("--rounds, --writes and --cli-reps must be >= 1")
    for b in (SWARMD, SWARMCTL):
        if not os.access(b, os.X_OK):
            ap.error(f"{b} not found: run with the project's virtualenv python")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    s = Samples()
    used: set[str] = set()
    load_before = os.getloadavg()
    t_begin = time.time()
    r = 0
    try:
        for r in range(args.rounds):
            t0 = time.perf_counter()
            one_round(r, args, s, used)
            log(f"round {r + 1}/{args.rounds} done in {time.perf_counter() - t0:.1f}s")
    except BenchError as e:
        log(f"bench failed in round {r + 1}: {e}")
        return 1
    except (KeyboardInterrupt, SystemExit):
        log("interrupted; stopping the processes the bench started")
        raise
    finally:
        leftovers = PROCS.stop_all()
        if leftovers:
            log(f"stopped leftover processes: {leftovers}")

    summary = summarise(s)
    meta = {
        "rounds": args.rounds, "writes_per_round": args.writes, "cli_reps_per_round": args.cli_reps,
        "python": platform.python_version(), "grpc": grpc.__version__, "platform": platform.platform(),
        "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "duration_s": round(time.time() - t_begin, 1),
    }
    if args.json:
        json.dump({"meta": meta, "metrics": summary, "store_write_latency_pooled_ms": pooled_writes(s),
                   "samples": s.values}, sys.stdout, indent=2)
        print()
    else:
        print(f"swarmd single-node bench: {args.rounds} rounds, {args.writes} writes/round, "
              f"{args.cli_reps} CLI samples/round; {meta['cpus']} CPUs; "
              f"loadavg {load_before[0]:.2f} -> {meta['loadavg_after'][0]:.2f}; {meta['duration_s']}s")
        print(table(summary))
        pw = pooled_writes(s)
        if pw:
            print(f"\nstore write latency, all {pw['n']:.0f} writes pooled: p50 {pw['p50']:.2f} ms, "
                  f"p90 {pw['p90']:.2f} ms, p99 {pw['p99']:.2f} ms, max {pw['max']:.2f} ms, "
                  f"mean {pw['mean']:.2f} ms")
        misses = [n for n, m in summary.items() if m["status"] == "MISS"]
        print(f"\n{'all targets met' if not misses else 'MISSED: ' + ', '.join(misses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
