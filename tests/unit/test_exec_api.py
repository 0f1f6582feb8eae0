"""The executor's spec checks: what it refuses before anything runs, in Docker's words."""

from __future__ import annotations

import signal

import pytest

from swarmd.agent.exec.api import (ExecError, TaskRuntimeSpec, TaskState, TaskStatus, check_spec, check_task_id,
                                   parse_stop_signal)


def spec(**kw: object) -> TaskRuntimeSpec:
    base: dict[str, object] = dict(task_id="t1", service_id="s1", service_name="web", slot=1, node_id="n1",
                                   node_hostname="h1", program="/bin/true")
    base.update(kw)
    return TaskRuntimeSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, number", [("", signal.SIGTERM), ("SIGTERM", signal.SIGTERM), ("TERM", signal.SIGTERM),
                                          ("term", signal.SIGTERM), ("sigusr1", signal.SIGUSR1), ("9", 9),
                                          (" SIGINT ", signal.SIGINT)])
def test_stop_signal_names(text: str, number: int) -> None:
    assert parse_stop_signal(text) == number


@pytest.mark.parametrize("text", ["SIGFOO", "0", "999", "SIG", "-1", "TERM;rm", "Signals"])
def test_bad_stop_signal_is_docker_text(text: str) -> None:
    with pytest.raises(ExecError, match=r"^Invalid signal: "):
        parse_stop_signal(text)


def test_spec_round_trips_through_its_dict() -> None:
    s = spec(args=("-c", "exit 3"), env=("A=1", "B=x=y"), cpu_nanos=5, memory_bytes=7, stop_grace_seconds=1.5)
    assert TaskRuntimeSpec.from_dict(s.to_dict()) == s
    assert s.to_dict()["args"] == ["-c", "exit 3"]


@pytest.mark.parametrize("change, message", [
    (dict(program=""), "task has no program to run"),
    (dict(args=("a\0b",)), "cannot contain NUL"),
    (dict(env=("A\0=1",)), "cannot contain NUL"),
    (dict(env=("NOVALUE",)), "invalid environment variable 'NOVALUE': expected KEY=VALUE"),
    (dict(env=("=x",)), "invalid environment variable '': expected KEY=VALUE"),
    (dict(workdir="rel/dir"), "the working directory 'rel/dir' is invalid, it needs to be an absolute path"),
    (dict(stop_grace_seconds=-1.0), "stop grace period must be a non-negative duration"),
    (dict(stop_grace_seconds=float("nan")), "stop grace period must be a non-negative duration"),
    (dict(memory_bytes=-1), "resource limits cannot be negative"),
    (dict(stop_signal="NOPE"), "Invalid signal: NOPE"),
    (dict(task_id="../etc"), "invalid task ID '../etc'"),
])
def test_spec_refusals(change: dict[str, object], message: str) -> None:
    with pytest.raises(ExecError) as info:
        check_spec(spec(**change))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_env_values_never_in_errors() -> None:
    with pytest.raises(ExecError) as info:
        check_spec(spec(env=("GOOD=secret-value", "BAD")))
    assert "secret-value" not in str(info.value)


def test_valid_spec_gives_its_signal() -> None:
    assert check_spec(spec(stop_signal="SIGQUIT", workdir="/tmp", env=("A=",))) == signal.SIGQUIT


@pytest.mark.parametrize("task_id", ["", ".hidden", "a/b", "x" * 65, "a b", "é"])
def test_task_ids_are_safe_directory_names(task_id: str) -> None:
    with pytest.raises(ExecError):
        check_task_id(task_id)


def test_final_states() -> None:
    assert TaskStatus("t", TaskState.COMPLETE).final and TaskStatus("t", TaskState.FAILED).final
    assert not TaskStatus("t", TaskState.RUNNING).final and not TaskStatus("t", TaskState.STARTING).final
