"""Every byte ``service`` and ``node ps`` print on success (Docker 20.10's texts): tables,
inspect documents, the pretty view, and the frames of the converge progress.

Functions take wire objects (and the time "now" where a text is relative) and return strings.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmctl.natsort import natural_less, sort_naturally
from swarmctl.render import bytes_size, table
from swarmctl.serviceflags import go_float
from swarmd.timeutil import format_go_duration, human_duration, parse_rfc3339_ns

if TYPE_CHECKING:
    from swarmd.api.swarm.v1 import services_pb2 as spb

DEFAULT_RESTART_DELAY_NS = 5 * 10**9
DEFAULT_STOP_GRACE_NS = 10 * 10**9
DEFAULT_MONITOR_NS = 5 * 10**9


def _compact(doc: dict[str, Any]) -> str:
    """Go's ``{{json .}}``: sorted keys, no spaces."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _pretty_state(state: str) -> str:
    return state[:1].upper() + state[1:]


def ago(timestamp: str, now_ns: int) -> str:
    """``5 seconds ago``: go-units HumanDuration of the time since ``timestamp``."""
    then = parse_rfc3339_ns(timestamp)
    return human_duration(max(0, now_ns - then) if then is not None else 0) + " ago"


# -- service ls --------------------------------------------------------------------------------

def sorted_services(services: Sequence[spb.Service]) -> list[spb.Service]:
    return sort_naturally(services, lambda s: s.spec.name, lambda s: s.id)


def _mode(s: spb.Service) -> str:
    return s.spec.mode or "replicated"


def replicas(s: spb.Service) -> str:
    text = f"{s.running_tasks}/{s.desired_tasks}"
    max_per_node = s.spec.task_template.placement.max_replicas
    if max_per_node:
        text += f" (max {max_per_node} per node)"
    return text


