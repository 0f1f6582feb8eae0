#!/usr/bin/env python3
"""swarmctl's start-up cost: what every user command and every test pays before any RPC.

    .venv/bin/python bench/bench_cli_startup.py               # 10 runs per row, table
    .venv/bin/python bench/bench_cli_startup.py --runs 20 --json
    .venv/bin/python bench/bench_cli_startup.py --python /other/tree/.venv/bin/python

Rows (wall time of a fresh process each run, one warm-up run first, then medians):
- ``python -c pass``: the interpreter's floor;
- ``import swarmctl.main``: the CLI's imports alone;
- ``swarmctl --help`` and ``swarmctl --version``: no daemon, no connection;
- ``swarmctl version`` against a socket that does not exist: the client half is printed, then
  the connection fails (exit 1); this row pays for gRPC;
- ``-X importtime``: the interpreter's own count of the cumulative import time of
  ``swarmctl.main`` (no process start-up in it), and which heavy libraries it loaded.

Only the standard library is used here, so any tree's interpreter can be measured. Nothing
is started but short-lived CLI processes; no daemon runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("grpc", "google.protobuf", "cryptography")


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - t0


def importtime(python: str, env: dict[str, str]) -> tuple[float, list[str]]:
    """Cumulative import time of swarmctl.main in seconds, and the heavy libraries loaded."""
    proc = subprocess.run([python, "-X", "importtime", "-c", "import swarmctl.main"],
                          capture_output=True, text=True, env=env, check=True)
    total, loaded = None, set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        name = name.strip()
        if name == "swarmctl.main":
            total = int(cumulative) / 1e6
        loaded.update(h for h in HEAVY if name == h)
    if total is None:
        raise SystemExit(f"no swarmctl.main line in -X importtime output:\n{proc.stderr[-2000:]}")
    return total, sorted(loaded)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per row (default 10)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter of the tree to measure; swarmctl is taken from its bin/")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args()

    python = args.python
    swarmctl = str(Path(python).parent / "swarmctl")
    if not os.access(swarmctl, os.X_OK):
        raise SystemExit(f"{swarmctl} not found: pass the project's virtualenv interpreter")
    env = {k: v for k, v in os.environ.items() if k != "SWARMCTL_HOST"}
    with tempfile.TemporaryDirectory(prefix="swarmctl-startup-") as tmp:
        absent = f"unix://{tmp}/absent.sock"
        rows = {
            "python -c pass": [python, "-c", "pass"],
            "import swarmctl.main": [python, "-c", "import swarmctl.main"],
            "swarmctl --help": [swarmctl, "--help"],
            "swarmctl --version": [swarmctl, "--version"],
            "swarmctl version (no daemon)": [swarmctl, "-H", absent, "version"],
        }
        samples: dict[str, list[float]] = {name: [] for name in rows}
        samples["-X importtime swarmctl.main"] = []
        loaded: list[str] = []
        for name, argv in rows.items():
            timed(argv, env)  # warm-up: page cache, .pyc files
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
            for name, argv in rows.items():  # interleaved, so a burst of load hits every row
                samples[name].append(timed(argv, env))
            seconds, loaded = importtime(python, env)
            samples["-X importtime swarmctl.main"].append(seconds)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    if args.json:
        json.dump({"python": python, "runs": args.runs, "loadavg": os.getloadavg(),
                   "heavy_modules_loaded_by_import": loaded, "median_s": medians, "samples_s": samples},
                  sys.stdout, indent=2)
        print()
        return
    print(f"{python}  ({args.runs} runs, load average {os.getloadavg()[0]:.2f})")
    print(f"{'':32} {'median':>9} {'min':>9} {'max':>9}")
    for name, values in samples.items():
        print(f"{name:32} {medians[name] * 1e3:7.1f}ms {min(values) * 1e3:7.1f}ms {max(values) * 1e3:7.1f}ms")
    print(f"heavy libraries loaded by 'import swarmctl.main': {', '.join(loaded) or 'none'}")


if __name__ == "__main__":
    main()
