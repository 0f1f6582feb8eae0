#!/usr/bin/env python3
"""Cluster benchmark of swarmd/swarmctl with real daemons on loopback: join/leave latency,
leader failover, replicated write throughput.

    .venv/bin/python bench/bench_cluster.py              # 7 rounds, table
    .venv/bin/python bench/bench_cluster.py --rounds 3 --json > results.json

Every round builds a fresh cluster in a private temp dir (five daemons: m1 m2 m3 w1 w2, each on
its own 127.77.N.M address) and tears it down; every process is stopped by PID, also on errors.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterlib import (PROCS, BenchError, Daemon, Metrics, check_binaries, control_stub,  # noqa: E402
                        install_signal_handlers, log, percentile, render_table, start_all)

from swarmd.api.swarm.v1 import swarm_pb2 as pb  # noqa: E402
from swarmd.ca import keyfile  # noqa: E402
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc  # noqa: E402

POLL_PERIOD = 0.020          # failover probe: one CreateNetwork attempt every ~20 ms
FAILOVER_GIVE_UP = 30.0      # a round fails if no write commits this long after the kill
WRITE_TIMEOUT = 10.0

M_WJOIN = "swarmctl join (worker, 3-manager swarm)"
M_WLEAVE = "swarmctl leave (worker)"
M_MJOIN = "swarmctl join (manager, 1-manager swarm -> 2)"
M_M3JOIN = "Control.Join RPC (manager, 2 -> 3, no CLI)"
M_RPC_JOIN = "Control.Join RPC (worker, no CLI)"
M_RPC_LEAVE = "Control.Leave RPC (worker, no CLI)"
M_INIT = "swarmctl init"
M_HELP = "swarmctl --help (CLI floor, no RPC)"
M_FAILOVER = "kill -9 leader -> next committed write"
M_ELECT = "kill -9 leader -> a survivor acts as leader"
M_WPS = "sequential writes/s (3 managers)"
M_WP50 = "write latency p50"
M_WP99 = "write latency p99"


def declare(m: Metrics) -> None:
    m.declare(M_WJOIN, "s", ("<=", 0.3))
    m.declare(M_WLEAVE, "s", ("<=", 0.5))
    m.declare(M_MJOIN, "s", ("<=", 0.5))
    m.declare(M_M3JOIN, "s")
    m.declare(M_RPC_JOIN, "s")
    m.declare(M_RPC_LEAVE, "s")
    m.declare(M_INIT, "s")
    m.declare(M_HELP, "s")
    m.declare(M_FAILOVER, "s", ("<=", 3.0))
    m.declare(M_ELECT, "s")
    m.declare(M_WPS, "/s", (">=", 500))
    m.declare(M_WP50, "ms")
    m.declare(M_WP99, "ms")


def find_leader(managers: list[Daemon], via: Daemon, timeout: float = 15.0) -> Daemon:
    by_id = {d.info().node_id: d for d in managers}
    deadline = time.monotonic() + timeout
    channel, stub = control_stub(via.sock)
    try:
        while True:
            try:
                for n in stub.ListNodes(pb.ListNodesRequest(), timeout=5).nodes:
                    if n.manager_status.leader and n.id in by_id:
                        return by_id[n.id]
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("no leader found")
            time.sleep(0.05)
    finally:
        channel.close()


def rpc_join(node: Daemon, manager: Daemon, token: str, role: str) -> float:
    """Control.Join on ``node``'s socket over a warm channel: the join without swarmctl's start-up."""
    channel, stub = control_stub(node.sock)
    try:
        stub.Info(pb.InfoRequest(), timeout=5)
        t0 = time.perf_counter()
        resp = stub.Join(pb.JoinRequest(remote_addr=manager.listen, token=token, listen_addr=node.listen,
                                        advertise_addr=node.ip), timeout=30)
        elapsed = time.perf_counter() - t0
    finally:
        channel.close()
    if resp.role != role:
        raise BenchError(f"{node.name} joined as {resp.role!r}, not {role}")
    return elapsed


def writes(leader: Daemon, n: int) -> tuple[float, list[float]]:
    """``n`` sequential GetJoinToken(rotate) calls on one warm channel: (writes/s, latencies ms)."""
    channel, stub = control_stub(leader.sock)
    try:
        stub.Info(pb.InfoRequest(), timeout=5)  # connect outside the timed loop
        req = pb.GetJoinTokenRequest(role="worker", rotate=True)
        lat: list[float] = []
        start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            stub.GetJoinToken(req, timeout=WRITE_TIMEOUT)
            lat.append((time.perf_counter() - t0) * 1e3)
        total = time.perf_counter() - start
    finally:
        channel.close()
    return n / total, lat


def failover(leader: Daemon, survivors: list[Daemon], r: int) -> dict[str, Any]:
    """kill -9 the leader, then one CreateNetwork on ``survivors[0]`` every ~20 ms until one commits.

    A second thread watches the election itself, without going through the control API's
    forwarding: every ~20 ms it calls Dispatcher.Heartbeat on each survivor's remote API with
    survivors[0]'s own manager certificate (from its state dir). A follower refuses at once
    (FAILED_PRECONDITION, naming the leader it believes in); the first survivor that accepts is
    the new leader. A heartbeat changes nothing in the store for a node that is already Ready."""
    survivor = survivors[0]
    channel, stub = control_stub(survivor.sock)
    certs = survivor.root / "state" / "certificates"
    node_key = keyfile.decode((certs / "swarm-node.key").read_bytes(), None).key_pem  # headers, maybe a data key
    creds = grpc.ssl_channel_credentials((certs / "swarm-root-ca.crt").read_bytes(), node_key,
                                         (certs / "swarm-node.crt").read_bytes())
    hb_channels = [grpc.secure_channel(d.listen, creds, options=[("grpc.ssl_target_name_override", "swarm-manager")])
                   for d in survivors]
    hb_stubs = [pb_grpc.DispatcherStub(c) for c in hb_channels]
    errors: dict[str, list[float]] = {}  # message -> [count, first s, last s]
    attempts = 0
    elected: list[tuple[float, str]] = []
    stop = threading.Event()
    killed = 0.0

    def probe_leader() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            for d, hb in zip(survivors, hb_stubs):
                try:
                    hb.Heartbeat(pb.HeartbeatRequest(), timeout=0.5)
                    elected.append((time.perf_counter() - killed, d.name))
                    return
                except grpc.RpcError:
                    pass
            stop.wait(max(0.0, POLL_PERIOD - (time.perf_counter() - t0)))

    prober = threading.Thread(target=probe_leader, name="leader-probe", daemon=True)
    try:
        stub.Info(pb.InfoRequest(), timeout=5)  # warm channels: the first attempts do not connect
        for hb in hb_stubs:
            try:
                hb.Heartbeat(pb.HeartbeatRequest(), timeout=5)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.FAILED_PRECONDITION:  # followers refuse: connected
                    raise BenchError(f"leader probe cannot reach a survivor: {e.code().name} {e.details()}")
        leader.kill9()
        killed = time.perf_counter()
        prober.start()
        next_at = killed
        while True:
            now = time.perf_counter()
            if now - killed > FAILOVER_GIVE_UP:
                raise BenchError(f"no write committed {FAILOVER_GIVE_UP:.0f}s after killing the leader: "
                                 f"{errors}\n--- {survivor.name} ---\n{survivor.log_tail()}")
            attempts += 1
            try:
                stub.CreateNetwork(pb.CreateNetworkRequest(name=f"after-kill-{r}-{attempts}"), timeout=WRITE_TIMEOUT)
                done = time.perf_counter() - killed
                break
            except grpc.RpcError as e:
                key = f"{e.code().name}: {(e.details() or '')[:70]}"
                rec = errors.setdefault(key, [0, now - killed, 0.0])
                rec[0] += 1
                rec[2] = time.perf_counter() - killed
            next_at += POLL_PERIOD
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.perf_counter()
        prober.join(5.0)
    finally:
        stop.set()
        channel.close()
        for c in hb_channels:
            c.close()
    return {"round": r + 1, "killed": leader.name, "probed": survivor.name, "write_s": done,
            "leader_s": elected[0][0] if elected else float("nan"),
            "new_leader": elected[0][1] if elected else "?", "attempts": attempts,
            "errors": {k: {"count": v[0], "first_s": round(v[1], 3), "last_s": round(v[2], 3)}
                       for k, v in errors.items()}}


def one_round(r: int, args: argparse.Namespace, m: Metrics, kills: list[dict[str, Any]],
              pooled: list[float]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="swarmbench-cluster-"))
    ok = False
    daemons: list[Daemon] = []
    try:
        m1, m2, m3, w1, w2 = daemons = [Daemon(tmp, n) for n in ("m1", "m2", "m3", "w1", "w2")]
        start_all(daemons)
        m.add(M_HELP, m1.ctl("--help")[0])
        m.add(M_INIT, m1.init())
        wtok, mtok = m1.token("worker"), m1.token("manager")

        # Second manager into a one-manager swarm (fresh daemons every round, no leave/rejoin).
        t, out = m2.join(mtok, m1)
        if out != "This node joined a swarm as a manager.\n":
            raise BenchError(f"m2 join said {out!r}")
        m.add(M_MJOIN, t)
        m.add(M_M3JOIN, rpc_join(m3, m1, mtok, "manager"))

        # A worker into the three-manager swarm, through m1 (the leader: it ran init).
        t, out = w1.join(wtok, m1)
        if out != "This node joined a swarm as a worker.\n":
            raise BenchError(f"w1 join said {out!r}")
        m.add(M_WJOIN, t)
        t, out, _, _ = w1.ctl("leave")
        if out != "Node left the swarm.\n":
            raise BenchError(f"w1 leave said {out!r}")
        m.add(M_WLEAVE, t)

        # The same through the control socket from here: the CLI's own start-up excluded.
        m.add(M_RPC_JOIN, rpc_join(w2, m1, wtok, "worker"))
        channel, stub = control_stub(w2.sock)
        try:
            t0 = time.perf_counter()
            stub.Leave(pb.LeaveRequest(), timeout=30)
            m.add(M_RPC_LEAVE, time.perf_counter() - t0)
        finally:
            channel.close()

        managers = [m1, m2, m3]
        leader = find_leader(managers, m1)
        wps, lat = writes(leader, args.writes)
        m.add(M_WPS, wps)
        m.add(M_WP50, percentile(lat, 50))
        m.add(M_WP99, percentile(lat, 99))
        pooled.extend(lat)

        leader = find_leader(managers, m1)
        k = failover(leader, [d for d in managers if d is not leader], r)
        kills.append(k)
        m.add(M_FAILOVER, k["write_s"])
        m.add(M_ELECT, k["leader_s"])
        ok = True
    finally:
        for d in daemons:
            d.stop()
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"  round {r + 1}: kept {tmp} (daemon logs)")


def kill_table(kills: list[dict[str, Any]]) -> str:
    rows = [("round", "killed", "write probed on", "write s", "new leader", "elected s", "attempts",
             "errors seen (count, first..last s)")]
    for k in kills:
        errs = "; ".join(f"{msg} x{v['count']} ({v['first_s']:.2f}..{v['last_s']:.2f})"
                         for msg, v in k["errors"].items()) or "-"
        rows.append((str(k["round"]), k["killed"], k["probed"], f"{k['write_s']:.3f}", k["new_leader"],
                     f"{k['leader_s']:.3f}", str(k["attempts"]), errs))
    return render_table(rows, numeric=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Multi-daemon swarmd cluster benchmark (loopback).")
    ap.add_argument("--rounds", type=int, default=7, help="rounds, each a fresh 5-daemon cluster (default 7)")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--writes", type=int, default=1000, help="sequential replicated writes per round (default 1000)")
    ap.add_argument("--keep", action="store_true", help="keep each round's temp dir (daemon logs)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.writes < 1:
        ap.error("--rounds and --writes must be >= 1")
    check_binaries()
    install_signal_handlers()

    m = Metrics()
    declare(m)
    kills: list[dict[str, Any]] = []
    pooled: list[float] = []
    load_before = os.getloadavg()
    t_begin = time.time()
    r = 0
    try:
        for r in range(args.rounds):
            t0 = time.perf_counter()
            one_round(r, args, m, kills, pooled)
            log(f"round {r + 1}/{args.rounds} done in {time.perf_counter() - t0:.1f}s "
                f"(failover {kills[-1]['write_s']:.3f}s, {m.values[M_WPS][-1]:.0f} writes/s)")
    except BenchError as e:
        log(f"bench failed in round {r + 1}: {e}")
        return 1
    finally:
        leftovers = PROCS.stop_all()
        if leftovers:
            log(f"stopped leftover processes: {leftovers}")

    meta = {"rounds": args.rounds, "writes_per_round": args.writes, "python": platform.python_version(),
            "grpc": grpc.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "duration_s": round(time.time() - t_begin, 1)}
    pooled_summary = {"n": len(pooled), "p50": percentile(pooled, 50), "p90": percentile(pooled, 90),
                      "p99": percentile(pooled, 99), "max": max(pooled), "mean": statistics.fmean(pooled)}
    if args.json:
        json.dump({"meta": meta, "metrics": m.summary(), "failover_rounds": kills,
                   "write_latency_pooled_ms": pooled_summary, "samples": m.values}, sys.stdout, indent=2)
        print()
        return 0
    print(f"swarmd cluster bench: {args.rounds} rounds (fresh m1 m2 m3 w1 w2 per round), {args.writes} "
          f"writes/round; {meta['cpus']} CPUs; loadavg {load_before[0]:.2f} -> {meta['loadavg_after'][0]:.2f}; "
          f"{meta['duration_s']}s")
    print(m.table())
    print(f"\nwrite latency, all {pooled_summary['n']} writes pooled: p50 {pooled_summary['p50']:.2f} ms, "
          f"p90 {pooled_summary['p90']:.2f} ms, p99 {pooled_summary['p99']:.2f} ms, "
          f"max {pooled_summary['max']:.2f} ms, mean {pooled_summary['mean']:.2f} ms")
    print("\nkill -9 of the leader, every round (probe: CreateNetwork on a survivor's control socket every ~20 ms)")
    print(kill_table(kills))
    misses = m.misses()
    print(f"\n{'all targets met' if not misses else 'MISSED: ' + ', '.join(misses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
