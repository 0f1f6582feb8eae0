#!/usr/bin/env python3
"""Services speed, side by side with Docker Engine's swarm on this machine, in one run.

    .venv/bin/python bench/bench_services.py                 # 5 rounds, both sides, table
    .venv/bin/python bench/bench_services.py --rounds 3 --json
    .venv/bin/python bench/bench_services.py --only ours     # no Docker (its anchors are the reference)

Each side is 1 manager + 2 workers: three dockerd in network namespaces of a lab (netlab.py,
dockerlab.py), three real swarmd on loopback addresses (clusterlib.py). The timed command is the
real CLI (``docker service ...`` / ``swarmctl service ...``); its end is the first poll (every
20 ms, over each manager's API socket: Engine API /tasks, Control.ListTasks) that sees the
condition. The sides alternate within every round (and swap who goes first each round) so that
the machine's drift hits both alike. Scenarios:

  create   ``service create -d --replicas 10`` -> 10 tasks running            (Docker anchor 1.01 s)
  scale    ``service scale -d NAME=0`` (``--stop-grace-period 1s``) -> no task running   (2.64 s)
  drain    ``node update --availability drain`` of a worker (6 replicas) -> 6 running,
           none on it                                                                   (2.71 s)
  create50 ours only: 50 replicas -> all running (target <= 3 s)

Target for create/scale/drain: ours <= 0.5 x Docker's median of the same run (the anchor from
the recorded sessions when Docker does not run). Needs root for the Docker side; every process
started is stopped by PID, the lab's namespaces are deleted, also on errors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterlib import (PROCS, SWARMCTL, BenchError, Daemon, check_binaries, clean_up,  # noqa: E402
                        control_stub, install_signal_handlers, kill_processes_naming, log, render_table)
from dockerlab import DOCKERD, IMAGE, DockerSwarm  # noqa: E402
from netlab import Lab  # noqa: E402
from swarmd.api.swarm.v1 import services_pb2 as spb  # noqa: E402

POLL = 0.020
POLL_RETRY = 10.0
CONVERGE_TIMEOUT = 60.0      # a scenario that does not reach its condition by then fails the run
EXTRA_TIMEOUT = 20.0         # a secondary condition may be missed: reported as not reached
GRACE = "1s"
DRAIN_REPLICAS = 6
TERMINAL = {"complete", "shutdown", "failed", "rejected", "remove", "orphaned"}

PROGRAMS = {
    # Both sides run the same script under their own sh (busybox in Docker's image, the host's
    # /bin/sh for ours): with the trap the task ends on the stop signal; with TERM ignored (as
    # the recorded sessions' `sleep` as a container's PID 1) it ends on SIGKILL after the grace.
    "exit-on-term": 'trap "exit 0" TERM; sleep 100000 & wait',
    "ignore-term": 'trap "" TERM; exec sleep 100000',
}

# scenario -> (Docker's anchor from the recorded sessions, s; ours' bound as a ratio of Docker's
# median, or an absolute bound when there is no Docker side for it)
SCENARIOS: dict[str, tuple[float | None, str]] = {
    "create 10 replicas -> 10 running": (1.01, "ratio"),
    "scale 10 -> 0 -> no task running": (2.64, "ratio"),
    "drain a worker -> tasks running elsewhere": (2.71, "ratio"),
    "create 50 replicas (3 nodes) -> 50 running": (None, "abs"),
}
S_CREATE, S_SCALE, S_DRAIN, S_CREATE50 = SCENARIOS
RATIO_TARGET = 0.5
ABS_TARGET = 3.0
# secondary readings, no target
X_CREATE_CLI = "create: CLI returns"
X_CREATE_DAEMON = "create: from the service's creation in the store"
X_SCALE_DAEMON = "scale: from the service's update in the store"
X_SCALE_GONE = "scale: tasks deleted (service ps empty)"
X_DRAIN_STOPPED = "drain: drained node has no task running"


@dataclass(frozen=True)
class TaskRow:
    state: str
    desired: str
    node: str


def running(rows: list[TaskRow]) -> list[TaskRow]:
    return [t for t in rows if t.state == "running" and t.desired == "running"]


class Side:
    name = ""
    workers: list[str]           # node IDs of the two workers

    def cli(self, *args: str) -> list[str]:
        raise NotImplementedError

    def program(self, script: str) -> list[str]:
        raise NotImplementedError

    def tasks(self, service: str) -> list[TaskRow]:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def stamps(self, service: str) -> tuple[float, float]:
        """The service's (created, updated) times in the manager's store, as Unix times."""
        raise NotImplementedError

    def idle(self) -> bool:
        """Nothing of a removed service is left running (Docker: no container at all)."""
        return True

    def run(self, *args: str) -> None:
        r = subprocess.run(self.cli(*args), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise BenchError(f"{self.name}: {' '.join(args[:3])}: {r.stderr.strip()[:300]}")


class Ours(Side):
    name = "ours"

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "ours"
        self.manager = Daemon(self.root, "mgr")
        self.nodes = [self.manager, Daemon(self.root, "node2"), Daemon(self.root, "node3")]
        self.channel: grpc.Channel | None = None

    def start(self) -> None:
        for d in self.nodes:
            d.start()
        for d in self.nodes:
            d.wait_ready()
        self.manager.init()
        token = self.manager.token("worker")
        for d in self.nodes[1:]:
            d.join(token, self.manager)
        self.workers = [d.info().node_id for d in self.nodes[1:]]
        self.channel, self.stub = control_stub(self.manager.sock)
        wait_for(lambda: sum(r.get("Status") == "Ready" for r in self.manager.node_rows()) == 3, 30.0,
                 "ours: 3 nodes Ready")

    def cli(self, *args: str) -> list[str]:
        return [str(SWARMCTL), "-H", f"unix://{self.manager.sock}", *args]

    def program(self, script: str) -> list[str]:
        return ["/bin/sh", "-c", script]

    def tasks(self, service: str) -> list[TaskRow]:
        """The service's tasks (none once it is gone); a refusal of a busy manager is asked
        again for up to POLL_RETRY seconds, then ends the run."""
        deadline = time.perf_counter() + POLL_RETRY
        while True:
            try:
                resp = self.stub.ListTasks(spb.ListTasksRequest(services=[service]), timeout=5.0)
                return [TaskRow(t.status.state, t.desired_state, t.node_id) for t in resp.tasks]
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return []
                if time.perf_counter() > deadline:
                    raise BenchError(f"ours: ListTasks {service}: {e.code().name}: {e.details()}") from None
                time.sleep(POLL)

    def stamps(self, service: str) -> tuple[float, float]:
        svc = self.stub.GetService(spb.GetServiceRequest(ref=service), timeout=5.0).service
        return unix_time(svc.created_at), unix_time(svc.updated_at)

    def stop(self) -> None:
        """Leaving stops a node's tasks (they outlive a stopped daemon otherwise)."""
        if self.channel is not None:
            self.channel.close()
        for d in reversed(self.nodes):
            if d.proc is not None and d.proc.poll() is None:
                d.ctl("leave", "--force", check=False)
            d.stop()
        kill_processes_naming(self.root)


