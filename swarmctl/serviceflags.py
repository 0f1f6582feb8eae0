"""``service create`` and ``service update`` flags: Docker's value types and texts, and the
``ServiceSpec`` they make (docker/cli's ``cli/command/service/opts.go`` and ``update.go``).

A flag the user did not give stays ``None`` and its field stays unset, so the manager fills
in Docker's default. ``build_spec`` makes a new spec; ``apply_update`` changes one read from
the manager in place, the way Docker's client edits the spec it read.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import click

from swarmctl.errors import CLIError, FlagValueError
from swarmd import gostr

if TYPE_CHECKING:
    from swarmd.api.swarm.v1 import services_pb2 as spb


def pflag_name(param: click.Parameter | None) -> str:
    """pflag names a flag with its shorthand: ``-e, --env``."""
    if param is None:
        return "?"
    opts = list(getattr(param, "opts", []))
    longs = [o for o in opts if o.startswith("--")]
    shorts = [o for o in opts if not o.startswith("--")]
    if longs and shorts:
        return f"{shorts[0]}, {longs[0]}"
    return longs[0] if longs else (opts[0] if opts else str(param.name))


def fail(value: Any, param: click.Parameter | None, why: str) -> FlagValueError:
    return FlagValueError(f"invalid argument {gostr.quote(str(value))} for "
                          f"{gostr.quote(pflag_name(param))} flag: {why}", param)


# -- value types -------------------------------------------------------------------------------

_RAM = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_RAM_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def ram_in_bytes(text: str) -> int:
    """go-units ``RAMInBytes``: ``512M``, ``1.5g``, ``10kb`` (binary units)."""
    match = _RAM.match(text)
    if match is None or match.group(1).count(".") > 1:
        raise ValueError(f"invalid size: '{text}'")
    unit = (match.group(2) or "").lower()
    return int(float(match.group(1)) * _RAM_UNITS.get(unit, 1))


_RATIONAL = re.compile(r"^[+-]?(?:\d+/\d+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$")


def parse_cpus(text: str) -> int:
    """docker/cli ``opts.ParseCPUs``: a rational number of CPUs → nano CPUs."""
    if not _RATIONAL.match(text):
        raise ValueError(f"failed to parse {text} as a rational number")
    try:
        cpus = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"failed to parse {text} as a rational number") from None
    nano = cpus * 10**9
    if nano.denominator != 1:
        raise ValueError("value is too precise")
    return int(nano)


class _Type(click.ParamType[Any]):
    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as e:
            raise fail(value, param, str(e)) from None


class MemBytes(_Type):
    name = "bytes"

    def parse(self, text: str) -> int:
        return ram_in_bytes(text)


class NanoCPUs(_Type):
    name = "decimal"

    def parse(self, text: str) -> int:
        return parse_cpus(text)


class Float32(_Type):
    """pflag's float32: ``strconv.ParseFloat(s, 32)``."""

    name = "float"

    def parse(self, text: str) -> float:
        try:
            if "_" in text:
                raise ValueError
            return float(text)
        except ValueError:
            raise ValueError(f'strconv.ParseFloat: parsing {gostr.quote(text)}: invalid syntax') from None


class EnvVar(_Type):
    """docker/cli ``opts.ValidateEnv``: a bare name takes the value it has here, if any."""

    name = "list"

    def parse(self, text: str) -> str:
        return validate_env(text)


def validate_env(text: str) -> str:
    key, eq, _ = text.partition("=")
    if not key:
        raise ValueError(f"invalid environment variable: {text}")
    if eq:
        return text
    found = os.environ.get(key)
    return f"{key}={found}" if found is not None else text


class Label(_Type):
    """docker/cli ``opts.ValidateLabel``."""

    name = "list"

    def parse(self, text: str) -> str:
        key = text.partition("=")[0].lstrip(" \t")
        if not key:
            raise ValueError(f"invalid label '{text}': empty name")
        if any(blank in key for blank in " \t"):
            raise ValueError(f"label '{key}' contains whitespaces")
        return text


