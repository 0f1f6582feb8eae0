#!/usr/bin/env python3
"""Dispatch benchmark: how fast assigned tasks run on real worker daemons, and stop.

    .venv/bin/python bench/bench_dispatch.py                       # 50 tasks on 2 workers, 3 rounds
    .venv/bin/python bench/bench_dispatch.py --tasks 10 --workers 1 --json

A manager runs in this process (tests/inproc.py: the daemon's own code, so the bench can write
the tasks into its store as the scheduler would, one ``update_tasks`` op for all of them); the
workers are real ``swarmd`` processes running real ``sleep`` tasks. Measured, per round:

- run: from the assignments' proposal to every task reported ``running`` in the store (the
  session push, the runner's prepare and start, the batched reports and their batched write);
- stop: from the desired state ``shutdown`` (one op for all; stop grace 1 s, ``sleep`` exits on
  SIGTERM) to every task reported ``shutdown``.

Medians over the rounds. Every daemon is stopped and every task killed at the end. Needs root
(tasks run as ``nobody``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarmd.agent.exec.cgroups import Cgroups  # noqa: E402
from tests.harness import Daemon, join  # noqa: E402
from tests.inproc import InProcessManager  # noqa: E402
from tests.integration.test_executor import kill_leftovers  # noqa: E402
from tests.servicelib import raw_spec  # noqa: E402

_ids = itertools.count(1)


def wait_states(manager: InProcessManager, ids: list[str], state: str, timeout: float) -> float:
    started = time.monotonic()

    def done(s: Any) -> bool:
        return all((t := s["tasks"].get(i)) is not None and t["status"]["state"] == state for i in ids)
    if not manager.manager.wait_until(done, timeout):
        raise SystemExit(f"not every task reached {state} within {timeout}s")
    return time.monotonic() - started


def one_round(manager: InProcessManager, node_ids: list[str], tasks: int) -> tuple[float, float]:
    n = next(_ids)
    service_id = f"benchsvc{n:017d}"
    manager.propose("create_service", id=service_id, spec=raw_spec(
        f"bench{n}", replicas=tasks, task_template={"program": "/bin/sleep", "args": ["1000"],
                                                    "stop_grace_period_ns": 10**9}))
    ids = [f"bench{n:04d}t{i:016d}" for i in range(tasks)]
    manager.propose("create_tasks", tasks=[{"id": i, "service_id": service_id, "slot": k + 1}
                                            for k, i in enumerate(ids)])
    started = time.monotonic()
    manager.propose("update_tasks", updates=[{"id": i, "node_id": node_ids[k % len(node_ids)], "status": {
        "state": "assigned", "message": "scheduler assigned task to node"}} for k, i in enumerate(ids)])
    wait_states(manager, ids, "running", 60.0)
    run = time.monotonic() - started
    started = time.monotonic()
    manager.propose("update_tasks", updates=[{"id": i, "desired_state": "shutdown"} for i in ids])
    wait_states(manager, ids, "shutdown", 60.0)
    stop = time.monotonic() - started
    manager.propose("remove_tasks", ids=ids)
    return run, stop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        root = Path(tmp)
        manager = InProcessManager(root).start()
        workers: list[Daemon] = []
        try:
            manager.init()
            for i in range(args.workers):
                w = Daemon(root, f"w{i + 1}")
                workers.append(w)
                w.start()
                join(w, manager)
            node_ids = [w.info().node_id for w in workers]
            results = [one_round(manager, node_ids, args.tasks) for _ in range(args.rounds)]
        finally:
            for d in [*workers, manager]:
                try:
                    d.stop()
                except AssertionError:
                    pass
            for w in workers:
                kill_leftovers(w.state_dir / "executor", Cgroups())
    run = statistics.median(r[0] for r in results)
    stop = statistics.median(r[1] for r in results)
    if args.json:
        print(json.dumps({"tasks": args.tasks, "workers": args.workers, "run_s": run, "stop_s": stop,
                          "rounds": results}))
    else:
        print(f"{args.tasks} tasks on {args.workers} worker(s), median of {args.rounds}: "
              f"assigned -> running {run:.3f} s, shutdown -> stopped {stop:.3f} s")


if __name__ == "__main__":
    main()