class Docker(Side):
    name = "docker"

    def __init__(self, tmp: Path) -> None:
        self.lab = Lab("bsv", 3, "10.207.0")
        self.swarm = DockerSwarm(self.lab, [1, 2, 3], tmp / "docker")

    def start(self) -> None:
        self.lab.__enter__()
        self.swarm.start()
        self.workers = [e.node_id for e in self.swarm.engines[1:]]
        m = self.swarm.manager
        wait_for(lambda: sum(n["Status"]["State"] == "ready" for n in m.get("/nodes")) == 3, 30.0,
                 "docker: 3 nodes ready")

    def cli(self, *args: str) -> list[str]:
        return self.swarm.manager.cli(*args)

    def program(self, script: str) -> list[str]:
        return [IMAGE, "sh", "-c", script]

    def tasks(self, service: str) -> list[TaskRow]:
        return [TaskRow(t["Status"]["State"], t["DesiredState"], t.get("NodeID", ""))
                for t in self.swarm.manager.tasks(service)]

    def stamps(self, service: str) -> tuple[float, float]:
        svc = self.swarm.manager.get(f"/services/{service}")
        return unix_time(svc["CreatedAt"]), unix_time(svc["UpdatedAt"])

    def idle(self) -> bool:
        return all(e.containers() == 0 for e in self.swarm.engines)

    def stop(self) -> None:
        try:
            self.swarm.stop()
        finally:
            self.lab.down()


