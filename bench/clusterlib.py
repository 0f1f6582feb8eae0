"""Shared plumbing of the multi-daemon benches (bench_cluster, load_joins, load_sessions).

Real ``swarmd`` processes, each with a private temp dir (state dir, control socket, log) and
its own loopback address in 127.77.0.0/16 (never 0.0.0.0, never anything off this machine).
Every process started here is tracked by PID and stopped (SIGTERM, then SIGKILL) by
``PROCS.stop_all()``, which every bench calls in a ``finally``; SIGTERM/SIGHUP to the bench
unwind through those ``finally`` blocks too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import grpc

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc

BIN_DIR = Path(sys.executable).parent
SWARMD = BIN_DIR / "swarmd"
SWARMCTL = BIN_DIR / "swarmctl"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_binaries() -> None:
    for b in (SWARMD, SWARMCTL):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} not found: run with the project's virtualenv python (.venv/bin/python)")


def _on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


# ---------------------------------------------------------------------------------------------
# Process bookkeeping: everything started here is stopped here, by PID.
# ---------------------------------------------------------------------------------------------

class Processes:
    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **kwargs)
        self._procs[proc.pid] = proc
        return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            self._procs.pop(proc.pid, None)

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0, sig: int = signal.SIGTERM) -> float:
        """Signal ``proc`` by its PID, SIGKILL it after ``grace`` s; returns the seconds it took."""
        t0 = time.perf_counter()
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5.0)
        elapsed = time.perf_counter() - t0
        self.forget(proc)
        return elapsed

    def stop_all(self) -> list[int]:
        leftovers = [p for p in self._procs.values() if p.poll() is None]
        for p in leftovers:
            self.stop(p, grace=5.0)
        self._procs.clear()
        return [p.pid for p in leftovers]


PROCS = Processes()


# ---------------------------------------------------------------------------------------------
# Loopback addresses: 127.77.N.M, one per daemon, never reused within a run.
# ---------------------------------------------------------------------------------------------

class Addresses:
    """Hands out free 127.77.N.M addresses (port 2377 bindable), N derived from the PID so that
    back-to-back runs do not meet each other's sockets in TIME_WAIT."""

    def __init__(self) -> None:
        self._n = 10 + os.getpid() % 200
        self._m = 1

    def next(self) -> str:
        for _ in range(20000):
            self._m += 1
            if self._m > 250:
                self._m = 2
                self._n = 10 + (self._n - 9) % 240
            ip = f"127.77.{self._n}.{self._m}"
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((ip, 2377))
            except OSError:
                continue
            finally:
                s.close()
            return ip
        raise BenchError("no free 127.77.N.M:2377 address")


ADDRS = Addresses()


# ---------------------------------------------------------------------------------------------
# /proc readings
# ---------------------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (kB) and Threads from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of ``pid`` (all its threads) in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()  # fields from #3 (state) on
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU of several processes over a wall-clock window, in % of one core."""

    def __init__(self, pids: dict[str, int | str]) -> None:
        self.pids = pids
        self.t0 = time.perf_counter()
        self.c0 = {k: cpu_seconds(p) for k, p in pids.items()}

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        return {k: (cpu_seconds(p) - self.c0[k]) / wall * 100 for k, p in self.pids.items()} | {"wall_s": wall}


# ---------------------------------------------------------------------------------------------
# A daemon
# ---------------------------------------------------------------------------------------------

def control_stub(sock: Path) -> tuple[grpc.Channel, pb_grpc.ControlStub]:
    """A channel to a daemon's control socket that takes answers of any size the CLI takes (a
    list of 10,000 nodes is over gRPC's 4 MiB default)."""
    channel = grpc.insecure_channel(f"unix:{sock}", options=[("grpc.max_receive_message_length", 256 << 20)])
    return channel, pb_grpc.ControlStub(channel)


def run_timed(argv: list[str], check: bool = True) -> tuple[float, str, str, int]:
    """(wall seconds from Popen to exit, stdout, stderr, exit code) of one command, tracked by
    PID; a non-zero exit is a BenchError when ``check``."""
    t0 = time.perf_counter()
    proc = PROCS.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT)
    finally:
        if proc.poll() is None:
            PROCS.stop(proc, grace=1.0)
    elapsed = time.perf_counter() - t0
    PROCS.forget(proc)
    sout, serr = out.decode(errors="replace"), err.decode(errors="replace")
    if check and proc.returncode != 0:
        shown = " ".join(argv[:1] + argv[3:]) if len(argv) > 3 and argv[1] == "-H" else " ".join(argv)
        raise BenchError(f"{shown} exited {proc.returncode}: {serr.strip()}")
    return elapsed, sout, serr, proc.returncode


