#!/usr/bin/env python3
"""Connection flood: idle, unauthenticated TCP connections held against the managers' port 2377
while the cluster must keep working.

    .venv/bin/python bench/flood.py                       # both floods, 3 rounds each
    .venv/bin/python bench/flood.py --flood one --rounds 1 --hold 40
    .venv/bin/python bench/flood.py --managers 1 --json

A real cluster (``--managers`` managers, default 3, and one worker heartbeating every second),
each daemon a real ``swarmd`` on its own 127.77.N.M address in a private temp dir, stopped by
PID at the end. Per round, the flooder (one thread of this process, one epoll loop) keeps
``--connections`` plain TCP connections open against every manager (``--target all``) or the
leader only, from one source address (``one``) or from 200 (``many``: 25 each), sending
nothing; a connection the manager closes is opened again, as an attacker would, at most
``--reopen-rate`` a second. Meanwhile, every 0.5 s, a fresh control-socket channel to the
leader asks ``ListNodes`` (what ``swarmctl node ls`` asks): its latency, who is leader, and
whether the worker is Ready. Reported per flood, as medians over the rounds: leader kept
(yes/no: the first leader answered every sample as leader), ``node ls`` latency p50 and max,
worker Ready (every sample), and how many flood connections the managers closed.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterlib import (BenchError, Daemon, check_binaries, clean_up, control_stub,  # noqa: E402
                        install_signal_handlers, log, render_table)

from swarmd.api.swarm.v1 import swarm_pb2 as pb  # noqa: E402

SAMPLE_PERIOD = 0.5
TARGET_NODE_LS_S = 1.0
FLOODS = {"one": (1, 5000), "many": (200, 25)}     # (source addresses, connections per source)
IP_BIND_ADDRESS_NO_PORT = 24


def flood_sources(n: int, salt: int) -> list[str]:
    """Source addresses in 127.78.0.0/15, away from the daemons' 127.77.N.M."""
    base = (os.getpid() * 7 + salt * 1009) % 40000
    return [f"127.{78 + (base + i) // 62500 % 2}.{(base + i) // 250 % 250}.{(base + i) % 250 + 2}"
            for i in range(n)]


@dataclass
class FloodStats:
    opened: int = 0
    closed_by_server: int = 0
    connect_errors: int = 0
    open_now: int = 0
    max_open: int = 0


class Flooder:
    """Keeps ``per_source`` idle connections from every source to every target, in one thread."""

    def __init__(self, targets: list[tuple[str, int]], sources: list[str], per_source: int,
                 reopen_rate: float) -> None:
        self.targets, self.sources, self.per_source = targets, sources, per_source
        self.reopen_rate = reopen_rate
        self.stats = FloodStats()
        self._stop = threading.Event()
        self._sel = selectors.EpollSelector()
        self._thread = threading.Thread(target=self._run, name="flooder", daemon=True)
        self._wanted: list[tuple[str, tuple[str, int]]] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for key in list(self._sel.get_map().values()):
            sock = key.fileobj
            self._sel.unregister(sock)
            sock.close()  # type: ignore[union-attr]
        self._sel.close()

    def _open(self, source: str, target: tuple[str, int]) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            err = sock.connect_ex(target)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        except OSError:
            sock.close()
            self.stats.connect_errors += 1
            return False
        self._sel.register(sock, selectors.EVENT_READ, (source, target))
        self.stats.opened += 1
        self.stats.open_now += 1
        self.stats.max_open = max(self.stats.max_open, self.stats.open_now)
        return True

    def _run(self) -> None:
        for target in self.targets:
            for source in self.sources:
                for _ in range(self.per_source):
                    if self._stop.is_set():
                        return
                    if not self._open(source, target):
                        self._wanted.append((source, target))
        budget, last = 0.0, time.monotonic()
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.05):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                if data:
                    continue
                self._sel.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                self.stats.closed_by_server += 1
                self.stats.open_now -= 1
                self._wanted.append(key.data)
            now = time.monotonic()
            budget = min(budget + (now - last) * self.reopen_rate, self.reopen_rate)
            last = now
            while self._wanted and budget >= 1:
                budget -= 1
                source, target = self._wanted.pop(0)
                if not self._open(source, target):
                    self._wanted.append((source, target))


@dataclass
class Sample:
    at: float
    latency: float | None          # None: no answer within the timeout
    leader: str = ""               # hostname the answer names as leader
    worker: str = ""               # the worker's status
    error: str = ""


