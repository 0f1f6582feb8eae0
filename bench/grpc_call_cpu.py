#!/usr/bin/env python3
"""The CPU floor of a heartbeat in this Python gRPC, without swarmd.

    .venv/bin/python bench/grpc_call_cpu.py --conns 1000 [--period 5] [--json]

A bare ``grpc.aio`` server (no interceptors, no store) with the TLS setup a manager uses
(mutual TLS, ECDSA P-256) serves ``--conns`` client connections from a child process, each
holding one server stream open as a node's session does. The clients then "heartbeat" every
``--period`` seconds, spread evenly over the period, in one of three ways:

- ``unary``: one unary call per heartbeat (what ``Dispatcher.Heartbeat`` is today);
- ``stream``: one message on a held bidirectional stream, not answered;
- ``idle``: nothing (the connections and their held streams alone).

The server's CPU (utime+stime, all threads) over ``--window`` seconds, per heartbeat, is what
gRPC itself costs a manager for each heartbeat: the floor under ``load_sessions.py``'s manager
CPU. At 10,000 nodes and a 5 s period a manager takes 2,000 heartbeats a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpc_conn_memory import _issue  # noqa: E402
from swarmd.ca import ids, pki  # noqa: E402

MODES = ("unary", "stream", "idle")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server(conn: Any, root: tuple[bytes, bytes], cluster: str) -> None:
    async def hold(request: bytes, context: Any) -> Any:
        yield b"hello"
        await asyncio.Event().wait()

    async def unary(request: bytes, context: Any) -> bytes:
        return b"ok"

    async def beats(requests: Any, context: Any) -> Any:
        async for _ in requests:
            pass
        return b"ok"

    class Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            if details.method == "/b.B/Hold":
                return grpc.unary_stream_rpc_method_handler(hold)
            if details.method == "/b.B/Beats":
                return grpc.stream_unary_rpc_method_handler(beats)
            return grpc.unary_unary_rpc_method_handler(unary)

    async def main() -> None:
        cert, key = _issue(root, ids.new_id(), pki.MANAGER_ROLE, cluster)
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=root[0], require_client_auth=True)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([Handlers()])
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        conn.send(port)
        await server.wait_for_termination()

    asyncio.run(main())


def _clients(conn: Any, port: int, n: int, mode: str, period: float, root: tuple[bytes, bytes], cluster: str) -> None:
    async def main() -> None:
        cert, key = _issue(root, ids.new_id(), pki.WORKER_ROLE, cluster)
        creds = grpc.ssl_channel_credentials(root[0], key, cert)
        beat: list[Any] = []
        for _ in range(n):
            ch = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[
                ("grpc.ssl_target_name_override", "swarm-manager"), ("grpc.use_local_subchannel_pool", 1)])
            session = ch.unary_stream("/b.B/Hold")(b"x")
            await session.read()
            if mode == "unary":
                beat.append((ch, session, ch.unary_unary("/b.B/Unary")))
            elif mode == "stream":
                call = ch.stream_unary("/b.B/Beats")()
                await call.write(b"x")
                beat.append((ch, session, call.write))
            else:
                beat.append((ch, session, None))
        conn.send("up")
        if mode == "idle":
            await asyncio.Event().wait()
        start, rounds = time.monotonic(), 0
        while True:
            for i, (_, _, send) in enumerate(beat):
                delay = start + (rounds + i / n) * period - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                asyncio.ensure_future(send(b"x"))
            rounds += 1

    asyncio.run(main())


def measure(n: int, mode: str, period: float, window: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    root = pki.create_root_ca()
    cluster = ids.new_id()
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_server, args=(child, root, cluster), daemon=True)
    server.start()
    port = parent.recv()
    assert server.pid is not None
    cparent, cchild = ctx.Pipe()
    clients = ctx.Process(target=_clients, args=(cchild, port, n, mode, period, root, cluster), daemon=True)
    clients.start()
    try:
        if not cparent.poll(300) or cparent.recv() != "up":
            raise SystemExit("the clients did not connect in time")
        time.sleep(period)  # one whole period of heartbeats before the window
        before = _cpu_seconds(server.pid)
        time.sleep(window)
        used = _cpu_seconds(server.pid) - before
    finally:
        clients.kill()
        server.kill()
    rate = 0.0 if mode == "idle" else n / period
    return {"conns": n, "mode": mode, "heartbeats_per_s": rate, "server_cpu_pct": 100 * used / window,
            "cpu_ms_per_heartbeat": (1000 * used / (window * rate)) if rate else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--period", type=float, default=5.0, help="heartbeat period in seconds (default 5)")
    ap.add_argument("--window", type=float, default=15.0, help="CPU measurement window (default 15 s)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: unary,stream,idle")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes takes {', '.join(MODES)}")
    rows = [measure(args.conns, m, args.period, args.window) for m in modes]
    if args.json:
        json.dump({"grpc": grpc.__version__, "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "runs": rows},
                  sys.stdout, indent=2)
        print()
        return 0
    print(f"grpc {grpc.__version__}: a bare grpc.aio server with mutual TLS, {args.conns} connections, "
          f"heartbeats every {args.period:g} s")
    for r in rows:
        per = f"{r['cpu_ms_per_heartbeat']:.3f} ms per heartbeat" if r["cpu_ms_per_heartbeat"] else "-"
        print(f"  {r['mode']:7} {r['server_cpu_pct']:5.1f} % of one core   {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