class Daemon:
    def __init__(self, tmp: Path, name: str, log_level: str = "info") -> None:
        self.name = name
        self.root = tmp / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock = self.root / "ctl.sock"
        self.log_path = self.root / "swarmd.log"
        self.ip = ADDRS.next()
        self.listen = f"{self.ip}:2377"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Daemon:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log_path, "ab") as logf:
            self.started = time.perf_counter()
            self.proc = PROCS.spawn(
                [str(SWARMD), "--state-dir", str(self.root / "state"), "--control-socket", str(self.sock),
                 "--hostname", self.name, "--log-level", self.log_level],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        return self

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def info(self, timeout: float = 2.0) -> pb.InfoResponse:
        channel, stub = control_stub(self.sock)
        try:
            resp: pb.InfoResponse = stub.Info(pb.InfoRequest(), timeout=timeout)
            return resp
        finally:
            channel.close()

    def wait_ready(self, accept: Callable[[pb.InfoResponse], bool] = lambda r: True,
                   timeout: float = READY_TIMEOUT) -> float:
        """Seconds from start to the first Info answer ``accept``ed (fresh channel per poll)."""
        deadline = time.perf_counter() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name}: swarmd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.sock.exists():
                try:
                    if accept(self.info(timeout=1.0)):
                        return time.perf_counter() - self.started
                except grpc.RpcError:
                    pass
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name}: not ready after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.01)

    def ctl(self, *args: str, check: bool = True) -> tuple[float, str, str, int]:
        """Wall time of one swarmctl call against this daemon (Popen to exit)."""
        argv = [str(SWARMCTL), "-H", f"unix://{self.sock}", *args]
        try:
            return run_timed(argv, check)
        except BenchError as e:
            raise BenchError(f"{self.name}: {e}\n--- {self.name} log tail ---\n{self.log_tail()}") from None

    def init(self) -> float:
        return self.ctl("init", "--advertise-addr", self.ip, "--listen-addr", self.listen)[0]

    def join(self, token: str, manager: Daemon) -> tuple[float, str]:
        t, out, _, _ = self.ctl("join", "--token", token, "--advertise-addr", self.ip, "--listen-addr",
                                self.listen, manager.listen)
        return t, out

    def token(self, role: str) -> str:
        return self.ctl("join-token", "-q", role)[1].strip()

    def node_rows(self) -> list[dict[str, str]]:
        out = self.ctl("node", "ls", "--format", "json")[1]
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self, sig: int = signal.SIGTERM) -> float:
        if self.proc is None:
            return 0.0
        return PROCS.stop(self.proc, sig=sig)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5.0)
        PROCS.forget(self.proc)


def start_all(daemons: list[Daemon]) -> None:
    """Start every daemon at once, then wait for each control socket."""
    for d in daemons:
        d.start()
    for d in daemons:
        d.wait_ready()


# ---------------------------------------------------------------------------------------------
# Statistics and the result table
# ---------------------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Linear-interpolated percentile (same as numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("", "/s", "nodes", "count"):
        return f"{v:.0f}"
    if unit == "s":
        return f"{v:.3f}"
    return f"{v:.1f}"


