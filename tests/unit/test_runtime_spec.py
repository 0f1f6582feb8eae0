"""What a node runs is the task's spec as assigned: every field of the template reaches the
executor's TaskRuntimeSpec, with Docker's defaults where the spec leaves a field unset."""

from __future__ import annotations

from swarmd.agent.exec.api import DEFAULT_STOP_GRACE_SECONDS
from swarmd.agent.worker import runtime_spec
from swarmd.api.swarm.v1 import services_pb2 as spb


def test_every_field_reaches_the_executor() -> None:
    task = spb.Task(id="t1", service_id="s1", service_name="web", slot=3, node_id="n1", spec=spb.TaskTemplate(
        program="/bin/sleep", args=["10"], env=["A=1", "B=2"], workdir="/srv", user="nobody:nogroup",
        stop_signal="SIGINT", stop_grace_period_ns=1_500_000_000,
        resources=spb.ResourceRequirements(limits=spb.Resources(nano_cpus=500_000_000, memory_bytes=64 << 20),
                                           reservations=spb.Resources(nano_cpus=1, memory_bytes=1))))
    spec = runtime_spec(task, "node-a", "host-a")
    assert (spec.task_id, spec.service_id, spec.service_name, spec.slot) == ("t1", "s1", "web", 3)
    assert (spec.node_id, spec.node_hostname) == ("node-a", "host-a")  # this node's, not the message's
    assert (spec.program, spec.args, spec.env) == ("/bin/sleep", ("10",), ("A=1", "B=2"))
    assert (spec.workdir, spec.user, spec.stop_signal, spec.stop_grace_seconds) == (
        "/srv", "nobody:nogroup", "SIGINT", 1.5)
    assert (spec.cpu_nanos, spec.memory_bytes) == (500_000_000, 64 << 20)  # limits, not reservations


def test_an_unset_grace_period_is_dockers_and_zero_is_zero() -> None:
    unset = runtime_spec(spb.Task(id="t", spec=spb.TaskTemplate(program="/bin/true")), "n", "h")
    assert unset.stop_grace_seconds == DEFAULT_STOP_GRACE_SECONDS
    zero = runtime_spec(spb.Task(id="t", spec=spb.TaskTemplate(program="/bin/true", stop_grace_period_ns=0)), "n", "h")
    assert zero.stop_grace_seconds == 0.0
