"""Service specs: Docker's defaults, the bounds of every field, and the one check of both.

``normalize`` turns a spec as a caller sends it (sections and fields may be left out) into the
complete ``ServiceSpec`` the store keeps, refusing it with the text Docker prints when Docker
refuses the same thing, and with a plain one-line text for the bounds Docker does not have.
It runs twice: in the control API before a write is proposed (``manager.validate``, which also
lends it the constraint parser), and in ``apply``, where nothing may be trusted.

The checks run in Docker's order: the daemon's conversion first (restart condition, failure
action, update order), then swarmkit's ``validateServiceSpec`` (name, resources, restart
policy, placement, the program, mode, update config), so a spec with two faults gets the
same complaint as from Docker.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from collections.abc import Callable, Mapping
from typing import Any, Final

from swarmd import errors, gostr
from swarmd.store.objects import (
    Placement, ResourceRequirements, Resources, RestartPolicy, ServiceSpec, TaskTemplate, UpdateConfig,
)
from swarmd.store.refusal import OpError

SECOND: Final = 1_000_000_000
INT64_MAX: Final = (1 << 63) - 1

# -- Docker's defaults (swarmkit api/defaults; the CLI sends the same) -----------------------------

DEFAULT_STOP_GRACE_PERIOD_NS: Final = 10 * SECOND
DEFAULT_RESTART_POLICY: Final[RestartPolicy] = {
    "condition": "any", "delay_ns": 5 * SECOND, "max_attempts": 0, "window_ns": 0}
DEFAULT_UPDATE_CONFIG: Final[UpdateConfig] = {
    "parallelism": 1, "delay_ns": 0, "failure_action": "pause", "monitor_ns": 5 * SECOND,
    "max_failure_ratio": 0.0, "order": "stop-first"}
DEFAULT_REPLICAS: Final = 1

RESTART_CONDITIONS: Final = ("none", "on-failure", "any")
FAILURE_ACTIONS: Final = ("pause", "continue", "rollback")
UPDATE_ORDERS: Final = ("stop-first", "start-first")
MODES: Final = ("replicated", "global")

# -- bounds: every manager keeps every spec, and every task carries a copy of its template ---------

MAX_NAME: Final = 63                 # a DNS label (swarmkit's own limit)
MAX_LABELS: Final = 64
MAX_LABEL_KEY: Final = 128
MAX_LABEL_VALUE: Final = 512
MAX_PROGRAM: Final = 4096            # PATH_MAX
MAX_ARGS: Final = 256
MAX_ARGS_BYTES: Final = 32 << 10     # all arguments together
MAX_ENV: Final = 256
MAX_ENV_BYTES: Final = 32 << 10
MAX_WORKDIR: Final = 4096
MAX_USER: Final = 255                # user[:group]
MAX_STOP_SIGNAL: Final = 32
MAX_CONSTRAINTS: Final = 32
MAX_CONSTRAINT: Final = 256
MAX_REPLICAS: Final = 10_000         # each replica is a task object on every manager

MIN_NANO_CPUS: Final = 1_000_000     # swarmkit: 0.001 CPU
MIN_MEMORY_BYTES: Final = 4 << 20    # swarmkit: 4 MiB

# swarmkit's isValidDNSName.
_DNS_NAME = re.compile(r"[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*")

ConstraintCheck = Callable[[list[str]], None]


def invalid(message: str) -> OpError:
    return OpError("INVALID_ARGUMENT", message)


def _rpc_invalid(desc: str) -> OpError:
    return invalid(errors.rpc_text("INVALID_ARGUMENT", desc))


def normalize(raw: Any, check_constraints: ConstraintCheck | None = None) -> ServiceSpec:
    """The complete spec, or ``OpError`` with the text the user sees.

    ``check_constraints`` parses placement constraints (raising ``OpError``); ``apply`` has no
    parser and checks only their bounds: an unparsable constraint never places a task."""
    spec = _section(raw, "spec", _SPEC_KEYS)
    template = _section(spec.get("task_template", {}), "task_template", _TEMPLATE_KEYS)
    restart = _section(template.get("restart_policy", {}), "restart_policy", _RESTART_KEYS)
    update = _section(spec.get("update_config", {}), "update_config", _UPDATE_KEYS)
    rollback = _section(spec.get("rollback_config", {}), "rollback_config", _UPDATE_KEYS)

    # The daemon's conversion, before swarmkit sees the spec.
    condition = _text(restart, "condition", DEFAULT_RESTART_POLICY["condition"], 32, "restart_policy")
    if condition not in RESTART_CONDITIONS:
        raise invalid(f"invalid RestartCondition: {_go_quote(condition)}")
    (update_action, update_order), (rollback_action, rollback_order) = (
        (_enum(section, "failure_action", FAILURE_ACTIONS, "unrecognized update failure action"),
         _enum(section, "order", UPDATE_ORDERS, "unrecognized update order"))
        for section in (update, rollback))

    # swarmkit's validateServiceSpec.
    name = _name(spec.get("name", ""))
    labels = _labels(spec.get("labels", {}))
    resources = _resources(template.get("resources", {}))
    restart_policy = _restart_policy(restart, condition)
    placement = _placement(template.get("placement", {}), check_constraints)
    task_template = _template(template, resources, placement, restart_policy)
    mode, replicas = _mode(spec)
    update_config = _update_config(update, "update", update_action, update_order)
    rollback_config = _update_config(rollback, "rollback", rollback_action, rollback_order)
    return {"name": name, "labels": labels, "mode": mode, "replicas": replicas, "task_template": task_template,
            "update_config": update_config, "rollback_config": rollback_config}


_SPEC_KEYS = frozenset({"name", "labels", "mode", "replicas", "task_template", "update_config", "rollback_config"})
_TEMPLATE_KEYS = frozenset({"program", "args", "env", "workdir", "user", "stop_signal", "stop_grace_period_ns",
                            "resources", "placement", "restart_policy", "force_update"})
_RESTART_KEYS = frozenset(DEFAULT_RESTART_POLICY)
_UPDATE_KEYS = frozenset(DEFAULT_UPDATE_CONFIG)
_RESOURCES_KEYS = frozenset({"limits", "reservations"})
_RESOURCE_KEYS = frozenset({"nano_cpus", "memory_bytes"})
_PLACEMENT_KEYS = frozenset({"constraints", "max_replicas"})


def _section(value: Any, where: str, keys: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"invalid service spec: {where} must be an object")
    unknown = sorted(k for k in value if k not in keys)
    if unknown:
        raise invalid(f"invalid service spec: unknown field {_go_quote(str(unknown[0])[:64])} in {where}")
    return value


def _enum(section: Mapping[str, Any], key: str, allowed: tuple[str, ...], refusal: str) -> str:
    value = _text(section, key, allowed[0], 32, "update_config")
    if value not in allowed:
        raise invalid(f"{refusal} {value}")
    return value


def _name(name: Any) -> str:
    if not isinstance(name, str):
        raise invalid("invalid service spec: name must be text")
    if name == "":
        raise _rpc_invalid("meta: name must be provided")
    if not _DNS_NAME.fullmatch(name):
        raise _rpc_invalid("name must be valid as a DNS name component")
    if len(name) > MAX_NAME:
        raise _rpc_invalid("name must be 63 characters or fewer")
    return name


def _labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise invalid("invalid service spec: labels must be an object")
    if len(labels) > MAX_LABELS:
        raise invalid(f"invalid service spec: {len(labels)} labels, at most {MAX_LABELS}")
    for key, value in labels.items():
        if not isinstance(value, str) or not key:
            raise invalid("invalid service spec: a label needs a key and a text value")
        _bounded(key, MAX_LABEL_KEY, "a label key")
        _bounded(value, MAX_LABEL_VALUE, "a label value")
    return dict(labels)


def _resources(raw: Any) -> ResourceRequirements:
    section = _section(raw, "resources", _RESOURCES_KEYS)
    limits = _resource(section.get("limits", {}), "limits")
    reservations = _resource(section.get("reservations", {}), "reservations")
    return {"limits": limits, "reservations": reservations}


def _resource(raw: Any, where: str) -> Resources:
    section = _section(raw, where, _RESOURCE_KEYS)
    cpus = _int(section, "nano_cpus", 0, where, signed=True)
    memory = _int(section, "memory_bytes", 0, where, signed=True)
    if cpus != 0 and cpus < MIN_NANO_CPUS:
        raise _rpc_invalid(f"invalid cpu value {go_float_g(cpus / 1e9)}: Must be at least {go_float_g(MIN_NANO_CPUS / 1e9)}")
    if memory != 0 and memory < MIN_MEMORY_BYTES:
        raise _rpc_invalid(f"invalid memory value {memory}: Must be at least 4MiB")
    return {"nano_cpus": cpus, "memory_bytes": memory}


def _restart_policy(section: Mapping[str, Any], condition: str) -> RestartPolicy:
    delay = _int(section, "delay_ns", DEFAULT_RESTART_POLICY["delay_ns"], "restart_policy", signed=True)
    if delay < 0:
        raise _rpc_invalid("TaskSpec: restart-delay cannot be negative")
    window = _int(section, "window_ns", 0, "restart_policy", signed=True)
    if window < 0:
        raise _rpc_invalid("TaskSpec: restart-window cannot be negative")
    attempts = _int(section, "max_attempts", 0, "restart_policy")
    return {"condition": condition, "delay_ns": delay, "max_attempts": attempts, "window_ns": window}


def _placement(raw: Any, check_constraints: ConstraintCheck | None) -> Placement:
    section = _section(raw, "placement", _PLACEMENT_KEYS)
    constraints = section.get("constraints", [])
    if not isinstance(constraints, list) or not all(isinstance(c, str) for c in constraints):
        raise invalid("invalid service spec: constraints must be a list of texts")
    if len(constraints) > MAX_CONSTRAINTS:
        raise invalid(f"invalid service spec: {len(constraints)} constraints, at most {MAX_CONSTRAINTS}")
    for constraint in constraints:
        _bounded(constraint, MAX_CONSTRAINT, "a constraint")
    if check_constraints is not None:
        check_constraints(constraints)
    max_replicas = _int(section, "max_replicas", 0, "placement")
    return {"constraints": list(constraints), "max_replicas": max_replicas}


def _template(section: Mapping[str, Any], resources: ResourceRequirements, placement: Placement,
              restart_policy: RestartPolicy) -> TaskTemplate:
    program = _text(section, "program", "", MAX_PROGRAM, "task_template")
    if program == "":
        raise _rpc_invalid("ContainerSpec: image reference must be provided")
    _no_nul(program, "the program")
    args = _texts(section.get("args", []), MAX_ARGS, MAX_ARGS_BYTES, "args")
    env = _texts(section.get("env", []), MAX_ENV, MAX_ENV_BYTES, "env")
    for entry in env:
        if entry == "" or entry.startswith("="):
            raise invalid(f"invalid environment variable: {entry}")
    grace = _int(section, "stop_grace_period_ns", DEFAULT_STOP_GRACE_PERIOD_NS, "task_template", signed=True)
    if grace < 0:
        raise invalid("invalid service spec: stop-grace-period cannot be negative")
    return {
        "program": program, "args": args, "env": env,
        "workdir": _no_nul(_text(section, "workdir", "", MAX_WORKDIR, "task_template"), "the workdir"),
        "user": _no_nul(_text(section, "user", "", MAX_USER, "task_template"), "the user"),
        "stop_signal": _no_nul(_text(section, "stop_signal", "", MAX_STOP_SIGNAL, "task_template"), "the stop signal"),
        "stop_grace_period_ns": grace, "resources": resources, "placement": placement,
        "restart_policy": restart_policy, "force_update": _int(section, "force_update", 0, "task_template"),
    }


def _mode(spec: Mapping[str, Any]) -> tuple[str, int]:
    mode = spec.get("mode", "replicated")
    if mode not in MODES:
        raise invalid(f"Unknown mode: {mode if isinstance(mode, str) else '?'}, only replicated and global supported")
    if mode == "global":
        if spec.get("replicas", 0) != 0:
            raise invalid("replicas can only be used with replicated or replicated-job mode")
        return mode, 0
    replicas = _int(spec, "replicas", DEFAULT_REPLICAS, "spec", signed=True)
    if replicas < 0:
        raise _rpc_invalid("Number of replicas must be non-negative")
    if replicas > MAX_REPLICAS:
        raise invalid(f"invalid service spec: {replicas} replicas, at most {MAX_REPLICAS}")
    return mode, replicas


def _update_config(section: Mapping[str, Any], kind: str, action: str, order: str) -> UpdateConfig:
    where = f"{kind}_config"
    delay = _int(section, "delay_ns", 0, where, signed=True)
    if delay < 0:
        raise _rpc_invalid(f"TaskSpec: {kind}-delay cannot be negative")
    monitor = _int(section, "monitor_ns", DEFAULT_UPDATE_CONFIG["monitor_ns"], where, signed=True)
    if monitor < 0:
        raise _rpc_invalid(f"TaskSpec: {kind}-monitor cannot be negative")
    ratio = section.get("max_failure_ratio", 0.0)
    if type(ratio) not in (int, float) or not math.isfinite(ratio):
        raise invalid(f"invalid service spec: max_failure_ratio in {where} must be a number")
    if ratio < 0 or ratio > 1:
        raise _rpc_invalid(f"TaskSpec: {kind}-maxfailureratio cannot be less than 0 or bigger than 1")
    return {"parallelism": _int(section, "parallelism", DEFAULT_UPDATE_CONFIG["parallelism"], where),
            "delay_ns": delay, "failure_action": action, "monitor_ns": monitor,
            "max_failure_ratio": float(ratio), "order": order}


# -- field helpers ---------------------------------------------------------------------------------

def _int(section: Mapping[str, Any], key: str, default: int, where: str, signed: bool = False) -> int:
    """An int64 (non-negative unless ``signed``: the sign is then the caller's check, in
    Docker's words)."""
    value = section.get(key, default)
    if type(value) is not int or not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise invalid(f"invalid service spec: {key} in {where} must be a 64-bit integer")
    if value < 0 and not signed:
        raise invalid(f"invalid service spec: {key} in {where} cannot be negative")
    return value


def _text(section: Mapping[str, Any], key: str, default: str, limit: int, where: str) -> str:
    value = section.get(key, default)
    if not isinstance(value, str):
        raise invalid(f"invalid service spec: {key} in {where} must be text")
    return _bounded(value, limit, key)


def _bounded(text: str, limit: int, what: str) -> str:
    if len(text) > limit:
        raise invalid(f"invalid service spec: {what} is {len(text)} characters, at most {limit}")
    return text


def _texts(value: Any, count: int, total: int, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(f"invalid service spec: {what} must be a list of texts")
    if len(value) > count:
        raise invalid(f"invalid service spec: {len(value)} {what}, at most {count}")
    size = sum(len(v.encode("utf-8", "surrogatepass")) for v in value)
    if size > total:
        raise invalid(f"invalid service spec: {what} take {size} bytes, at most {total}")
    for v in value:
        _no_nul(v, what)
    return list(value)


def _no_nul(text: str, what: str) -> str:
    if "\x00" in text:
        raise invalid(f"invalid service spec: {what} cannot hold a NUL character")
    return text


def _go_quote(text: str) -> str:
    return gostr.quote(text)


def go_float_g(value: float) -> str:
    """Go's ``%g`` of a float64: the shortest digits that read back the same, in exponent form
    when the exponent is below -4 or at least 6 (``1e+06``, ``5e-07``, ``0.001``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    exact = Decimal(repr(abs(value))).normalize()  # repr: the shortest digits that read back
    _, figures_tuple, power = exact.as_tuple()
    figures = "".join(map(str, figures_tuple))
    exp = len(figures) + int(power) - 1          # the exponent of the first figure
    if exp < -4 or exp >= 6:
        body = figures[0] + ("." + figures[1:] if len(figures) > 1 else "")
        return f"{sign}{body}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{figures}"
    if len(figures) <= exp + 1:
        return sign + figures + "0" * (exp + 1 - len(figures))
    return f"{sign}{figures[:exp + 1]}.{figures[exp + 1:]}"
