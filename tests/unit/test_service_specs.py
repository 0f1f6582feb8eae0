"""Service specs: Docker's defaults, Docker's refusals in Docker's order, and the bounds."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from swarmd.errors import SwarmError
from swarmd.manager import validate
from swarmd.store import specs
from swarmd.store.refusal import OpError
from tests.servicelib import SECOND, raw_spec


def refusal(raw: Any) -> SwarmError:
    with pytest.raises(SwarmError) as e:
        validate.service_spec(raw)
    return e.value


def test_a_minimal_spec_gets_dockers_defaults() -> None:
    spec = validate.service_spec({"name": "web", "task_template": {"program": "/bin/true"}})
    assert spec["mode"] == "replicated" and spec["replicas"] == 1 and spec["labels"] == {}
    template = spec["task_template"]
    assert template["restart_policy"] == {"condition": "any", "delay_ns": 5 * SECOND, "max_attempts": 0,
                                          "window_ns": 0}
    assert template["stop_grace_period_ns"] == 10 * SECOND
    assert template["resources"] == {"limits": {"nano_cpus": 0, "memory_bytes": 0},
                                     "reservations": {"nano_cpus": 0, "memory_bytes": 0}}
    assert template["placement"] == {"constraints": [], "max_replicas": 0}
    for config in (spec["update_config"], spec["rollback_config"]):
        assert config == {"parallelism": 1, "delay_ns": 0, "failure_action": "pause", "monitor_ns": 5 * SECOND,
                          "max_failure_ratio": 0.0, "order": "stop-first"}


def test_a_partial_section_keeps_its_fields_and_gets_the_rest_and_normalizing_twice_changes_nothing() -> None:
    spec = validate.service_spec(raw_spec(task_template={"restart_policy": {"condition": "on-failure",
                                                                            "max_attempts": 2}},
                                          update_config={"parallelism": 2, "order": "start-first"}))
    assert spec["task_template"]["restart_policy"] == {"condition": "on-failure", "delay_ns": 5 * SECOND,
                                                       "max_attempts": 2, "window_ns": 0}
    assert spec["update_config"]["parallelism"] == 2 and spec["update_config"]["order"] == "start-first"
    assert spec["update_config"]["monitor_ns"] == 5 * SECOND
    assert specs.normalize(spec) == spec


def test_a_global_service_has_no_replicas() -> None:
    assert validate.service_spec(raw_spec(mode="global"))["replicas"] == 0
    assert refusal(raw_spec(mode="global", replicas=2)).message == \
        "replicas can only be used with replicated or replicated-job mode"
    assert refusal(raw_spec(mode="bogus")).message == "Unknown mode: bogus, only replicated and global supported"


@pytest.mark.parametrize("raw, message, code", [
    # The daemon's conversion (no gRPC prefix: Docker's daemon says these itself).
    (raw_spec(task_template={"restart_policy": {"condition": "bogus"}}), 'invalid RestartCondition: "bogus"',
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(update_config={"failure_action": "bogus"}), "unrecognized update failure action bogus",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(update_config={"order": "sideways"}), "unrecognized update order sideways",
     grpc.StatusCode.INVALID_ARGUMENT),
    # swarmkit's validation, as Docker passes it on.
    (raw_spec("bad name!"), "rpc error: code = InvalidArgument desc = name must be valid as a DNS name component",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(""), "rpc error: code = InvalidArgument desc = meta: name must be provided",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec("a" * 64), "rpc error: code = InvalidArgument desc = name must be 63 characters or fewer",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(task_template={"resources": {"limits": {"nano_cpus": -SECOND}}}),
     "rpc error: code = InvalidArgument desc = invalid cpu value -1: Must be at least 0.001",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(task_template={"resources": {"reservations": {"nano_cpus": 500}}}),
     "rpc error: code = InvalidArgument desc = invalid cpu value 5e-07: Must be at least 0.001",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(task_template={"resources": {"reservations": {"memory_bytes": 1024}}}),
     "rpc error: code = InvalidArgument desc = invalid memory value 1024: Must be at least 4MiB",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(task_template={"restart_policy": {"delay_ns": -1}}),
     "rpc error: code = InvalidArgument desc = TaskSpec: restart-delay cannot be negative",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(task_template={"restart_policy": {"window_ns": -1}}),
     "rpc error: code = InvalidArgument desc = TaskSpec: restart-window cannot be negative",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(task_template={"placement": {"constraints": ["node.labels.zone=x"]}}),
     "rpc error: code = Unknown desc = constraint expected one operator from ==, !=", grpc.StatusCode.UNKNOWN),
    (raw_spec(task_template={"placement": {"constraints": ["node.role"]}}),
     "rpc error: code = Unknown desc = constraint expected one operator from ==, !=", grpc.StatusCode.UNKNOWN),
    (raw_spec(task_template={"program": ""}),
     "rpc error: code = InvalidArgument desc = ContainerSpec: image reference must be provided",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(replicas=-1), "rpc error: code = InvalidArgument desc = Number of replicas must be non-negative",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(update_config={"delay_ns": -SECOND}),
     "rpc error: code = InvalidArgument desc = TaskSpec: update-delay cannot be negative",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(update_config={"monitor_ns": -1}),
     "rpc error: code = InvalidArgument desc = TaskSpec: update-monitor cannot be negative",
     grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(update_config={"max_failure_ratio": 1.5}),
     "rpc error: code = InvalidArgument desc = TaskSpec: update-maxfailureratio cannot be less than 0 or bigger "
     "than 1", grpc.StatusCode.INVALID_ARGUMENT),
    (raw_spec(task_template={"env": ["=x"]}), "invalid environment variable: =x", grpc.StatusCode.INVALID_ARGUMENT),
])
def test_dockers_refusals(raw: dict[str, Any], message: str, code: grpc.StatusCode) -> None:
    e = refusal(raw)
    assert (e.message, e.code) == (message, code)


@pytest.mark.parametrize("faults, first", [
    # The daemon converts before swarmkit validates: its refusal comes first.
    ({"name": "bad name!", "task_template": {"program": "x", "restart_policy": {"condition": "bogus"}}},
     'invalid RestartCondition: "bogus"'),
    # Then swarmkit's order: name, resources, restart policy, placement, program, mode, update.
    ({"name": "bad name!", "task_template": {"program": "", "placement": {"constraints": ["x"]}}},
     "rpc error: code = InvalidArgument desc = name must be valid as a DNS name component"),
    ({"name": "web", "task_template": {"program": "", "placement": {"constraints": ["x"]}}},
     "rpc error: code = Unknown desc = constraint expected one operator from ==, !="),
    ({"name": "web", "replicas": -1, "task_template": {"program": ""}},
     "rpc error: code = InvalidArgument desc = ContainerSpec: image reference must be provided"),
    ({"name": "web", "replicas": -1, "update_config": {"delay_ns": -1}, "task_template": {"program": "x"}},
     "rpc error: code = InvalidArgument desc = Number of replicas must be non-negative"),
    ({"name": "web", "update_config": {"failure_action": "x"}, "rollback_config": {"order": "y"},
      "task_template": {"program": "x"}}, "unrecognized update failure action x"),
])
def test_a_spec_with_several_faults_gets_the_refusal_docker_gives_first(faults: dict[str, Any], first: str) -> None:
    assert refusal(faults).message == first


def test_apply_accepts_a_constraint_it_cannot_parse_and_the_control_api_does_not() -> None:
    raw = raw_spec(task_template={"placement": {"constraints": ["nope"]}})
    assert specs.normalize(raw)["task_template"]["placement"]["constraints"] == ["nope"]
    assert refusal(raw).code == grpc.StatusCode.UNKNOWN


@pytest.mark.parametrize("template, message", [
    ({"args": ["a"] * (specs.MAX_ARGS + 1)}, f"invalid service spec: {specs.MAX_ARGS + 1} args, at most {specs.MAX_ARGS}"),
    ({"env": ["A=" + "x" * specs.MAX_ENV_BYTES]},
     f"invalid service spec: env take {specs.MAX_ENV_BYTES + 2} bytes, at most {specs.MAX_ENV_BYTES}"),
    ({"program": "/" * (specs.MAX_PROGRAM + 1)},
     f"invalid service spec: program is {specs.MAX_PROGRAM + 1} characters, at most {specs.MAX_PROGRAM}"),
    ({"placement": {"constraints": ["node.role==worker"] * (specs.MAX_CONSTRAINTS + 1)}},
     f"invalid service spec: {specs.MAX_CONSTRAINTS + 1} constraints, at most {specs.MAX_CONSTRAINTS}"),
    ({"placement": {"constraints": ["node.labels.a==" + "x" * specs.MAX_CONSTRAINT]}},
     f"invalid service spec: a constraint is {specs.MAX_CONSTRAINT + 15} characters, at most {specs.MAX_CONSTRAINT}"),
    ({"args": ["a\x00b"]}, "invalid service spec: args cannot hold a NUL character"),
    ({"user": "u" * 256}, "invalid service spec: user is 256 characters, at most 255"),
    ({"stop_grace_period_ns": -1}, "invalid service spec: stop-grace-period cannot be negative"),
    ({"stop_grace_period_ns": 1 << 63}, "invalid service spec: stop_grace_period_ns in task_template must be a "
                                         "64-bit integer"),
    ({"force_update": True}, "invalid service spec: force_update in task_template must be a 64-bit integer"),
    ({"network": "x"}, 'invalid service spec: unknown field "network" in task_template'),
])
def test_every_field_is_bounded(template: dict[str, Any], message: str) -> None:
    with pytest.raises(OpError) as e:
        specs.normalize(raw_spec(task_template=template))
    assert e.value.message == message


def test_labels_and_replicas_are_bounded() -> None:
    too_many = {f"k{i}": "v" for i in range(specs.MAX_LABELS + 1)}
    assert refusal(raw_spec(labels=too_many)).message == \
        f"invalid service spec: {specs.MAX_LABELS + 1} labels, at most {specs.MAX_LABELS}"
    assert refusal(raw_spec(labels={"k": 1})).message == "invalid service spec: a label needs a key and a text value"
    assert refusal(raw_spec(replicas=specs.MAX_REPLICAS + 1)).message == \
        f"invalid service spec: {specs.MAX_REPLICAS + 1} replicas, at most {specs.MAX_REPLICAS}"
    assert validate.service_spec(raw_spec(replicas=specs.MAX_REPLICAS))["replicas"] == specs.MAX_REPLICAS


@pytest.mark.parametrize("value, text", [
    (-1.0, "-1"), (0.001, "0.001"), (1e6, "1e+06"), (100000.0, "100000"), (5e-7, "5e-07"), (0.0001, "0.0001"),
    (1.5, "1.5"), (123456.7, "123456.7"), (1e21, "1e+21"), (-0.0, "-0"), (2.0, "2"), (1.25e-5, "1.25e-05"),
])
def test_floats_print_as_gos_percent_g(value: float, text: str) -> None:
    assert specs.go_float_g(value) == text
