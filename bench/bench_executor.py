#!/usr/bin/env python3
"""Process executor benchmark: what one task's shim costs.

    .venv/bin/python bench/bench_executor.py                 # table
    .venv/bin/python bench/bench_executor.py --tasks 100 --mb 500 --json

Measured:
- start: wall time of ``prepare`` + ``start`` (the shim runs and the program has exec'd) for
  ``--tasks`` tasks running ``sleep``, one after another;
- memory: each live shim's RSS, PSS and private (USS: Private_Clean + Private_Dirty) from
  /proc/PID/smaps_rollup, as medians; private is what each further task adds;
- log throughput: one task writing ``--mb`` MB of 100-byte lines; the shim's CPU time (utime +
  stime) per MB and the wall time, with the default 10 MiB × 3 rotation.
The state dir is a temporary directory; every task is removed at the end (its shim and process
group killed, its cgroup deleted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarmd.agent.exec import logs  # noqa: E402
from swarmd.agent.exec.api import TaskRuntimeSpec  # noqa: E402
from swarmd.agent.exec.cgroups import Cgroups  # noqa: E402
from swarmd.agent.exec.process import ProcessExecutor, ProcessExecutorConfig  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def spec(task_id: str, program: str, *args: str) -> TaskRuntimeSpec:
    return TaskRuntimeSpec(task_id=task_id, service_id="bench", service_name="bench", slot=0, node_id="n",
                           node_hostname="h", program=program, args=args)


def shim_pid(ex: ProcessExecutor, task_id: str) -> int:
    return int(json.loads((ex.task_dir(task_id) / "status.json").read_text())["shim_pid"])


def smaps(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def bench(tasks: int, mb: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
        cgroups = Cgroups(parent=f"swarmd-bench-{os.getpid()}")
        ex = ProcessExecutor(Path(tmp), ProcessExecutorConfig(task_user=None), cgroups)
        ids = [f"b{i:04d}" for i in range(tasks)]
        try:
            starts = []
            for task_id in ids:
                t0 = time.perf_counter()
                ex.prepare(spec(task_id, "sleep", "100000"))
                ex.start(task_id)
                starts.append(time.perf_counter() - t0)
            mem = [smaps(shim_pid(ex, t)) for t in ids]
            result["start_ms_median"] = round(statistics.median(starts) * 1000, 1)
            result["start_ms_max"] = round(max(starts) * 1000, 1)
            result["shim_rss_kib"] = statistics.median(m["Rss"] for m in mem)
            result["shim_pss_kib"] = statistics.median(m["Pss"] for m in mem)
            result["shim_private_kib"] = statistics.median(m["Private_Clean"] + m["Private_Dirty"] for m in mem)
            for task_id in ids:
                ex.remove(task_id)

            gate = Path(tmp, "gate")
            line = "x" * 99
            script = (f"yes {line} | head -c {mb * 1_000_000}; echo done-writing; "
                      f"while [ ! -e {gate} ]; do sleep 0.05; done")
            ex.prepare(spec("blog", "sh", "-c", script))
            t0 = time.perf_counter()
            ex.start("blog")
            pid = shim_pid(ex, "blog")
            newest = ex.task_dir("blog") / logs.LOG_NAME
            while True:
                if newest.exists() and b"done-writing" in newest.read_bytes()[-200:]:
                    break
                time.sleep(0.05)
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(pid)
            after = smaps(pid)
            gate.touch()
            ex.wait("blog", 30)
            result["log_mb"] = mb
            result["log_wall_s"] = round(wall, 2)
            result["log_mb_per_s"] = round(mb / wall, 1)
            result["shim_cpu_ms_per_mb"] = round(cpu * 1000 / mb, 2)
            result["shim_rss_kib_after_logging"] = after["Rss"]
            result["log_files"] = [p.name for p in ex.log_files("blog")]
            result["log_bytes_kept"] = sum(p.stat().st_size for p in ex.log_files("blog"))
        finally:
            for task_id in [*ids, "blog"]:
                ex.remove(task_id)
            for h in cgroups.layout.dirs:
                for base in dict.fromkeys((h.own, h.mountpoint)):
                    try:
                        os.rmdir(os.path.join(base, cgroups.parent_name))
                    except OSError:
                        pass
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = bench(args.tasks, args.mb)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
