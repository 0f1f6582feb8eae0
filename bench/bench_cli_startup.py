#!/usr/bin/env python3
"""swarmctl's start-up cost: what every user command and every test pays before any RPC.

    .venv/bin/python bench/bench_cli_startup.py               # 10 runs per row, table
    .venv/bin/python bench/bench_cli_startup.py --runs 20 --json
    .venv/bin/python bench/bench_cli_startup.py --compare /other/tree/.venv/bin/python

Rows (a fresh process each run, one warm-up run first, then medians of its wall time and of its
CPU time, user + system; on a busy host the CPU time is the steadier of the two):
- ``python -c pass``: the interpreter's floor;
- ``import swarmctl.main``: the CLI's imports alone;
- ``swarmctl --help`` and ``swarmctl --version``: no daemon, no connection;
- ``swarmctl version`` against a socket that does not exist: the client half is printed, then
  the connection fails (exit 1); this row pays for gRPC;
- ``-X importtime``: the interpreter's own count of the cumulative import time of
  ``swarmctl.main`` (no process start-up in it, wall time), and which heavy libraries it loaded.

Only the standard library is used here, so any tree's interpreter can be measured. Every
process runs in an empty temp dir (``python -c`` would otherwise import the ``swarmctl`` of the
current directory, not the measured tree's). Nothing is started but short-lived CLI processes;
no daemon runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("grpc", "google.protobuf", "cryptography")
IMPORTTIME = "-X importtime swarmctl.main"


def timed(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def importtime(python: str, env: dict[str, str], cwd: str) -> tuple[float, list[str]]:
    """Cumulative import time of swarmctl.main in seconds, and the heavy libraries loaded."""
    proc = subprocess.run([python, "-X", "importtime", "-c", "import swarmctl.main"],
                          capture_output=True, text=True, env=env, cwd=cwd, check=True)
    total: float | None = None
    loaded: set[str] = set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        name = name.strip()
        if name == "swarmctl.main":
            total = int(cumulative) / 1e6
        if name in HEAVY:
            loaded.add(name)
    if total is None:
        raise SystemExit(f"no swarmctl.main line in -X importtime output:\n{proc.stderr[-2000:]}")
    return total, sorted(loaded)


def rows_for(python: str, absent: str) -> dict[str, list[str]]:
    swarmctl = str(Path(python).parent / "swarmctl")
    if not os.access(swarmctl, os.X_OK):
        raise SystemExit(f"{swarmctl} not found: pass the project's virtualenv interpreter")
    return {
        "python -c pass": [python, "-c", "pass"],
        "import swarmctl.main": [python, "-c", "import swarmctl.main"],
        "swarmctl --help": [swarmctl, "--help"],
        "swarmctl --version": [swarmctl, "--version"],
        "swarmctl version (no daemon)": [swarmctl, "-H", absent, "version"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per row (default 10)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter of the tree to measure; swarmctl is taken from its bin/")
    ap.add_argument("--compare", metavar="PYTHON",
                    help="a second tree's interpreter (e.g. a checkout before a change), measured in "
                         "alternation with the first so that load hits both alike")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args()

    pythons = [args.python] + ([args.compare] if args.compare else [])
    env = {k: v for k, v in os.environ.items() if k != "SWARMCTL_HOST"}
    samples: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    loaded: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="swarmctl-startup-") as tmp:
        rows = {python: rows_for(python, f"unix://{tmp}/absent.sock") for python in pythons}
        for python in pythons:
            samples[python] = {name: [] for name in [*rows[python], IMPORTTIME]}
            cpu[python] = {name: [] for name in rows[python]}
            for argv in rows[python].values():
                timed(argv, env, tmp)  # warm-up: page cache, .pyc files
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
            for python in pythons:  # alternated, so a burst of load hits every tree and row
                for name, argv in rows[python].items():
                    wall, used = timed(argv, env, tmp)
                    samples[python][name].append(wall)
                    cpu[python][name].append(used)
                seconds, loaded[python] = importtime(python, env, tmp)
                samples[python][IMPORTTIME].append(seconds)

    medians = {p: {name: statistics.median(v) for name, v in rows_.items()} for p, rows_ in samples.items()}
    if args.json:
        json.dump({"runs": args.runs, "loadavg": os.getloadavg(), "trees": {
            p: {"heavy_modules_loaded_by_import": loaded[p], "median_s": medians[p], "samples_s": samples[p],
                "cpu_median_s": {name: statistics.median(v) for name, v in cpu[p].items()}, "cpu_samples_s": cpu[p]}
            for p in pythons}}, sys.stdout, indent=2)
        print()
        return
    print(f"{args.runs} runs, load average {os.getloadavg()[0]:.2f}; medians of wall time (min-max) "
          "and of CPU time (user + system)")
    for i, python in enumerate(pythons):
        print(f"  [{i + 1}] {python}")
    print(f"{'':30}" + "".join(f"{f'[{i + 1}] wall':>22}{'cpu':>10}" for i in range(len(pythons))))
    for name in samples[pythons[0]]:
        line = f"{name:30}"
        for p in pythons:
            v = samples[p][name]
            line += f"{statistics.median(v) * 1e3:7.1f} ms ({min(v) * 1e3:4.0f}-{max(v) * 1e3:4.0f})".rjust(22)
            line += (f"{statistics.median(cpu[p][name]) * 1e3:7.1f} ms" if name in cpu[p] else "").rjust(10)
        print(line)
    for i, python in enumerate(pythons):
        print(f"[{i + 1}] heavy libraries loaded by 'import swarmctl.main': {', '.join(loaded[python]) or 'none'}")


if __name__ == "__main__":
    main()
