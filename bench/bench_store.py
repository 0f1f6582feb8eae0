"""What one op costs the state machine's ``apply`` as the store grows: 100, 1,000, 10,000 nodes.

    .venv/bin/python bench/bench_store.py                    # the tree the venv imports
    PYTHONPATH=/tmp/swarmd-old .venv/bin/python bench/bench_store.py   # another tree (e.g. main)
    .venv/bin/python bench/bench_store.py --nodes 100 1000 --ops 300 --json

For each size the bench loads a state of N nodes and ``--networks`` networks into a fresh
``StateMachine`` (``load``, as a snapshot would) and times ``apply`` alone, op by op, with no
Raft, journal or gRPC around it: ``add_node`` (a new node with its own key), ``set_node_status``
(an existing node, alternating ready/down) and ``create_network`` (each new network removed
again, untimed, so every create meets ``--networks`` networks). Each op is timed on its own
(``perf_counter_ns``) and the median is reported, with p90.

``create_network`` is timed as the leader proposes it in the tree under test: a tree whose
store picks subnets and VXLAN IDs inside ``apply`` (no ``swarmd.manager.allocator``) gets the
op without them, one whose leader picks them first gets the op carrying them; the leader's
pick is timed apart (``allocator plan``) for the trees that have it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import swarmd
from swarmd.store.machine import StateMachine, encode_op

HAS_ALLOCATOR = importlib.util.find_spec("swarmd.manager.allocator") is not None
NOW = "2026-01-01T00:00:00.000000000Z"


def node(i: int) -> dict[str, Any]:
    node_id = f"node{i:021d}"
    return {"id": node_id, "created_at": NOW, "updated_at": NOW, "role": "worker", "availability": "active",
            "labels": {}, "hostname": f"host-{i}", "os": "linux", "architecture": "x86_64",
            "nano_cpus": 4 * 10**9, "memory_bytes": 8 << 30, "engine_version": "0.1.0", "state": "ready",
            "addr": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "message": "", "manager": None,
            "public_key_sha256": f"{i:064x}", "version": 1}


def network(i: int) -> dict[str, Any]:
    return {"id": f"net{i:022d}", "name": f"net-{i}", "created_at": NOW, "updated_at": NOW, "driver": "overlay",
            "ingress": i == 0, "internal": False, "attachable": False,
            "ipam": [{"subnet": f"10.0.{i}.0/24", "gateway": f"10.0.{i}.1"}], "vxlan_ids": [4096 + i],
            "labels": {}, "options": {}, "version": 1}


def state(nodes: int, networks: int) -> dict[str, Any]:
    cluster = {"id": "c" * 25, "name": "default", "created_at": NOW, "updated_at": NOW, "version": 1,
               "spec": {"dispatcher_heartbeat_ns": 5 * 10**9}, "root_ca": {"cert": "", "key": ""},
               "join_tokens": {"worker": "w", "manager": "m"}, "default_addr_pool": ["10.0.0.0/8"],
               "subnet_size": 24, "data_path_port": 4789, "force_rotate": 0, "unlock_key": ""}
    return {"index": 1, "cluster": cluster, "nodes": {n["id"]: n for n in map(node, range(nodes))},
            "networks": {n["id"]: n for n in map(network, range(networks))}}


def apply_ok(machine: StateMachine, op: bytes) -> None:
    """Every op must succeed: a refusal would time a different path."""
    result = machine.apply(op)
    if not result.get("ok"):
        raise SystemExit(f"op refused: {result}")


def time_ops(machine: StateMachine, ops: list[bytes]) -> list[float]:
    """Microseconds per op."""
    samples = []
    gc.collect()
    for op in ops:
        start = time.perf_counter_ns()
        apply_ok(machine, op)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def time_network_creates(machine: StateMachine, count: int) -> tuple[list[float], list[float]]:
    """Each create_network as the tree's leader proposes it, removed again (untimed) so every
    create meets the same number of networks; and the leader's planning cost (its read of the
    state and its choice) when the tree has one."""
    apply_us: list[float] = []
    plan_us: list[float] = []
    gc.collect()
    for i in range(count):
        fields: dict[str, Any] = {"id": f"new{i:022d}", "name": f"new-{i}", "ingress": False, "internal": False,
                                  "attachable": False, "labels": {}, "options": {}, "now": NOW}
        if HAS_ALLOCATOR:
            from swarmd.manager.allocator import networks as planner
            start = time.perf_counter_ns()
            in_use = machine.read(lambda s: planner.InUse.of(s["networks"], s["cluster"]))
            choice = planner.choose(in_use, fields["name"], [planner.Request()])
            plan_us.append((time.perf_counter_ns() - start) / 1000)
            fields.update(choice.op_fields())
        op = encode_op("create_network", **fields)
        start = time.perf_counter_ns()
        apply_ok(machine, op)
        apply_us.append((time.perf_counter_ns() - start) / 1000)
        apply_ok(machine, encode_op("remove_network", id=fields["id"]))
    return apply_us, plan_us


def bench(nodes: int, networks: int, count: int) -> dict[str, Any]:
    machine = StateMachine()
    machine.load(state(nodes, networks))
    adds = [encode_op("add_node", node=node(nodes + i)) for i in range(count)]
    statuses = [encode_op("set_node_status", id=node(i * 7919 % nodes)["id"], now=NOW,
                          state="down" if i % 2 else "ready") for i in range(count)]
    results: dict[str, list[float]] = {"add_node": time_ops(machine, adds),
                                       "set_node_status": time_ops(machine, statuses)}
    results["create_network"], plan_us = time_network_creates(machine, count)
    if plan_us:
        results["allocator plan (leader)"] = plan_us
    return {op: {"median_us": statistics.median(s), "p90_us": sorted(s)[int(len(s) * 0.9)], "samples": len(s)}
            for op, s in results.items()}


def render(rows: dict[int, dict[str, Any]]) -> str:
    ops = list(next(iter(rows.values())))
    sizes = list(rows)
    head = f"{'op (median µs / p90 µs)':<26}" + "".join(f"{f'{n:,} nodes':>22}" for n in sizes)
    lines = [head, "-" * len(head)]
    for op in ops:
        cells = "".join(f"{rows[n][op]['median_us']:>12.1f} / {rows[n][op]['p90_us']:>7.1f}" for n in sizes)
        lines.append(f"{op:<26}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument("--networks", type=int, default=20, help="networks in the store (ingress included)")
    ap.add_argument("--ops", type=int, default=200, help="timed ops of each kind per size")
    ap.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    args = ap.parse_args(argv)
    rows: dict[int, dict[str, Any]] = {}
    for n in args.nodes:
        print(f"{n} nodes ...", file=sys.stderr)
        rows[n] = bench(n, args.networks, args.ops)
    meta = {"tree": swarmd.__file__.rsplit("/swarmd/", 1)[0], "python": sys.version.split()[0],
            "allocator": HAS_ALLOCATOR, "networks": args.networks, "ops": args.ops}
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    else:
        print(f"tree {meta['tree']} (leader allocates: {HAS_ALLOCATOR}), {args.networks} networks, "
              f"{args.ops} ops each")
        print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
