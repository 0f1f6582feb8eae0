"""One cgroup per task, where this host lets the daemon make one: limits, accounting, a clean kill.

cgroup v2 when the unified hierarchy carries the controllers; else the v1 ``cpu`` and ``memory``
hierarchies (a hybrid host mounts a v2 tree without them: that one is of no use for limits).
Task cgroups go under a ``swarmd`` parent, in the daemon's own cgroup when that is writable
(its delegation and its limits then cover the tasks), else at the hierarchy's root.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmd.agent.exec.api import ExecError

log = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000  # Docker's CFS period for --cpus / --limit-cpu
MIN_CPU_QUOTA_US = 1_000  # the kernel's smallest quota
V1_CONTROLLERS = ("cpu", "memory")


# -- discovery (pure: parsed from /proc text, tested without a kernel) -------------------------------

@dataclass(frozen=True)
class Mount:
    fstype: str
    root: str
    mountpoint: str
    options: frozenset[str]


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and len(path[i + 1:i + 4]) == 3 and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts of /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, after = head.split(), tail.split()
        if len(fields) < 5 or len(after) < 3 or after[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(Mount(after[0], _unescape(fields[3]), _unescape(fields[4]),
                            frozenset(after[2].split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup as controller -> path; the v2 entry (``0::/path``) is under ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller] = parts[2]
    return out


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy: ``own`` is the daemon's cgroup in it, as a directory."""

    version: int
    controllers: frozenset[str]
    mountpoint: str
    own: str


@dataclass(frozen=True)
class Layout:
    """Which hierarchy carries each controller; ``version`` 0 when there is none to use."""

    version: int
    hierarchies: dict[str, Hierarchy] = field(default_factory=dict)

    @property
    def dirs(self) -> list[Hierarchy]:
        seen: list[Hierarchy] = []
        for h in self.hierarchies.values():
            if h not in seen:
                seen.append(h)
        return seen


def _own_dir(mount: Mount, path: str) -> str:
    """The daemon's cgroup as a directory: its path is relative to the mount's root."""
    root = mount.root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    elif root:
        return mount.mountpoint  # a cgroup namespace or bind mount hides where we are
    return os.path.join(mount.mountpoint, path.lstrip("/")).rstrip("/") or "/"


def detect_layout(mountinfo: str, proc_cgroup: str, v2_controllers: dict[str, str]) -> Layout:
    """Pick the hierarchies. ``v2_controllers`` maps a cgroup2 mountpoint to the text of its
    cgroup.controllers file (read by the caller, so this stays pure)."""
    mounts = parse_mountinfo(mountinfo)
    where = parse_proc_cgroup(proc_cgroup)
    v1: dict[str, Hierarchy] = {}
    for m in mounts:
        if m.fstype != "cgroup":
            continue
        for controller in V1_CONTROLLERS:
            if controller in m.options and controller in where and controller not in v1:
                v1[controller] = Hierarchy(1, frozenset(c for c in V1_CONTROLLERS if c in m.options),
                                           m.mountpoint, _own_dir(m, where[controller]))
    if v1:
        return Layout(1, v1)
    for m in mounts:
        if m.fstype != "cgroup2" or "" not in where:
            continue
        controllers = frozenset(v2_controllers.get(m.mountpoint, "").split())
        if {"cpu", "memory"} & controllers:
            h = Hierarchy(2, controllers, m.mountpoint, _own_dir(m, where[""]))
            return Layout(2, {c: h for c in V1_CONTROLLERS if c in controllers})
    return Layout(0)


def read_layout() -> Layout:
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return Layout(0)
    v2: dict[str, str] = {}
    for m in parse_mountinfo(mountinfo):
        if m.fstype == "cgroup2":
            try:
                v2[m.mountpoint] = Path(m.mountpoint, "cgroup.controllers").read_text()
            except OSError:
                v2[m.mountpoint] = ""
    return detect_layout(mountinfo, proc_cgroup, v2)


# -- limits (pure) --------------------------------------------------------------------------------

def cpu_quota_us(cpu_nanos: int, period_us: int = CPU_PERIOD_US) -> int:
    """NanoCPUs to a CFS quota, as Docker computes it (never under the kernel's minimum)."""
    return max(MIN_CPU_QUOTA_US, cpu_nanos * period_us // 1_000_000_000)


def limit_files(version: int, controller: str, cpu_nanos: int, memory_bytes: int) -> list[tuple[str, str]]:
    """(file, value) to write in a task's cgroup of that controller, in order."""
    if controller == "cpu" and cpu_nanos:
        quota = cpu_quota_us(cpu_nanos)
        if version == 2:
            return [("cpu.max", f"{quota} {CPU_PERIOD_US}")]
        return [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))]
    if controller == "memory" and memory_bytes:
        # No swap on top of the limit: the limit is what the task may use, not half of it.
        if version == 2:
            return [("memory.max", str(memory_bytes)), ("memory.swap.max", "0")]
        return [("memory.limit_in_bytes", str(memory_bytes)), ("memory.memsw.limit_in_bytes", str(memory_bytes))]
    return []