class ShellWords(_Type):
    """docker/cli's ``ShlexOpt`` (``update --args``): words split as a shell splits them."""

    name = "command"

    def parse(self, text: str) -> list[str]:
        try:
            return shlex.split(text)
        except ValueError as e:
            why = ("EOF found after escape character" if "escaped" in str(e)
                   else "EOF found when expecting closing quote")
            raise ValueError(why) from None


MEM_BYTES = MemBytes()
SHELL_WORDS = ShellWords()
NANO_CPUS = NanoCPUs()
FLOAT32 = Float32()
ENV_VAR = EnvVar()
LABEL = Label()


def read_env_file(path: str) -> list[str]:
    """docker/cli ``opts.ParseEnvFile``: ``KEY=VALUE`` lines, ``#`` comments, a bare name
    takes its value from here; an error names the file and line as Docker does."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        why = (e.strerror or str(e))
        raise CLIError(f"open {path}: {why[:1].lower()}{why[1:]}") from None
    except ValueError:
        raise CLIError(f"open {path}: invalid argument") from None
    lines = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, eq, _ = line.partition("=")
        if not key:
            raise CLIError(f"invalid environment variable: {line}")
        if any(c.isspace() for c in key):
            raise CLIError(f"variable '{key}' contains whitespaces")
        lines.append(line if eq else validate_env(key))
    return lines


# -- the spec ------------------------------------------------------------------------------------

@dataclass
class Policy:
    """--update-* or --rollback-*: None where the flag was not given."""

    parallelism: int | None = None
    delay_ns: int | None = None
    failure_action: str | None = None
    monitor_ns: int | None = None
    max_failure_ratio: float | None = None
    order: str | None = None

    def given(self) -> bool:
        return any(v is not None for v in vars(self).values())


@dataclass
class TaskOptions:
    """What create and update share (None: not given)."""

    replicas: int | None = None
    max_replicas: int | None = None
    reserve_cpu: int | None = None
    reserve_memory: int | None = None
    limit_cpu: int | None = None
    limit_memory: int | None = None
    restart_condition: str | None = None
    restart_delay_ns: int | None = None
    restart_max_attempts: int | None = None
    restart_window_ns: int | None = None
    stop_signal: str | None = None
    stop_grace_ns: int | None = None
    workdir: str | None = None
    user: str | None = None
    update: Policy = field(default_factory=Policy)
    rollback: Policy = field(default_factory=Policy)


@dataclass
class CreateOptions(TaskOptions):
    name: str = ""
    mode: str = "replicated"
    env: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)


@dataclass
class UpdateOptions(TaskOptions):
    image: str | None = None
    args: list[str] | None = None
    env_add: list[str] = field(default_factory=list)
    env_rm: list[str] = field(default_factory=list)
    label_add: list[str] = field(default_factory=list)
    label_rm: list[str] = field(default_factory=list)
    constraint_add: list[str] = field(default_factory=list)
    constraint_rm: list[str] = field(default_factory=list)
    force: bool = False


def key_values(items: list[str]) -> dict[str, str]:
    return {key: value for key, _, value in (item.partition("=") for item in items)}


def _apply_policy(target: spb.UpdateConfig, policy: Policy) -> None:
    if policy.parallelism is not None:
        target.parallelism = policy.parallelism
    if policy.delay_ns is not None:
        target.delay_ns = policy.delay_ns
    if policy.failure_action is not None:
        target.failure_action = policy.failure_action
    if policy.monitor_ns is not None:
        target.monitor_ns = policy.monitor_ns
    if policy.max_failure_ratio is not None:
        target.max_failure_ratio = policy.max_failure_ratio
    if policy.order is not None:
        target.order = policy.order


def _apply_task(spec: spb.ServiceSpec, o: TaskOptions) -> None:
    """The fields create and update set the same way."""
    t = spec.task_template
    if o.max_replicas is not None:
        t.placement.max_replicas = o.max_replicas
    if o.reserve_cpu is not None:
        t.resources.reservations.nano_cpus = o.reserve_cpu
    if o.reserve_memory is not None:
        t.resources.reservations.memory_bytes = o.reserve_memory
    if o.limit_cpu is not None:
        t.resources.limits.nano_cpus = o.limit_cpu
    if o.limit_memory is not None:
        t.resources.limits.memory_bytes = o.limit_memory
    if o.restart_condition is not None:
        t.restart_policy.condition = o.restart_condition
    if o.restart_delay_ns is not None:
        t.restart_policy.delay_ns = o.restart_delay_ns
    if o.restart_max_attempts is not None:
        t.restart_policy.max_attempts = o.restart_max_attempts
    if o.restart_window_ns is not None:
        t.restart_policy.window_ns = o.restart_window_ns
    if o.stop_signal is not None:
        t.stop_signal = o.stop_signal
    if o.stop_grace_ns is not None:
        t.stop_grace_period_ns = o.stop_grace_ns
    if o.workdir is not None:
        t.workdir = o.workdir
    if o.user is not None:
        t.user = o.user
    if o.update.given():
        _apply_policy(spec.update_config, o.update)
    if o.rollback.given():
        _apply_policy(spec.rollback_config, o.rollback)


def build_spec(o: CreateOptions, image: str, args: list[str]) -> spb.ServiceSpec:
    """``service create``'s spec, or Docker's client-side refusal."""
    from swarmctl.wire import spb

    if o.mode not in ("replicated", "global"):
        raise CLIError(f"Unknown mode: {o.mode}, only replicated and global supported")
    if o.mode == "global" and o.replicas is not None:
        raise CLIError("replicas can only be used with replicated or replicated-job mode")
    if o.mode == "global" and o.max_replicas:
        raise CLIError("replicas-max-per-node can only be used with replicated or replicated-job mode")
    env = [line for path in o.env_files for line in read_env_file(path)] + list(o.env)
    spec = spb.ServiceSpec(name=o.name, labels=key_values(o.labels), mode=o.mode)
    if o.replicas is not None:
        spec.replicas = o.replicas
    t = spec.task_template
    t.program = image
    t.args.extend(args)
    t.env.extend(env)
    if o.constraints:  # touching a submessage would make it present
        t.placement.constraints.extend(o.constraints)
    _apply_task(spec, o)
    return spec


def _env_key(item: str) -> str:
    return item.partition("=")[0]


def apply_update(spec: spb.ServiceSpec, o: UpdateOptions) -> None:
    """Docker's ``updateService``: what each flag changes in the spec that was read."""
    if o.replicas is not None:
        if spec.mode == "global":
            raise CLIError("replicas can only be used with replicated mode")
        spec.replicas = o.replicas
    t = spec.task_template
    if o.image is not None:
        t.program = o.image
    if o.args is not None:
        del t.args[:]
        t.args.extend(o.args)
    if o.env_rm or o.env_add:  # removals first, then additions replace a key where it is
        env = [item for item in t.env if _env_key(item) not in set(o.env_rm)]
        for item in o.env_add:
            keys = [_env_key(e) for e in env]
            if _env_key(item) in keys:
                env[keys.index(_env_key(item))] = item
            else:
                env.append(item)
        del t.env[:]
        t.env.extend(env)
    for key in o.label_rm:  # labels: removals, then additions
        spec.labels.pop(key, None)
    spec.labels.update(key_values(o.label_add))
    if o.constraint_add or o.constraint_rm:  # constraints: additions, then removals (Docker's order)
        constraints = list(t.placement.constraints) + list(o.constraint_add)
        removed = set(o.constraint_rm)
        del t.placement.constraints[:]
        t.placement.constraints.extend(sorted(c for c in constraints if c not in removed))  # Docker sorts
    _apply_task(spec, o)
    if o.force:
        t.force_update += 1


def go_float(value: float) -> str:
    """Go's ``%v`` of a float64 (``0.5``, ``2``, ``1e+21``)."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, _, exp = text.partition("e")
        sign = "-" if exp.startswith("-") else "+"
        text = f"{mantissa}e{sign}{exp.lstrip('+-').zfill(2)}"
    return text