def unix_time(rfc3339: str) -> float:
    """An RFC 3339 UTC time with up to nanoseconds (both daemons' format) as a Unix time."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", rfc3339)
    if m is None:
        raise BenchError(f"unexpected time format: {rfc3339!r}")
    whole = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return whole.timestamp() + float("0." + (m.group(2) or "0"))


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise BenchError(f"{what}: not reached after {timeout:.0f} s")
        time.sleep(POLL)
    return time.perf_counter() - t0


def timed(side: Side, args: list[str], service: str, primary: Callable[[list[TaskRow]], bool],
          secondary: Callable[[list[TaskRow]], bool] | None = None) -> tuple[float, float, float | None, float]:
    """(seconds to the primary condition, to the CLI's exit, to the secondary or None), all from
    the CLI's start, and the Unix time of the primary; the CLI must exit 0."""
    err = tempfile.TemporaryFile()
    wall0 = time.time()
    t0 = time.perf_counter()
    proc = PROCS.spawn(side.cli(*args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    t_cli: float | None = None
    t_main: float | None = None
    t_extra: float | None = None
    try:
        while True:
            now = time.perf_counter() - t0
            if t_cli is None and proc.poll() is not None:
                t_cli = now
                if proc.returncode != 0:
                    err.seek(0)
                    raise BenchError(f"{side.name}: {' '.join(args[:4])} exited {proc.returncode}: "
                                     f"{err.read().decode(errors='replace').strip()[:300]}")
            rows = side.tasks(service)
            now = time.perf_counter() - t0
            if t_main is None and primary(rows):
                t_main = now
            if secondary is not None and t_extra is None and secondary(rows):
                t_extra = now
            done_extra = secondary is None or t_extra is not None or now > EXTRA_TIMEOUT
            if t_cli is not None and t_main is not None and done_extra:
                return t_main, t_cli, t_extra, wall0 + t_main
            if now > CONVERGE_TIMEOUT:
                raise BenchError(f"{side.name}: {' '.join(args[:4])}: not converged after {CONVERGE_TIMEOUT:.0f} s "
                                 f"({len(running(rows))} of {len(rows)} tasks running)")
            time.sleep(POLL)
    finally:
        if proc.poll() is None:
            PROCS.stop(proc, grace=1.0)
        PROCS.forget(proc)
        err.close()


def remove(side: Side, service: str) -> None:
    side.run("service", "rm", service)
    wait_for(lambda: not side.tasks(service) and side.idle(), 60.0, f"{side.name}: {service} removed")


def create_args(side: Side, service: str, replicas: int, script: str, detach: bool = True) -> list[str]:
    return ["service", "create", *(["-d"] if detach else []), "--name", service, "--replicas", str(replicas),
            "--stop-grace-period", GRACE, *side.program(script)]


def round_create_scale(side: Side, res: dict[str, list[float]], script: str, i: int) -> None:
    name = f"sc{i}"
    t, t_cli, _, at = timed(side, create_args(side, name, 10, script), name, lambda rows: len(running(rows)) == 10)
    res.setdefault(S_CREATE, []).append(t)
    res.setdefault(X_CREATE_CLI, []).append(t_cli)
    res.setdefault(X_CREATE_DAEMON, []).append(at - side.stamps(name)[0])
    t, _, t_gone, at = timed(side, ["service", "scale", "-d", f"{name}=0"], name,
                             lambda rows: all(r.state in TERMINAL for r in rows), lambda rows: not rows)
    res.setdefault(S_SCALE, []).append(t)
    res.setdefault(X_SCALE_DAEMON, []).append(at - side.stamps(name)[1])
    if t_gone is not None:
        res.setdefault(X_SCALE_GONE, []).append(t_gone)
    remove(side, name)


def round_drain(side: Side, res: dict[str, list[float]], script: str, i: int) -> None:
    name = f"dr{i}"
    side.run(*create_args(side, name, DRAIN_REPLICAS, script))
    wait_for(lambda: len(running(side.tasks(name))) == DRAIN_REPLICAS, CONVERGE_TIMEOUT, f"{side.name}: {name} running")
    node = side.workers[0]
    if not any(r.node == node for r in running(side.tasks(name))):
        log(f"{side.name}: no task of {name} on the worker to drain; the round still counts")

    def elsewhere(rows: list[TaskRow]) -> bool:
        up = running(rows)
        return len(up) == DRAIN_REPLICAS and all(r.node != node for r in up)

    def node_clear(rows: list[TaskRow]) -> bool:
        return not any(r.node == node and r.state not in TERMINAL for r in rows)

    t, _, t_clear, _ = timed(side, ["node", "update", "--availability", "drain", node], name, elsewhere, node_clear)
    res.setdefault(S_DRAIN, []).append(t)
    if t_clear is not None:
        res.setdefault(X_DRAIN_STOPPED, []).append(t_clear)
    side.run("node", "update", "--availability", "active", node)
    remove(side, name)


def round_create50(side: Side, res: dict[str, list[float]], script: str, i: int) -> None:
    name = f"c50x{i}"
    t, _, _, _ = timed(side, create_args(side, name, 50, script), name, lambda rows: len(running(rows)) == 50)
    res.setdefault(S_CREATE50, []).append(t)
    remove(side, name)


def med(xs: list[float] | None) -> float | None:
    return statistics.median(xs) if xs else None


def summarise(res: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, (anchor, kind) in SCENARIOS.items():
        ours, docker = med(res.get("ours", {}).get(name)), med(res.get("docker", {}).get(name))
        if kind == "ratio":
            ref = docker if docker is not None else anchor
            assert ref is not None
            bound = RATIO_TARGET * ref
            target = f"<= {RATIO_TARGET:g} x {'docker' if docker is not None else f'anchor {anchor:g} s'}"
        else:
            bound, target = ABS_TARGET, f"<= {ABS_TARGET:g} s"
        ratio = ours / docker if ours is not None and docker else None
        status = None if ours is None else ("PASS" if ours <= bound else "MISS")
        out[name] = {"ours_median_s": ours, "docker_median_s": docker, "docker_anchor_s": anchor,
                     "ratio": ratio, "target": target, "bound_s": bound, "status": status}
    for name in (X_CREATE_CLI, X_CREATE_DAEMON, X_SCALE_DAEMON, X_SCALE_GONE, X_DRAIN_STOPPED):
        ours, docker = med(res.get("ours", {}).get(name)), med(res.get("docker", {}).get(name))
        out[name] = {"ours_median_s": ours, "docker_median_s": docker, "docker_anchor_s": None,
                     "ratio": ours / docker if ours is not None and docker else None, "target": None,
                     "bound_s": None, "status": None}
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    def s(v: float | None, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    rows = [("scenario", "unit", "docker", "ours", "ours/docker", "target", "result")]
    for name, m in summary.items():
        rows.append((name, "s", s(m["docker_median_s"]), s(m["ours_median_s"]), s(m["ratio"], ".2f"),
                     m["target"] or "-", m["status"] or "-"))
    return render_table(rows)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=["ours", "docker"])
    ap.add_argument("--program", choices=sorted(PROGRAMS), default="exit-on-term",
                    help="the task's script (same on both sides)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon logs)")
    a = ap.parse_args()
    if a.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    install_signal_handlers()
    script = PROGRAMS[a.program]
    tmp = Path(tempfile.mkdtemp(prefix="bench-services-"))
    sides: list[Side] = []
    failed = True
    load_before = loadavg()
    try:
        if a.only != "ours":
            if os.geteuid() != 0 or not shutil.which("nsenter") or not os.access(DOCKERD, os.X_OK):
                log("docker side skipped: needs root, nsenter and dockerd (apt-get install -y docker.io)")
            else:
                docker = Docker(tmp)
                try:
                    docker.start()
                    sides.append(docker)
                except (BenchError, OSError, subprocess.SubprocessError) as e:
                    log(f"docker side skipped: the engines could not start a swarm: {e}")
                    docker.stop()
        if a.only != "docker":
            check_binaries()
            ours = Ours(tmp)
            sides.append(ours)
            ours.start()
        if not sides:
            raise BenchError("no side to run")
        res: dict[str, dict[str, list[float]]] = {s.name: {} for s in sides}
        for i in range(a.rounds):
            order = sides if i % 2 == 0 else sides[::-1]
            for step in (round_create_scale, round_drain):
                for side in order:
                    step(side, res[side.name], script, i)
            for side in order:
                if side.name == "ours":
                    round_create50(side, res[side.name], script, i)
            log(f"round {i + 1}/{a.rounds} done")
        summary = summarise(res)
        failed = False
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        for side in reversed(sides):
            try:
                side.stop()
            except Exception as e:  # clean-up goes on with the other side
                log(f"{side.name}: clean-up: {e}")
        clean_up(tmp, keep=failed or a.keep)
    extra = {"rounds": a.rounds, "program": script, "stop_grace_period": GRACE, "poll_s": POLL,
             "loadavg_before": load_before, "loadavg_after": loadavg(), "nproc": os.cpu_count()}
    if a.json:
        json.dump({**extra, "summary": summary, "samples": res}, sys.stdout, indent=2)
        print()
    else:
        print(table(summary))
        print(f"\nrounds {a.rounds}; task: sh -c '{script}'; --stop-grace-period {GRACE}; "
              f"loadavg {load_before} -> {extra['loadavg_after']} ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
