#!/usr/bin/env python3
"""Join load: many concurrent real joins (token-bound mutual TLS, root digest check, CSR)
against ONE manager.

    .venv/bin/python bench/load_joins.py                 # 200 concurrent joins
    .venv/bin/python bench/load_joins.py --joins 500 --concurrency 100 --json

Each simulated node runs ``swarmd.node.joiner.request_certificate`` -- the same client code a
``swarmctl join`` runs inside the joining daemon -- from a thread of this process. The
manager is a real ``swarmd`` on its own 127.77.N.M address in a private temp dir, stopped by
PID at the end. The run checks that no admission was lost: ``node ls -q`` must grow by exactly
the number of joins, and every node ID a joiner got back must be in it.

``admit_nodes`` is also the admission phase of ``load_sessions.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterlib import (BenchError, CpuMeter, Daemon, check_binaries, check_row, clean_up,  # noqa: E402
                        install_signal_handlers, log, percentile, proc_status, render_table)

from swarmd.api.swarm.v1 import swarm_pb2 as pb  # noqa: E402
from swarmd.node.joiner import JoinResult, request_certificate  # noqa: E402

TARGET_JOINS_PER_S = 50.0


@dataclass
class JoinOutcome:
    index: int
    latency: float = 0.0          # s, from this join's start to its certificate
    finished: float = 0.0         # s since the barrier released
    result: JoinResult | None = None
    error: str = ""


@dataclass
class JoinRun:
    outcomes: list[JoinOutcome]
    wall: float                   # s, barrier release to the last join's end
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core over ``wall``

    @property
    def admitted(self) -> list[JoinOutcome]:
        return [o for o in self.outcomes if o.result is not None]

    @property
    def failed(self) -> list[JoinOutcome]:
        return [o for o in self.outcomes if o.result is None]

    def rate(self) -> float:
        return len(self.admitted) / self.wall if self.wall > 0 else 0.0

    def latencies(self) -> list[float]:
        return [o.latency for o in self.admitted]


def admit_nodes(remote: str, token: str, n: int, concurrency: int, prefix: str = "load",
                manager_pid: int | None = None, progress: bool = False) -> JoinRun:
    """Admit ``n`` simulated nodes through ``concurrency`` threads, all released together by a
    barrier (so with ``concurrency == n`` every join is in flight at once)."""
    outcomes = [JoinOutcome(i) for i in range(n)]
    lock = threading.Lock()
    cursor = [0]
    barrier = threading.Barrier(concurrency + 1)
    released = [0.0]

    def worker() -> None:
        barrier.wait()
        while True:
            with lock:
                i = cursor[0]
                cursor[0] += 1
            if i >= n:
                return
            o = outcomes[i]
            desc = pb.NodeDescription(hostname=f"{prefix}-{i:05d}", os="linux", architecture="x86_64",
                                      nano_cpus=2 * 10**9, memory_bytes=2 << 30, engine_version="bench")
            t0 = time.perf_counter()
            try:
                o.result = request_certificate(remote, token, "active", ":2377", desc)
            except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                o.error = f"{type(e).__name__}: {e}"
            end = time.perf_counter()
            o.latency, o.finished = end - t0, end - released[0]
            if progress and (i + 1) % 100 == 0:
                log(f"  {i + 1}/{n} joins started, last took {o.latency:.2f}s")

    threads = [threading.Thread(target=worker, name=f"joiner-{k}", daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    pids: dict[str, int | str] = {"bench process": "self"}
    if manager_pid is not None:
        pids["manager"] = manager_pid
    meter = CpuMeter(pids)
    released[0] = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - released[0]
    cpu = meter.read()
    return JoinRun(outcomes, wall, cpu)


def node_ids(manager: Daemon) -> list[str]:
    return [line.strip() for line in manager.ctl("node", "ls", "-q")[1].splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Concurrent real joins against one swarmd manager.")
    ap.add_argument("--joins", type=int, default=200, help="joins in total (default 200)")
    ap.add_argument("--concurrency", type=int, default=0,
                    help="joiner threads (default: one per join, all in flight at once)")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (manager log)")
    args = ap.parse_args(argv)
    concurrency = args.concurrency or args.joins
    if args.joins < 1 or concurrency < 1:
        ap.error("--joins and --concurrency must be >= 1")
    concurrency = min(concurrency, args.joins)
    check_binaries()
    install_signal_handlers()

    tmp = Path(tempfile.mkdtemp(prefix="swarmbench-joins-"))
    ok = False
    load_before = os.getloadavg()
    try:
        manager = Daemon(tmp, "m1")
        manager.start().wait_ready()
        manager.init()
        token = manager.token("worker")
        before = node_ids(manager)
        log(f"manager {manager.listen} (pid {manager.pid}) ready; {args.joins} joins through {concurrency} threads")
        run = admit_nodes(manager.listen, token, args.joins, concurrency, manager_pid=manager.pid)
        after = node_ids(manager)
        status = proc_status(manager.pid)
        manager.stop()
        ok = True
    except BenchError as e:
        log(f"bench failed: {e}")
        return 1
    finally:
        clean_up(tmp, keep=not ok or args.keep)

    admitted = run.admitted
    ids = [o.result.node_id for o in admitted if o.result is not None]
    grew = len(after) - len(before)
    missing = sorted(set(ids) - set(after))
    lost = len(run.outcomes) - len(admitted)
    lat = run.latencies()
    errors: dict[str, int] = {}
    for o in run.failed:
        errors[o.error[:160]] = errors.get(o.error[:160], 0) + 1

    checks = [
        check_row("joins/s (admitted / wall time)", run.rate(), "/s", ">=", TARGET_JOINS_PER_S),
        check_row("joins admitted", len(admitted), "count", ">=", args.joins),
        check_row("node ls -q growth", grew, "count", ">=", args.joins),
        check_row("node ls -q growth beyond the joins", max(0, grew - args.joins), "count", "<=", 0),
        check_row("admitted node IDs missing from node ls", len(missing), "count", "<=", 0),
        check_row("duplicate node IDs handed out", len(ids) - len(set(ids)), "count", "<=", 0),
    ]
    info = [
        ("joins attempted / concurrent", f"{args.joins} / {concurrency}"),
        ("wall time (barrier release to last join)", f"{run.wall:.3f} s"),
        ("join latency p50 / p90 / p99 / max",
         " / ".join(f"{percentile(lat, p):.3f}" for p in (50, 90, 99)) + f" / {max(lat, default=float('nan')):.3f} s"),
        ("first / last join finished at",
         f"{min((o.finished for o in admitted), default=float('nan')):.3f} / "
         f"{max((o.finished for o in admitted), default=float('nan')):.3f} s"),
        ("manager CPU over the run", f"{run.cpu.get('manager', float('nan')):.0f} % of one core"),
        ("bench process CPU over the run (joiner side)", f"{run.cpu['bench process']:.0f} % of one core"),
        ("manager VmRSS / VmHWM / threads after",
         f"{status['VmRSS'] / 1024:.0f} / {status['VmHWM'] / 1024:.0f} MiB / {status['Threads']}"),
        ("node ls -q before / after", f"{len(before)} / {len(after)}"),
        ("failed joins", str(lost)),
    ]
    meta = {"python": platform.python_version(), "grpc": grpc.__version__, "cpus": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    if args.json:
        json.dump({"meta": meta, "checks": [dict(zip(("metric", "unit", "value", "target", "result"), c))
                                            for c in checks],
                   "info": dict(info), "errors": errors,
                   "latencies_s": lat}, sys.stdout, indent=2)
        print()
    else:
        print(f"swarmd join load: {args.joins} real joins ({concurrency} threads) against one manager; "
              f"{meta['cpus']} CPUs; loadavg {load_before[0]:.2f} -> {meta['loadavg_after'][0]:.2f}")
        print(render_table([("check", "unit", "value", "target", "result"), *checks]))
        print()
        width = max(len(k) for k, _ in info)
        for k, v in info:
            print(f"{k.ljust(width)}  {v}")
        for msg, count in errors.items():
            print(f"error x{count}: {msg}")
        misses = [c[0] for c in checks if c[-1] == "MISS"]
        print(f"\n{'all targets met' if not misses else 'MISSED: ' + ', '.join(misses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