@dataclass
class Round:
    flood: str
    samples: list[Sample] = field(default_factory=list)
    stats: FloodStats = field(default_factory=FloodStats)
    leader_before: str = ""
    missed_heartbeats: int = 0

    def leader_kept(self) -> bool:
        return bool(self.samples) and all(s.leader == self.leader_before for s in self.samples)

    def worker_ready(self) -> bool:
        return bool(self.samples) and all(s.worker == "ready" for s in self.samples) and not self.missed_heartbeats

    def latencies(self) -> list[float]:
        # An unanswered sample counts as its timeout: it must weigh against the flood.
        return [s.latency if s.latency is not None else float("inf") for s in self.samples]


def list_nodes(d: Daemon, timeout: float) -> Sample:
    t0 = time.perf_counter()
    channel, stub = control_stub(d.sock)
    try:
        resp = stub.ListNodes(pb.ListNodesRequest(), timeout=timeout)
    except grpc.RpcError as e:
        return Sample(time.time(), None, error=f"{e.code().name}: {e.details()}")
    finally:
        channel.close()
    latency = time.perf_counter() - t0
    leader = next((n.hostname for n in resp.nodes if n.manager_status.leader), "")
    worker = next((n.state for n in resp.nodes if n.hostname == "w1"), "")
    return Sample(time.time(), latency, leader, worker)


def run_round(flood: str, salt: int, managers: list[Daemon], worker: Daemon, args: argparse.Namespace) -> Round:
    n_sources, per_source = FLOODS[flood]
    if flood == "one":
        per_source = args.connections
    first = list_nodes(managers[0], 5.0)
    if first.latency is None or not first.leader:
        raise BenchError(f"no leader before the flood: {first.error}")
    leader = next(m for m in managers if m.name == first.leader)
    targets = managers if args.target == "all" else [leader]
    marks = {m.name: m.log_path.read_text(errors="replace").count("missed 3 heartbeats") for m in managers}
    rnd = Round(flood, leader_before=leader.name)
    flooder = Flooder([(m.ip, 2377) for m in targets], flood_sources(n_sources, salt), per_source,
                      args.reopen_rate)
    flooder.start()
    try:
        end = time.monotonic() + args.hold
        while time.monotonic() < end:
            t0 = time.monotonic()
            rnd.samples.append(list_nodes(leader, args.sample_timeout))
            time.sleep(max(0.0, SAMPLE_PERIOD - (time.monotonic() - t0)))
    finally:
        flooder.stop()
    rnd.stats = flooder.stats
    rnd.missed_heartbeats = sum(m.log_path.read_text(errors="replace").count("missed 3 heartbeats") - marks[m.name]
                                for m in managers)
    return rnd


