#!/usr/bin/env python3
"""Root CA rotation benchmark: `swarmctl ca --rotate` on a small swarm, from the command to the
last node trusting the new root (the command returns only then).

    .venv/bin/python bench/bench_rotation.py              # 5 rounds, 1 manager + 2 workers
    .venv/bin/python bench/bench_rotation.py --workers 5 --rounds 3 --json

Each round builds a fresh swarm in a private temp dir (each daemon on its own 127.77.N.M address),
rotates once with the default progress output (not a terminal) and tears it down; every process
is stopped by PID, also on errors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterlib import (Daemon, Metrics, check_binaries, clean_up, install_signal_handlers, log,  # noqa: E402
                        report, start_all)

M_ROTATE = "ca --rotate (until every node trusts the new root)"
M_NODES = "nodes rotated"


def one_round(tmp: Path, r: int, workers: int) -> tuple[float, int]:
    manager = Daemon(tmp, f"r{r}m")
    nodes = [Daemon(tmp, f"r{r}w{i}") for i in range(workers)]
    start_all([manager, *nodes])
    manager.init()
    token = manager.token("worker")
    for node in nodes:
        node.join(token, manager)
    before = manager.ctl("ca")[1]
    elapsed, out, _, _ = manager.ctl("ca", "--rotate")
    after = manager.ctl("ca")[1]
    if after == before or not out.endswith(after):
        raise SystemExit("the rotation did not end with a new root")
    total = workers + 1
    if f"] {total}/{total} nodes" not in out:
        raise SystemExit(f"not every node rotated:\n{out}")
    for d in (manager, *nodes):
        d.stop()
    return elapsed, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    args = ap.parse_args()
    check_binaries()
    install_signal_handlers()
    m = Metrics()
    m.declare(M_ROTATE, "s")
    m.declare(M_NODES, "-")
    tmp = Path(tempfile.mkdtemp(prefix="swarmd-bench-rotation-"))
    try:
        for r in range(args.rounds):
            elapsed, total = one_round(tmp, r, args.workers)
            m.add(M_ROTATE, elapsed)
            m.add(M_NODES, total)
            log(f"round {r + 1}/{args.rounds}: {total} nodes rotated in {elapsed:.3f}s")
    finally:
        clean_up(tmp, keep=False)
    report(m, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
