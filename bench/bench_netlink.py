#!/usr/bin/env python3
"""Netlink benchmark: pyroute2 against the hand-written rtnetlink and inet_diag readers.

    .venv/bin/python bench/bench_netlink.py                    # table
    .venv/bin/python bench/bench_netlink.py --rounds 5 --json

Measured (medians of wall and CPU time; CPU time hardly moves with other load on the machine;
see bench/README.md):
- import: ``python -X importtime`` of pyroute2, swarmd.ifaces, swarmd.netaddr and swarmctl.main,
  each in a fresh interpreter (cumulative µs of the top-level module);
- init resolution: what ``plan_init`` calls (list_interfaces, then the listen / advertise /
  data-path / local-address resolvers), once in a fresh interpreter after importing pysyncobj
  as the daemon has (the first init, pyroute2's import included) and repeated in one process
  (every later init or join); "before" is ``swarmd/netaddr.py`` as it was when it spoke
  rtnetlink itself, read from git. As root, also inside a private namespace with ``--links``
  veth links (the namespace is deleted afterwards);
- sockdiag: ``sockdiag.list_connections`` with ``--conns`` connections open on one private
  loopback port, against the same lookup written with pyroute2's DiagSocket (the kernel filter
  passed as an INET_DIAG_REQ_BYTECODE attribute), with a new socket per lookup and with one
  socket reused; plus a listener lookup with nothing else open on the port.
Only 127.0.0.0/8 addresses and, in the namespace, 10.200.0.0/16 are used.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarmd import sockdiag  # noqa: E402

OLD_MARKER = "def _netlink_dump"

# Runs in a fresh interpreter: the init-time resolution once, then --repeat times; prints
# (wall, CPU) seconds per run and the RSS the first one added.
RESOLVE = r"""
import importlib.util, json, sys, time
import swarmd.node.runtime  # what the daemon has loaded (pysyncobj, grpc, ...) before its first init
source, repeat = sys.argv[1], int(sys.argv[2])

def rss_kib():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])

if source == "after":
    from swarmd import ifaces, netaddr
    list_interfaces = ifaces.list_interfaces
else:
    spec = importlib.util.spec_from_file_location("netaddr_before", source)
    netaddr = importlib.util.module_from_spec(spec)
    sys.modules["netaddr_before"] = netaddr
    spec.loader.exec_module(netaddr)
    list_interfaces = netaddr.list_interfaces

def plan():
    interfaces = list_interfaces()
    ip, port = netaddr.resolve_listen_addr("127.0.0.1:2377", interfaces)
    adv, _ = netaddr.resolve_advertise_addr("lo", port, interfaces)
    netaddr.resolve_data_path_addr("", interfaces)
    netaddr.local_addr(ip, adv, interfaces)
    return len(interfaces)

def timed():
    wall, cpu = time.perf_counter(), time.process_time()
    links = plan()
    return (time.perf_counter() - wall, time.process_time() - cpu), links

rss = rss_kib()
first, links = timed()
rss = rss_kib() - rss
warm = [timed()[0] for _ in range(repeat)]
print(json.dumps({"first": first, "warm": warm, "links": links, "rss": rss}))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


Sample = tuple[float, float]  # (wall, CPU) seconds
Row = dict[str, float]          # {"wall ms": ..., "CPU ms": ...} or {"value": ...}


def row(samples: list[Sample]) -> Row:
    """Medians in ms. CPU time (this process's user + system) hardly moves with other load on
    the machine; wall time does."""
    return {"wall ms": statistics.median(w for w, _ in samples) * 1000,
            "CPU ms": statistics.median(c for _, c in samples) * 1000}


def python(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*prefix, sys.executable, *args], capture_output=True, text=True, timeout=120,
                         check=False, cwd=ROOT)
    if res.returncode:
        raise SystemExit(f"python {args[0]} {args[1][:40]!r}... failed:\n{res.stderr}")
    return res


# -- import cost --------------------------------------------------------------------------------------

def import_cost(module: str) -> Sample:
    """Import of ``module`` in a fresh interpreter: cumulative wall time from -X importtime, CPU time."""
    code = f"import time\nt = time.process_time()\nimport {module}\nprint(time.process_time() - t)"
    res = python("-X", "importtime", "-c", code)
    for line in reversed(res.stderr.splitlines()):
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1e6, float(res.stdout)
    raise SystemExit(f"no importtime line for {module}")