def settle(managers: list[Daemon], timeout: float = 120.0) -> float | None:
    """After a round: seconds until there is a leader again and the worker is Ready (None: not
    within ``timeout``), so that the next round starts from a working cluster."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s = list_nodes(managers[0], 2.0)
        if s.latency is not None and s.leader and s.worker == "ready":
            return time.monotonic() - t0
        time.sleep(0.5)
    return None


def build_cluster(tmp: Path, n_managers: int) -> tuple[list[Daemon], Daemon]:
    managers = [Daemon(tmp, f"m{i + 1}") for i in range(n_managers)]
    worker = Daemon(tmp, "w1")
    for d in (*managers, worker):
        d.start()
    for d in (*managers, worker):
        d.wait_ready()
    m1 = managers[0]
    m1.ctl("init", "--advertise-addr", m1.ip, "--listen-addr", m1.listen, "--dispatcher-heartbeat", "1s")
    token = m1.token("manager")
    for m in managers[1:]:
        m.join(token, m1)
    worker.join(m1.token("worker"), m1)
    deadline = time.monotonic() + 30
    while list_nodes(m1, 2.0).worker != "ready":
        if time.monotonic() > deadline:
            raise BenchError("the worker did not become Ready")
        time.sleep(0.2)
    return managers, worker


def summarise(rounds: list[Round]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("flood", "rounds", "leader kept", "node ls p50 (s)", "node ls max (s)",
                                    "unanswered", "worker Ready", "flood conns closed by managers")]
    for flood in FLOODS:
        mine = [r for r in rounds if r.flood == flood]
        if not mine:
            continue
        kept = statistics.median(1 if r.leader_kept() else 0 for r in mine) >= 0.5
        ready = statistics.median(1 if r.worker_ready() else 0 for r in mine) >= 0.5
        p50 = statistics.median(statistics.median_low(r.latencies()) for r in mine)
        worst = statistics.median(max(r.latencies()) for r in mine)
        unanswered = statistics.median(sum(s.latency is None for s in r.samples) for r in mine)
        closed = statistics.median(r.stats.closed_by_server for r in mine)
        rows.append((flood, str(len(mine)), "yes" if kept else "no", f"{p50:.3f}", f"{worst:.3f}",
                     f"{unanswered:g}", "yes" if ready else "no", f"{closed:g}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Idle-connection floods against real swarmd managers.")
    ap.add_argument("--managers", type=int, default=3, help="managers (default 3)")
    ap.add_argument("--flood", choices=["one", "many", "both"], default="both",
                    help="one source x --connections, 200 sources x 25, or both (default)")
    ap.add_argument("--connections", type=int, default=5000, help="connections of the one-source flood (5000)")
    ap.add_argument("--target", choices=["all", "leader"], default="all", help="flood every manager (default)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per flood (default 3)")
    ap.add_argument("--hold", type=float, default=20.0, help="seconds each flood is held (default 20)")
    ap.add_argument("--reopen-rate", type=float, default=1000.0,
                    help="connections the flooder reopens per second at most (default 1000)")
    ap.add_argument("--sample-timeout", type=float, default=5.0, help="ListNodes deadline (default 5 s)")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon logs)")
    args = ap.parse_args(argv)
    check_binaries()
    install_signal_handlers()
    floods = list(FLOODS) if args.flood == "both" else [args.flood]
    tmp = Path(tempfile.mkdtemp(prefix="swarmbench-flood-"))
    ok = False
    rounds: list[Round] = []
    load_before = os.getloadavg()
    try:
        managers, worker = build_cluster(tmp, args.managers)
        log(f"cluster: {', '.join(m.listen for m in managers)} + worker {worker.listen}")
        salt = 0
        for flood in floods:
            for i in range(args.rounds):
                salt += 1
                rnd = run_round(flood, salt, managers, worker, args)
                rounds.append(rnd)
                log(f"  {flood} #{i + 1}: leader kept {rnd.leader_kept()}, node ls p50 "
                    f"{statistics.median_low(rnd.latencies()):.3f}s max {max(rnd.latencies()):.3f}s, worker Ready "
                    f"{rnd.worker_ready()}, opened {rnd.stats.opened}, closed by managers "
                    f"{rnd.stats.closed_by_server}, connect errors {rnd.stats.connect_errors}")
                if flood != floods[-1] or i < args.rounds - 1:
                    recovered = settle(managers)
                    if recovered is None:
                        raise BenchError("the cluster did not recover within 120 s after a flood")
                    log(f"    recovered after {recovered:.1f}s")
                    time.sleep(2.0)  # let the managers close what is left of the flood
        ok = True
    except BenchError as e:
        log(f"bench failed: {e}")
        return 1
    finally:
        clean_up(tmp, keep=not ok or args.keep)
    rows = summarise(rounds)
    meta = {"python": platform.python_version(), "grpc": grpc.__version__, "cpus": os.cpu_count(),
            "managers": args.managers, "target": args.target, "hold_s": args.hold,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    if args.json:
        json.dump({"meta": meta, "summary": [dict(zip(rows[0], r)) for r in rows[1:]],
                   "rounds": [{"flood": r.flood, "leader_kept": r.leader_kept(), "worker_ready": r.worker_ready(),
                               "latencies_s": [s.latency for s in r.samples],
                               "errors": [s.error for s in r.samples if s.error],
                               "closed_by_server": r.stats.closed_by_server, "opened": r.stats.opened}
                              for r in rounds]}, sys.stdout, indent=2)
        print()
    else:
        print(f"swarmd connection flood: {args.managers} managers + 1 worker, flood on {args.target}, "
              f"{args.hold:g}s per round; {meta['cpus']} CPUs; loadavg {load_before[0]:.2f} -> "
              f"{meta['loadavg_after'][0]:.2f}")
        print(render_table(rows, numeric=False))
        misses = [r[0] for r in rows[1:] if r[2] != "yes" or r[6] != "yes" or float(r[4]) > TARGET_NODE_LS_S]
        print(f"\n{'all targets met' if not misses else 'MISSED: ' + ', '.join(misses)} "
              f"(target: leader kept, worker Ready, node ls within {TARGET_NODE_LS_S:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