# -- the task's cgroup ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskCgroup:
    """The directories of one task's cgroup (one per v1 hierarchy, one for v2)."""

    version: int
    dirs: tuple[str, ...]
    memory_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "dirs": list(self.dirs), "memory_dir": self.memory_dir}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskCgroup:
        return cls(int(data["version"]), tuple(str(d) for d in data["dirs"]), str(data.get("memory_dir", "")))

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    @property
    def oom_events_file(self) -> str:
        if not self.memory_dir:
            return ""
        return os.path.join(self.memory_dir, "memory.events" if self.version == 2 else "memory.oom_control")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            try:
                found.update(int(p) for p in Path(procs).read_text().split())
            except (OSError, ValueError):
                continue
        return found

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (cgroup.kill where the kernel has it)."""
        if self.version == 2:
            try:
                Path(self.dirs[0], "cgroup.kill").write_text("1")
                return
            except OSError:
                pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove the directories; a cgroup is busy until its last
        process has been reaped, so this retries within ``timeout``."""
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY or time.monotonic() >= deadline:
                        log.warning("cannot remove task cgroup %s: %s", d, err.strerror)
                        break
                    self.kill()
                    time.sleep(0.02)


class Cgroups:
    """Makes task cgroups in the detected layout. ``parent`` names the directory that holds them."""

    def __init__(self, layout: Layout | None = None, parent: str = "swarmd") -> None:
        self.layout = read_layout() if layout is None else layout
        self.parent_name = parent
        self._parents: dict[str, str] = {}
        self._why_not: dict[str, str] = {}

    def _parent(self, h: Hierarchy) -> str | None:
        """The ``swarmd`` directory in this hierarchy, made on first use."""
        key = h.mountpoint
        if key in self._parents:
            return self._parents[key]
        reasons = []
        candidates = [h.own] if h.own == h.mountpoint else [h.own, h.mountpoint]
        for base in candidates:
            path = os.path.join(base, self.parent_name)
            existed = os.path.isdir(path)
            try:
                os.makedirs(path, exist_ok=True)
                if h.version == 2:
                    self._enable_v2(base, path, h.controllers)
            except OSError as err:
                reasons.append(f"{path}: {err.strerror or err}")
                if not existed:
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass
                continue
            self._parents[key] = path
            return path
        self._why_not[key] = "; ".join(reasons)
        return None

    @staticmethod
    def _enable_v2(base: str, path: str, controllers: Iterable[str]) -> None:
        """Hand cpu and memory down to the task cgroups. A non-root cgroup that holds processes
        cannot (the no-internal-processes rule): then this fails and the root is tried."""
        wanted = " ".join(f"+{c}" for c in V1_CONTROLLERS if c in controllers)
        if not wanted:
            return
        for directory in (base, path):
            enabled = Path(directory, "cgroup.subtree_control").read_text().split()
            if all(c in enabled for c in V1_CONTROLLERS if c in controllers):
                continue
            Path(directory, "cgroup.subtree_control").write_text(wanted)

    def create(self, task_id: str, cpu_nanos: int, memory_bytes: int) -> TaskCgroup | None:
        """The task's cgroup with its limits; None when none can be made and none is needed.
        Raises ExecError when limits are asked for and cannot be enforced."""
        needed = [c for c, v in (("cpu", cpu_nanos), ("memory", memory_bytes)) if v]
        missing = [c for c in needed if c not in self.layout.hierarchies]
        if missing:
            raise ExecError(f"cannot enforce the task's {' and '.join(_limit_names(missing))}: "
                            f"no cgroup {' and '.join(missing)} controller on this node")
        made: list[str] = []
        memory_dir = ""
        try:
            for h in self.layout.dirs:
                parent = self._parent(h)
                if parent is None:
                    wanted = [c for c in needed if self.layout.hierarchies.get(c) == h]
                    if wanted:
                        raise ExecError(f"cannot enforce the task's {' and '.join(_limit_names(wanted))}: "
                                        f"cannot create a cgroup ({self._why_not.get(h.mountpoint, '')})")
                    continue
                path = os.path.join(parent, task_id)
                os.makedirs(path, exist_ok=True)
                made.append(path)
                for controller in sorted(c for c, hh in self.layout.hierarchies.items() if hh == h):
                    for name, value in limit_files(h.version, controller, cpu_nanos, memory_bytes):
                        self._write_limit(path, name, value, required=not name.startswith("memory.memsw")
                                          and name != "memory.swap.max")
                    if controller == "memory":
                        memory_dir = path
        except ExecError:
            TaskCgroup(self.layout.version, tuple(made)).remove()
            raise
        except OSError as err:
            TaskCgroup(self.layout.version, tuple(made)).remove()
            if needed:
                raise ExecError(f"cannot enforce the task's {' and '.join(_limit_names(needed))}: "
                                f"{err.filename}: {err.strerror}") from None
            log.info("task %s runs without a cgroup: %s", task_id, err)
            return None
        if not made:
            return None
        return TaskCgroup(self.layout.version, tuple(made), memory_dir)

    def existing(self, task_id: str) -> TaskCgroup | None:
        """The task's cgroup found on disk (for state a crash left without its record)."""
        dirs: list[str] = []
        memory_dir = ""
        for h in self.layout.dirs:
            for base in dict.fromkeys((h.own, h.mountpoint)):
                path = os.path.join(base, self.parent_name, task_id)
                if os.path.isdir(path):
                    dirs.append(path)
                    if self.layout.hierarchies.get("memory") == h:
                        memory_dir = path
        return TaskCgroup(self.layout.version, tuple(dirs), memory_dir) if dirs else None

    @staticmethod
    def _write_limit(path: str, name: str, value: str, required: bool) -> None:
        try:
            Path(path, name).write_text(value)
        except FileNotFoundError:
            if required:
                raise
        except OSError as err:
            if required:
                raise ExecError(f"cannot set {name} to {value}: {err.strerror}") from None


def _limit_names(controllers: list[str]) -> list[str]:
    return ["CPU limit" if c == "cpu" else "memory limit" for c in controllers]
