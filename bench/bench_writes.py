"""Writes through the control API of a 3-manager swarm, beside a 3-member etcd on the same machine.

    .venv/bin/python bench/bench_writes.py --managers 3 --clients 1 --seconds 10
    .venv/bin/python bench/bench_writes.py --clients 32 --json
    .venv/bin/python bench/bench_writes.py --clients 32 --no-etcd

Each client is closed-loop: it sends its next write as soon as the previous one answered.
swarmd's write is ``UpdateNode`` adding a label to the leader's node (a read, one Raft entry,
a read back), sent to the leader's control socket; etcd's is a ``put`` of a 64-byte value
through its JSON gateway (``/v3/kv/put``) over keep-alive HTTP connections. The cluster's CPU
per write is the CPU time of all members over the run divided by the writes.

Output: a table, or with ``--json`` one object per system with ``writes_per_s``, ``p50_ms``,
``p99_ms``, ``cpu_ms_per_write``, ``errors`` and ``client_cpu_pct`` (above ~90 % the load
generator, not the cluster, is the limit). etcd is skipped (with a note) when ``etcd`` is not
installed (Debian: ``etcd-server``).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterlib import (  # noqa: E402
    ADDRS, PROCS, BenchError, CpuMeter, Daemon, check_binaries, control_stub, install_signal_handlers, log,
    percentile, render_table,
)
from swarmd.api.swarm.v1 import swarm_pb2 as pb  # noqa: E402

WRITE_TIMEOUT = 10.0


class Result:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0

    def ok(self, ms: float) -> None:
        with self.lock:
            self.latencies.append(ms)

    def failed(self) -> None:
        with self.lock:
            self.errors += 1


def closed_loop(clients: int, seconds: float, write: Callable[[int, int], None], result: Result) -> float:
    """Run ``clients`` threads, each calling ``write(client, n)`` back to back; the wall time."""
    stop = time.perf_counter() + seconds

    def run(client: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            n += 1
            t0 = time.perf_counter()
            try:
                write(client, n)
            except Exception:  # noqa: BLE001 - counted, the load goes on
                result.failed()
                continue
            result.ok((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 2 * WRITE_TIMEOUT)
    return time.perf_counter() - started


def summary(name: str, result: Result, wall: float, cluster_cpu_s: float, client_cpu_pct: float) -> dict[str, Any]:
    n = len(result.latencies)
    return {
        "system": name, "writes": n, "errors": result.errors, "writes_per_s": n / wall if wall else 0.0,
        "p50_ms": percentile(result.latencies, 50), "p99_ms": percentile(result.latencies, 99),
        "cpu_ms_per_write": cluster_cpu_s * 1e3 / n if n else float("nan"),
        "client_cpu_pct": client_cpu_pct,
    }


# -- swarmd ----------------------------------------------------------------------------------------

def swarmd_run(tmp: Path, managers: int, clients: int, seconds: float) -> dict[str, Any]:
    nodes = [Daemon(tmp, f"m{i}") for i in range(1, managers + 1)]
    for d in nodes:
        d.start()
    for d in nodes:
        d.wait_ready()
    nodes[0].init()
    token = nodes[0].token("manager")
    for d in nodes[1:]:
        d.join(token, nodes[0])
    leader = nodes[0]
    node_id = leader.info().node_id
    channels = [control_stub(leader.sock) for _ in range(clients)]
    for _, stub in channels:
        stub.Info(pb.InfoRequest(), timeout=5)  # connected before the clock starts

    def write(client: int, n: int) -> None:
        channels[client][1].UpdateNode(pb.UpdateNodeRequest(ref=node_id, label_add=[f"c{client}=v{n}"]),
                                       timeout=WRITE_TIMEOUT)

    result = Result()
    meter = CpuMeter({d.name: d.pid for d in nodes} | {"client": "self"})
    wall = closed_loop(clients, seconds, write, result)
    cpu = meter.read()
    for channel, _ in channels:
        channel.close()
    cluster_cpu = sum(cpu[d.name] for d in nodes) / 100 * cpu["wall_s"]
    for d in nodes:
        d.stop()
    return summary("swarmd", result, wall, cluster_cpu, cpu["client"])


# -- etcd ------------------------------------------------------------------------------------------

def etcd_run(tmp: Path, members: int, clients: int, seconds: float) -> dict[str, Any] | None:
    etcd = shutil.which("etcd")
    if etcd is None:
        log("etcd is not installed (Debian: apt-get install etcd-server): skipped")
        return None
    ips = [ADDRS.next() for _ in range(members)]
    cluster = ",".join(f"e{i}=http://{ip}:2380" for i, ip in enumerate(ips))
    procs = []
    for i, ip in enumerate(ips):
        with open(tmp / f"etcd{i}.log", "ab") as logf:
            procs.append(PROCS.spawn(
                [etcd, "--name", f"e{i}", "--data-dir", str(tmp / f"etcd{i}"),
                 "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
                 "--listen-client-urls", f"http://{ip}:2379", "--advertise-client-urls", f"http://{ip}:2379",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new", "--log-level", "error"],
                stdout=logf, stderr=logf, start_new_session=True))

    def put(conn: http.client.HTTPConnection, key: bytes, value: bytes) -> None:
        body = json.dumps({"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()})
        conn.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise BenchError(f"etcd put: {resp.status} {data[:200]!r}")

    deadline = time.perf_counter() + 30
    while True:
        try:
            probe = http.client.HTTPConnection(ips[0], 2379, timeout=2)
            put(probe, b"probe", b"x")
            probe.close()
            break
        except (OSError, BenchError):
            if time.perf_counter() > deadline:
                raise BenchError("etcd did not start within 30 s") from None
            time.sleep(0.1)
    # Send to the leader, as swarmd's clients do (a follower would forward).
    leader_ip = ips[0]
    for ip in ips:
        conn = http.client.HTTPConnection(ip, 2379, timeout=5)
        conn.request("POST", "/v3/maintenance/status", "{}")
        status = json.loads(conn.getresponse().read())
        conn.close()
        if status.get("leader") == status.get("header", {}).get("member_id"):
            leader_ip = ip
    conns = [http.client.HTTPConnection(leader_ip, 2379, timeout=WRITE_TIMEOUT) for _ in range(clients)]
    value = b"v" * 64

    def write(client: int, n: int) -> None:
        put(conns[client], f"bench/{client}/{n % 1000}".encode(), value)

    result = Result()
    meter = CpuMeter({f"e{i}": p.pid for i, p in enumerate(procs)} | {"client": "self"})
    wall = closed_loop(clients, seconds, write, result)
    cpu = meter.read()
    for conn in conns:
        conn.close()
    cluster_cpu = sum(cpu[f"e{i}"] for i in range(members)) / 100 * cpu["wall_s"]
    for p in procs:
        PROCS.stop(p)
    return summary("etcd", result, wall, cluster_cpu, cpu["client"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--managers", type=int, default=3)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--no-etcd", action="store_true", help="do not run etcd beside it")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = p.parse_args(argv)
    check_binaries()
    install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="swarmbench-writes-"))
    rows: list[dict[str, Any]] = []
    try:
        log(f"swarmd: {args.managers} managers, {args.clients} clients, {args.seconds:.0f} s")
        rows.append(swarmd_run(tmp, args.managers, args.clients, args.seconds))
        if not args.no_etcd:
            log(f"etcd: {args.managers} members, {args.clients} clients, {args.seconds:.0f} s")
            etcd = etcd_run(tmp, args.managers, args.clients, args.seconds)
            if etcd is not None:
                rows.append(etcd)
    finally:
        PROCS.stop_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"managers": args.managers, "clients": args.clients, "results": rows}, indent=2))
    else:
        table = [("system", "writes/s", "p50 ms", "p99 ms", "cluster CPU ms/write", "errors", "client CPU %")]
        table += [(r["system"], f"{r['writes_per_s']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                   f"{r['cpu_ms_per_write']:.2f}", str(r["errors"]), f"{r['client_cpu_pct']:.0f}") for r in rows]
        print(render_table(table))
        if len(rows) == 2 and rows[1]["writes_per_s"]:
            print(f"\nswarmd / etcd throughput: {rows[0]['writes_per_s'] / rows[1]['writes_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