class Metrics:
    """name -> samples, with a unit, an optional target and its direction."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.units: dict[str, str] = {}
        self.targets: dict[str, tuple[str, float]] = {}  # name -> ("<=" | ">=", value)

    def declare(self, name: str, unit: str, target: tuple[str, float] | None = None) -> None:
        self.values.setdefault(name, [])
        self.units[name] = unit
        if target is not None:
            self.targets[name] = target

    def add(self, name: str, value: float, unit: str | None = None) -> None:
        self.values.setdefault(name, []).append(value)
        if unit is not None:
            self.units[name] = unit
        self.units.setdefault(name, "ms")

    def summary(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, vals in self.values.items():
            if not vals:
                continue
            med = statistics.median(vals)
            target = self.targets.get(name)
            status = None
            if target is not None:
                op, bound = target
                status = "PASS" if (med <= bound if op == "<=" else med >= bound) else "MISS"
            out[name] = {"unit": self.units.get(name, "ms"), "n": len(vals), "median": med, "min": min(vals),
                         "max": max(vals), "target": f"{target[0]} {target[1]:g}" if target else None,
                         "status": status}
        return out

    def table(self) -> str:
        head = ("metric", "unit", "n", "median", "min", "max", "target", "result")
        rows = [head]
        for name, m in self.summary().items():
            u = m["unit"]
            rows.append((name, u or "-", str(m["n"]), fmt(m["median"], u), fmt(m["min"], u), fmt(m["max"], u),
                         m["target"] or "-", m["status"] or "-"))
        return render_table(rows)

    def misses(self) -> list[str]:
        return [n for n, m in self.summary().items() if m["status"] == "MISS"]


def render_table(rows: Sequence[tuple[str, ...]], numeric: bool = True) -> str:
    """Columns padded to width under a dashed rule; with ``numeric`` the columns between the first
    two and the last are right-aligned (numbers), otherwise every column is left-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        if numeric:
            cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(r[2:-1], widths[2:-1])]
            cells.append(r[-1].ljust(widths[-1]))
        else:
            cells = [c.ljust(w) for c, w in zip(r, widths)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def kill_processes_naming(root: Path) -> None:
    """SIGKILL what outlived its daemon and names ``root`` on its command line (a containerd
    shim, a task supervisor), and the process groups of its children (a supervised task runs
    in a group of its own): every such process was started, if indirectly, by this run."""
    needle = str(root).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle not in cmdline:
            continue
        shown = cmdline.replace(b"\0", b" ")[:120].decode(errors="replace")
        log(f"stopping leftover process {pid}: {shown}")
        for child in _children(int(pid)):
            try:
                group = os.getpgid(child)
                if group != os.getpgrp():
                    os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def clean_up(tmp: Path, keep: bool) -> None:
    """Every process the bench started is stopped by PID; the temp dir goes unless ``keep``
    (a failed run keeps it for its daemon logs)."""
    leftovers = PROCS.stop_all()
    if leftovers:
        log(f"stopped leftover processes: {leftovers}")
    if keep:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def report(m: Metrics, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """A bench's results on stdout: the table, or JSON (summary, every sample, ``extra``)."""
    if as_json:
        json.dump({**(extra or {}), "summary": m.summary(), "samples": m.values}, sys.stdout, indent=2)
        print()
    else:
        print(m.table())


def check_row(name: str, value: float, unit: str, op: str, bound: float) -> tuple[str, ...]:
    ok = value <= bound if op == "<=" else value >= bound
    return (name, unit, fmt(value, unit), f"{op} {bound:g}", "PASS" if ok else "MISS")


# ---------------------------------------------------------------------------------------------
# Optional sampling profile of a daemon (py-spy from the same virtualenv)
# ---------------------------------------------------------------------------------------------

PY_SPY = BIN_DIR / "py-spy"


def start_profile(pid: int, seconds: float, out: Path, rate: int = 50,
                  gil: bool = False) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of ``pid`` for ``seconds`` into ``out`` (collapsed stacks), non-blocking
    sampling of active threads only (with ``gil``: only the thread holding the GIL, i.e. where
    the Python CPU goes). Returns None when py-spy is not available."""
    if not os.access(PY_SPY, os.X_OK):
        log("py-spy not found next to the interpreter: no profile")
        return None
    return PROCS.spawn([str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                        "--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(out),
                        *(["--gil"] if gil else [])],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarise_profile(path: Path, top: int = 15) -> str:
    """Top frames of a collapsed-stack file: by own samples (leaf) and by inclusive samples."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no profile: {e})"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return "(empty profile)"
    skip = ("_bootstrap", "run (threading.py", "_worker (concurrent", "process_idle_thread")
    out = [f"{total} samples of active threads"]
    out.append("  by own samples (leaf frame):")
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"    {n / total * 100:5.1f}%  {f}")
    out.append("  by inclusive samples:")
    shown = 0
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1]):
        if any(s in f for s in skip) or f.startswith("<thread") or f.startswith("process "):
            continue
        out.append(f"    {n / total * 100:5.1f}%  {f}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(out)
