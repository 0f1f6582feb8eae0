#!/usr/bin/env python3
"""The memory floor of a mutual-TLS gRPC connection in this Python gRPC, without swarmd.

    .venv/bin/python bench/grpc_conn_memory.py --conns 1000 [--json]

A bare ``grpc.aio`` server (no interceptors, no store) with the TLS setup a manager uses
(mutual TLS, ECDSA P-256 certificates) takes ``--conns`` client connections from a child
process, each holding one server-streaming call open as a node's session does. The server's
VmRSS before and after, divided by the connections, is what one session costs gRPC itself:
the floor under ``load_sessions.py``'s per-node memory. Also measured: the same with unary
calls only (a connection without a held stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swarmd.ca import ids, pki  # noqa: E402
from datetime import timedelta  # noqa: E402


def _issue(root: tuple[bytes, bytes], cn: str, role: str, cluster: str) -> tuple[bytes, bytes]:
    key = pki.generate_key()
    cert = pki.sign_node_certificate(root[0], root[1], pki.make_csr(key), cn, cluster, role, timedelta(hours=1))
    return cert, pki.key_to_pem(key)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _server(conn: Any, root: tuple[bytes, bytes], cluster: str) -> None:
    async def hold(request: bytes, context: Any) -> Any:
        yield b"hello"
        await asyncio.Event().wait()

    async def unary(request: bytes, context: Any) -> bytes:
        return b"ok"

    class Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            if details.method == "/b.B/Hold":
                return grpc.unary_stream_rpc_method_handler(hold)
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


def _clients(conn: Any, port: int, n: int, hold: bool, root: tuple[bytes, bytes], cluster: str) -> None:
    async def main() -> None:
        cert, key = _issue(root, ids.new_id(), pki.WORKER_ROLE, cluster)
        creds = grpc.ssl_channel_credentials(root[0], key, cert)
        kept = []
        for _ in range(n):
            ch = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[
                ("grpc.ssl_target_name_override", "swarm-manager"), ("grpc.use_local_subchannel_pool", 1)])
            if hold:
                call = ch.unary_stream("/b.B/Hold")(b"x")
                await call.read()
                kept.append((ch, call))
            else:
                await ch.unary_unary("/b.B/Unary")(b"x")
                kept.append((ch, None))
        conn.send("up")
        await asyncio.Event().wait()

    asyncio.run(main())


def measure(n: int, hold: bool) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    root = pki.create_root_ca()
    cluster = ids.new_id()
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_server, args=(child, root, cluster), daemon=True)
    server.start()
    port = parent.recv()
    assert server.pid is not None
    before = _rss_kib(server.pid)
    cparent, cchild = ctx.Pipe()
    clients = ctx.Process(target=_clients, args=(cchild, port, n, hold, root, cluster), daemon=True)
    clients.start()
    if not cparent.poll(300) or cparent.recv() != "up":
        raise SystemExit("the clients did not connect in time")
    after = _rss_kib(server.pid)
    clients.kill()
    server.kill()
    return {"conns": n, "held_stream": hold, "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
            "kib_per_conn": (after - before) / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(args.conns, True), measure(args.conns, False)]
    if args.json:
        json.dump({"grpc": grpc.__version__, "cpus": os.cpu_count(), "runs": rows}, sys.stdout, indent=2)
        print()
        return 0
    print(f"grpc {grpc.__version__}: a bare grpc.aio server with mutual TLS, {args.conns} connections")
    for r in rows:
        what = "with a held server stream" if r["held_stream"] else "unary calls only"
        print(f"  {what:28} {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} MiB: "
              f"{r['kib_per_conn']:.0f} KiB per connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