def bench_imports(rounds: int) -> dict[str, Row]:
    out = {module: row([import_cost(module) for _ in range(rounds)])
           for module in ("pyroute2", "swarmd.ifaces", "swarmd.netaddr", "swarmctl.main")}
    loaded = python("-c", "import sys, swarmctl.main; print('pyroute2' in sys.modules)").stdout.strip()
    out["swarmctl.main loads pyroute2"] = {"value": float(loaded == "True")}
    return out


# -- init-time resolution ------------------------------------------------------------------------------

def old_netaddr(rev: str | None) -> Path:
    """``swarmd/netaddr.py`` at ``rev``, by default just before it stopped speaking rtnetlink itself."""
    if rev is None:
        removed = subprocess.run(["git", "log", "-1", "--format=%H", "-S", OLD_MARKER, "--", "swarmd/netaddr.py"],
                                 capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
        if not removed:
            raise SystemExit("no commit removed the hand-written reader; pass --before REV")
        rev = removed + "^"
    text = subprocess.run(["git", "show", f"{rev}:swarmd/netaddr.py"], capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout
    if OLD_MARKER not in text:
        raise SystemExit(f"swarmd/netaddr.py at {rev} has no hand-written reader")
    path = Path(tempfile.mkdtemp(prefix="bench-netlink-")) / "netaddr_before.py"
    path.write_text(text)
    return path


def bench_resolution(old: Path, rounds: int, repeat: int, prefix: tuple[str, ...] = ()) -> dict[str, Row]:
    out: dict[str, Row] = {}
    for label, source in (("before", str(old)), ("after", "after")):
        firsts: list[Sample] = []
        warms: list[Sample] = []
        rss: list[int] = []
        for _ in range(rounds):
            got = json.loads(python("-c", RESOLVE, source, str(repeat), prefix=prefix).stdout)
            firsts.append(tuple(got["first"]))
            warms.extend(tuple(w) for w in got["warm"])
            rss.append(got["rss"])
            out["links"] = {"value": got["links"]}
        out[f"first init, {label}"] = row(firsts)
        out[f"later init, {label}"] = row(warms)
        out[f"RSS added by the first init, {label} (MiB)"] = {"value": statistics.median(rss) / 1024}
    return out


def bench_resolution_netns(old: Path, rounds: int, repeat: int, links: int) -> dict[str, Row] | None:
    if os.geteuid() != 0:
        log("not root: no namespace run")
        return None
    name = f"benchnl{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        batch = ["link set lo up"]
        for i in range(links // 2):
            batch += [f"link add v{i}a type veth peer name v{i}b",
                      f"addr add 10.200.{i // 250}.{i % 250 + 1}/32 dev v{i}a", f"link set v{i}a up"]
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(batch) + "\n", text=True,
                       check=True, timeout=60)
        return bench_resolution(old, rounds, repeat, prefix=("nsenter", f"--net=/run/netns/{name}"))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


# -- sockdiag ------------------------------------------------------------------------------------------

def pyroute2_lister() -> tuple[Callable[..., list[sockdiag.Connection]], Callable[[], None]]:
    """``list_connections`` for one family written with pyroute2's DiagSocket, for comparison.

    Returns (lookup, close); ``lookup(port, local_ip, known, reuse)`` opens a socket per call
    unless ``reuse``."""
    from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST  # type: ignore[import-untyped]
    from pyroute2.netlink.diag import SOCK_DIAG_BY_FAMILY, DiagSocket, inet_diag_req  # type: ignore[import-untyped]

    class Request(inet_diag_req):  # type: ignore[misc]
        nla_map = (("INET_DIAG_REQ_NONE", "none"), ("INET_DIAG_REQ_BYTECODE", "cdata"))

    shared = DiagSocket()
    shared.bind()

    def dump(ds: Any, port: int, local_ip: str | None, known: set[int]) -> list[sockdiag.Connection]:
        req = Request()
        req["sdiag_family"] = socket.AF_INET
        req["sdiag_protocol"] = socket.IPPROTO_TCP
        req["idiag_states"] = sockdiag._CONNECTIONS
        req["idiag_cookie"] = 0xFFFFFFFFFFFFFFFF
        req["attrs"] = [("INET_DIAG_REQ_BYTECODE", sockdiag._bytecode(port, local_ip, None))]
        out = []
        for msg in ds.nlm_request(req, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP):
            inode = msg["idiag_inode"]
            if inode in known:
                out.append(sockdiag.Connection("", "", 0, inode))
            else:
                out.append(sockdiag.Connection(msg["idiag_src"], msg["idiag_dst"], msg["idiag_dport"], inode))
        return out

    def lookup(port: int, local_ip: str | None, known: set[int], reuse: bool) -> list[sockdiag.Connection]:
        if reuse:
            return dump(shared, port, local_ip, known)
        with DiagSocket() as ds:
            ds.bind()
            return dump(ds, port, local_ip, known)

    return lookup, shared.close


def timed(fn: Callable[[], object], n: int) -> Row:
    out = []
    for _ in range(n):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return row(out)


def bench_sockdiag(conns: int, n: int) -> dict[str, Row]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 2 * conns + 256)), hard))
    ip = "127.0.0.77"
    listener = socket.socket()
    listener.bind((ip, 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    lookup, close = pyroute2_lister()
    socks: list[socket.socket] = []
    out: dict[str, Row] = {}
    try:
        out["listener lookup, hand-written"] = timed(lambda: sockdiag.listener_inodes(port, ip), n)
        out["listener lookup, pyroute2"] = timed(lambda: lookup(port, None, set(), False), n)
        for _ in range(conns):
            client = socket.socket()
            socks.append(client)
            client.connect((ip, port))
            socks.append(listener.accept()[0])
        hand = sockdiag.list_connections(port, (socket.AF_INET,), ip)
        if len(hand) != conns or sorted(hand) != sorted(lookup(port, ip, set(), True)):
            raise SystemExit("the two lookups disagree")
        known = {c.inode for c in hand}
        for label, fn in (
            ("hand-written", lambda: sockdiag.list_connections(port, (socket.AF_INET,), ip)),
            ("pyroute2, new socket", lambda: lookup(port, ip, set(), False)),
            ("pyroute2, socket reused", lambda: lookup(port, ip, set(), True)),
            ("hand-written, all known", lambda: sockdiag.list_connections(port, (socket.AF_INET,), ip, known=known)),
            ("pyroute2, all known", lambda: lookup(port, ip, known, True)),
        ):
            out[f"{conns} connections, {label}"] = timed(fn, n)
    finally:
        close()
        for s in socks:
            s.close()
        listener.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="fresh interpreters per measurement (default 7)")
    ap.add_argument("--repeat", type=int, default=50, help="warm resolutions per interpreter (default 50)")
    ap.add_argument("--conns", type=int, default=2000, help="connections open for sockdiag (default 2000)")
    ap.add_argument("--lookups", type=int, default=21, help="lookups timed per sockdiag row (default 21)")
    ap.add_argument("--links", type=int, default=100, help="veth links in the namespace run (default 100)")
    ap.add_argument("--before", help="git revision of the hand-written netaddr (default: found with git log -S)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    old = old_netaddr(args.before)
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, Row] | None] = {}
    log("import cost ...")
    results["import (ms)"] = bench_imports(args.rounds)
    log("init resolution, this namespace ...")
    results["init resolution, this namespace (ms)"] = bench_resolution(old, args.rounds, args.repeat)
    log(f"init resolution, a namespace with {args.links} links ...")
    results[f"init resolution, {args.links}-link namespace (ms)"] = bench_resolution_netns(
        old, args.rounds, args.repeat, args.links)
    log(f"sockdiag, {args.conns} connections ...")
    results["sockdiag (ms)"] = bench_sockdiag(args.conns, args.lookups)
    old.unlink()
    old.parent.rmdir()
    results["load average (1 min)"] = {"at start": {"value": load_before}, "at end": {"value": os.getloadavg()[0]}}

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'':<50} {'wall ms':>10} {'CPU ms':>10}")
    for section, rows in results.items():
        print(f"\n{section}")
        for key, cols in (rows or {}).items():
            if "value" in cols:
                print(f"  {key:<48} {cols['value']:10.3f}")
            else:
                print(f"  {key:<48} {cols['wall ms']:10.3f} {cols['CPU ms']:10.3f}")


if __name__ == "__main__":
    main()