def service_table(services: Sequence[spb.Service]) -> str:
    rows = [["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]]
    for s in sorted_services(services):
        rows.append([s.id[:12], s.spec.name, _mode(s), replicas(s), s.spec.task_template.program, ""])
    return table(rows)


def service_ids(services: Sequence[spb.Service]) -> str:
    return "".join(s.id[:12] + "\n" for s in sorted_services(services))


def service_lines_json(services: Sequence[spb.Service]) -> str:
    return "".join(_compact({"ID": s.id[:12], "Image": s.spec.task_template.program, "Mode": _mode(s),
                             "Name": s.spec.name, "Ports": "", "Replicas": replicas(s)}) + "\n"
                   for s in sorted_services(services))


# -- service ps / node ps ------------------------------------------------------------------------

MAX_ERROR_WIDTH = 30


def ellipsis(text: str, width: int) -> str:
    """docker/cli ``formatter.Ellipsis``: ``width - 1`` characters then ``…``."""
    return text if len(text) <= width else text[:width - 1] + "…"


def task_name(t: spb.Task) -> str:
    return f"{t.service_name}.{t.slot}" if t.slot else f"{t.service_name}.{t.node_id}"


def sorted_tasks(tasks: Sequence[spb.Task]) -> list[spb.Task]:
    """By name in natural order, then the newest first (Docker's ``tasksSortable``)."""
    def compare(x: spb.Task, y: spb.Task) -> int:
        nx, ny = task_name(x), task_name(y)
        if nx != ny:
            return -1 if natural_less(nx, ny) else 1
        cx, cy = parse_rfc3339_ns(x.created_at) or 0, parse_rfc3339_ns(y.created_at) or 0
        return (cy > cx) - (cy < cx) or (x.id > y.id) - (x.id < y.id)
    return sorted(tasks, key=functools.cmp_to_key(compare))


@dataclass(frozen=True)
class TaskRow:
    id: str
    name: str
    image: str
    node: str
    desired: str
    current: str
    error: str

    def cells(self) -> list[str]:
        return [self.id, self.name, self.image, self.node, self.desired, self.current, self.error, ""]

    def json(self) -> str:
        return _compact({"CurrentState": self.current, "DesiredState": self.desired, "Error": self.error,
                         "ID": self.id, "Image": self.image, "Name": self.name, "Node": self.node, "Ports": ""})


def task_rows(tasks: Sequence[spb.Task], now_ns: int, trunc: bool = True, indent: str = " \\_ ") -> list[TaskRow]:
    """One row per task; a slot's older tasks have their name indented (tables only)."""
    rows, previous = [], None
    for t in sorted_tasks(tasks):
        name = task_name(t)
        shown = indent + name if name == previous else name
        previous = name
        err = ellipsis(t.status.err, MAX_ERROR_WIDTH) if trunc else t.status.err
        rows.append(TaskRow(
            id=t.id[:12] if trunc else t.id, name=shown, image=t.spec.program, node=t.node_hostname,
            desired=_pretty_state(t.desired_state),
            current=f"{_pretty_state(t.status.state)} {ago(t.status.timestamp, now_ns).lower()}",
            error=f'"{err}"' if err else ""))
    return rows


TASK_HEADER = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]


def task_table(tasks: Sequence[spb.Task], now_ns: int, trunc: bool = True) -> str:
    return table([TASK_HEADER, *(r.cells() for r in task_rows(tasks, now_ns, trunc))])


def task_ids(tasks: Sequence[spb.Task], trunc: bool = False) -> str:
    """``-q``: ``service ps`` prints full IDs, ``node ps`` truncates them unless --no-trunc."""
    return "".join((t.id[:12] if trunc else t.id) + "\n" for t in sorted_tasks(tasks))


def task_lines_json(tasks: Sequence[spb.Task], now_ns: int, trunc: bool = True) -> str:
    return "".join(r.json() + "\n" for r in task_rows(tasks, now_ns, trunc, indent=""))


# -- service inspect -------------------------------------------------------------------------------

def _resources_json(r: spb.Resources) -> dict[str, int]:
    doc = {}
    if r.nano_cpus:
        doc["NanoCPUs"] = r.nano_cpus
    if r.memory_bytes:
        doc["MemoryBytes"] = r.memory_bytes
    return doc


def _policy_json(c: spb.UpdateConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {"Parallelism": c.parallelism if c.HasField("parallelism") else 1}
    if c.delay_ns:
        doc["Delay"] = c.delay_ns
    doc["FailureAction"] = c.failure_action or "pause"
    monitor = c.monitor_ns if c.HasField("monitor_ns") else DEFAULT_MONITOR_NS
    if monitor:
        doc["Monitor"] = monitor
    ratio = c.max_failure_ratio  # Go prints a whole float without a fraction: 0, not 0.0
    doc["MaxFailureRatio"] = int(ratio) if ratio.is_integer() else ratio
    doc["Order"] = c.order or "stop-first"
    return doc


def _template_json(t: spb.TaskTemplate) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": t.program}
    if t.args:
        container["Args"] = list(t.args)
    if t.env:
        container["Env"] = list(t.env)
    if t.workdir:
        container["Dir"] = t.workdir
    if t.user:
        container["User"] = t.user
    if t.stop_signal:
        container["StopSignal"] = t.stop_signal
    container["StopGracePeriod"] = (t.stop_grace_period_ns if t.HasField("stop_grace_period_ns")
                                    else DEFAULT_STOP_GRACE_NS)
    restart: dict[str, Any] = {
        "Condition": t.restart_policy.condition or "any",
        "Delay": t.restart_policy.delay_ns if t.restart_policy.HasField("delay_ns") else DEFAULT_RESTART_DELAY_NS,
        "MaxAttempts": t.restart_policy.max_attempts,
    }
    if t.restart_policy.window_ns:
        restart["Window"] = t.restart_policy.window_ns
    placement: dict[str, Any] = {}
    if t.placement.constraints:
        placement["Constraints"] = list(t.placement.constraints)
    if t.placement.max_replicas:
        placement["MaxReplicas"] = t.placement.max_replicas
    return {
        "ContainerSpec": container,
        "Resources": {"Limits": _resources_json(t.resources.limits),
                      "Reservations": _resources_json(t.resources.reservations)},
        "RestartPolicy": restart,
        "Placement": placement,
        "ForceUpdate": t.force_update,
    }


def spec_json(s: spb.ServiceSpec) -> dict[str, Any]:
    mode: dict[str, Any] = ({"Global": {}} if s.mode == "global"
                            else {"Replicated": {"Replicas": s.replicas if s.HasField("replicas") else 1}})
    return {
        "Name": s.name,
        "Labels": dict(sorted(s.labels.items())),
        "TaskTemplate": _template_json(s.task_template),
        "Mode": mode,
        "UpdateConfig": _policy_json(s.update_config),
        "RollbackConfig": _policy_json(s.rollback_config),
    }


def _update_status_json(u: spb.UpdateStatus) -> dict[str, str]:
    doc = {"State": u.state}
    if u.started_at:
        doc["StartedAt"] = u.started_at
    if u.completed_at:
        doc["CompletedAt"] = u.completed_at
    doc["Message"] = u.message
    return doc


def service_json(s: spb.Service) -> dict[str, Any]:
    doc: dict[str, Any] = {"ID": s.id, "Version": {"Index": s.version}, "CreatedAt": s.created_at,
                           "UpdatedAt": s.updated_at, "Spec": spec_json(s.spec)}
    if s.HasField("previous_spec"):
        doc["PreviousSpec"] = spec_json(s.previous_spec)
    if s.HasField("update_status"):
        doc["UpdateStatus"] = _update_status_json(s.update_status)
    return doc


def inspect_json(services: Sequence[spb.Service]) -> str:
    return json.dumps([service_json(s) for s in services], indent=4) + "\n"


def _policy_pretty(c: spb.UpdateConfig, kind: str) -> list[str]:
    p = _policy_json(c)
    lines = [f" Parallelism:\t{p['Parallelism']}"]
    if "Delay" in p:
        lines.append(f" Delay:\t\t{format_go_duration(p['Delay'])}")
    lines.append(f" On failure:\t{p['FailureAction']}")
    if "Monitor" in p:
        lines.append(f" Monitoring Period: {format_go_duration(p['Monitor'])}")
    lines.append(f" Max failure ratio: {go_float(p['MaxFailureRatio'])}")
    lines.append(f" {kind} order:".ljust(20) + p["Order"])
    return lines


def _resources_pretty(r: spb.Resources, title: str) -> list[str]:
    lines = [f" {title}:"]
    if r.nano_cpus > 0:
        lines.append(f"  CPU:\t\t{go_float(r.nano_cpus / 1e9)}")
    if r.memory_bytes:
        lines.append(f"  Memory:\t{bytes_size(r.memory_bytes)}")
    return lines


def service_pretty(s: spb.Service, now_ns: int) -> str:
    """Docker's ``service inspect --pretty`` template (fields a process task has)."""
    spec, t = s.spec, s.spec.task_template
    lines = ["", f"ID:\t\t{s.id}", f"Name:\t\t{spec.name}"]
    if spec.labels:
        lines.append("Labels:")
        lines += [f" {k}={v}" if v else f" {k}" for k, v in sorted(spec.labels.items())]
    if spec.mode == "global":
        lines.append("Service Mode:\tGlobal")
    else:
        lines.append("Service Mode:\tReplicated")
        count = spec.replicas if spec.HasField("replicas") else 1
        if count:
            lines.append(f" Replicas:\t{count}")
    if s.HasField("update_status"):
        u = s.update_status
        lines += ["UpdateStatus:", f" State:\t\t{u.state}"]
        if u.started_at:
            lines.append(f" Started:\t{ago(u.started_at, now_ns)}")
        if u.state == "completed" and u.completed_at:  # not after a rollback: Docker's template
            lines.append(f" Completed:\t{ago(u.completed_at, now_ns)}")
        lines.append(f" Message:\t{u.message}")
    lines.append("Placement:")
    if t.placement.constraints:
        lines.append(f" Constraints:\t[{' '.join(t.placement.constraints)}]")
    if t.placement.max_replicas:
        lines.append(f" Max Replicas Per Node:   {t.placement.max_replicas}")
    lines += ["UpdateConfig:", *_policy_pretty(spec.update_config, "Update")]
    lines += ["RollbackConfig:", *_policy_pretty(spec.rollback_config, "Rollback")]
    lines += ["ContainerSpec:", f" Image:\t\t{t.program}"]
    if t.args:
        lines.append(" Args:\t\t" + "".join(a + " " for a in t.args))
    if t.env:
        lines.append(" Env:\t\t" + "".join(e + " " for e in t.env))
    if t.workdir:
        lines.append(f" Dir:\t\t{t.workdir}")
    lines.append(" Init:\t\tfalse")
    if t.user:
        lines.append(f" User: {t.user}")
    lines.append("Resources:")
    res = t.resources
    if res.reservations.nano_cpus > 0 or res.reservations.memory_bytes:
        lines += _resources_pretty(res.reservations, "Reservations")
    if res.limits.nano_cpus > 0 or res.limits.memory_bytes:
        lines += _resources_pretty(res.limits, "Limits")
    lines.append("Endpoint Mode:\tvip")
    return "\n".join(lines) + "\n\n"


# -- converge progress -------------------------------------------------------------------------------

# Docker's numbered task states (cli/command/service/progress): 1..9 fill the bar.
NUMBERED_STATES = {"new": 1, "allocated": 2, "pending": 3, "assigned": 4, "accepted": 5, "preparing": 6,
                   "ready": 7, "starting": 8, "running": 9, "complete": 10, "shutdown": 11, "failed": 12,
                   "rejected": 13}
MAX_PROGRESS = 9
LONGEST_STATE = max(len(s) for s in NUMBERED_STATES)  # "preparing"
BAR_MIN_TERMINAL_WIDTH = 111


@dataclass(frozen=True)
class Frame:
    """One progress record (Docker's jsonmessage): ``total`` > 0 draws a bar; a ``message``
    is a plain line, never redrawn."""

    id: str
    action: str
    current: int = 0
    total: int = 0
    message: bool = False

    def bar(self) -> str:
        if self.total <= 0:
            return ""
        filled = min(50, int(self.current / self.total * 100) // 2)
        return f"[{'=' * filled}>{' ' * (50 - filled)}] "


class FrameWriter:
    """Docker's ``DisplayJSONMessagesStream``: on a terminal each ID owns a line that is
    redrawn in place; elsewhere a frame is a new line and frames with a bar are left out."""

    def __init__(self, tty: bool, width: int = 200) -> None:
        self.tty = tty
        self.width = width
        self.lines: dict[str, int] = {}

    def write(self, frame: Frame) -> str:
        line = f"{frame.id}: {frame.action}\n" if frame.id else f"{frame.action}\n"
        if not self.tty:
            return "" if frame.total > 0 else line
        if frame.message:  # not progress: later rows start below it
            self.lines.clear()
            return line
        out = ""
        if frame.id not in self.lines:
            self.lines[frame.id] = len(self.lines)
            out += "\n"
        diff = len(self.lines) - self.lines[frame.id]
        bar = frame.bar() if self.width >= BAR_MIN_TERMINAL_WIDTH else ""
        return out + f"\x1b[{diff}A\x1b[2K\r{frame.id}: {frame.action} {bar}\r\x1b[{diff}B"


def progress_error(text: str) -> str:
    """Docker's ``truncError``: one line, at most 74 bytes then ``…``."""
    text = text.replace("\n", " ")
    raw = text.encode()
    return raw[:74].decode(errors="ignore") + "…" if len(raw) > 75 else text


def task_frame(label: str, t: spb.Task, rollback: bool) -> Frame | None:
    """A slot's or node's row: the scheduler's or executor's error, else its state's bar."""
    if t.status.err:
        return Frame(label, progress_error(t.status.err))
    state = NUMBERED_STATES.get(t.status.state, 0)
    if NUMBERED_STATES.get(t.desired_state, 0) > MAX_PROGRESS or state > MAX_PROGRESS:
        return None
    current = MAX_PROGRESS - state if rollback else state
    return Frame(label, t.status.state.ljust(LONGEST_STATE), current, MAX_PROGRESS)


def overall_frame(running: int, total: int, rollback: bool) -> Frame:
    prefix = "rolling back update: " if rollback else ""
    return Frame("overall progress", f"{prefix}{running} out of {total} tasks")


def verify_waiting(seconds_left: int) -> Frame:
    return Frame("verify", f"Waiting {seconds_left} seconds to verify that tasks are stable...")


VERIFY_CONVERGED = Frame("verify", "Service converged")
VERIFY_FAILURE = Frame("verify", "Detected task failure")


# -- service logs ---------------------------------------------------------------------------------

LOG_SEPARATOR = b"    | "


@dataclass(frozen=True)
class LogStyle:
    """``service logs``' output flags."""

    timestamps: bool = False
    raw: bool = False
    task_ids: bool = True
    trunc: bool = True
    resolve: bool = True
    details: bool = False  # Docker: the log attributes (a task has none), then a space


def log_prefix(task: spb.LogTask, slot_width: int, style: LogStyle) -> bytes:
    """Docker's ``name.slot.taskid@node`` and its padding: one space per digit the slot is shorter
    than the widest one, then four spaces and ``| `` (names of different lengths stay unaligned)."""
    name = f"{task.service_name if style.resolve else task.service_id}.{task.slot}"
    if style.task_ids:
        name += "." + (task.task_id if not style.trunc else task.task_id[:12])
    node = task.node_hostname if style.resolve and task.node_hostname else task.node_id
    padding = " " * max(0, slot_width - len(str(task.slot)))
    return (name + "@" + node + padding).encode() + LOG_SEPARATOR


def log_line(prefix: bytes, message: spb.LogMessage, style: LogStyle) -> bytes:
    """One output line (``-t``: the time the line was written, first; ``--raw``: no prefix)."""
    stamp = message.timestamp.encode() + b" " if style.timestamps else b""
    details = b" " if style.details else b""
    return stamp + (b"" if style.raw else prefix) + details + message.data + b"\n"
