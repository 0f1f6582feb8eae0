"""Services and tasks between the wire and the store: unset fields take Docker's defaults,
set ones (zero included, where zero is not the default) are kept; a round trip changes
nothing; Docker's list filters and their refusals."""

from __future__ import annotations

import pytest

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.errors import SwarmError
from swarmd.manager import servicepb, validate
from swarmd.manager.controlapi.service import parse_filters, service_filter, task_counts
from swarmd.store import specs
from tests.servicelib import service, task


def test_unset_fields_take_dockers_defaults_and_a_set_zero_is_kept() -> None:
    msg = spb.ServiceSpec(name="web", task_template=spb.TaskTemplate(program="/bin/sleep"))
    spec = validate.service_spec(servicepb.spec_dict(msg))
    assert spec["replicas"] == 1 and spec["mode"] == "replicated"
    assert spec["task_template"]["restart_policy"] == specs.DEFAULT_RESTART_POLICY
    assert spec["update_config"] == specs.DEFAULT_UPDATE_CONFIG
    assert spec["task_template"]["stop_grace_period_ns"] == specs.DEFAULT_STOP_GRACE_PERIOD_NS
    msg.replicas = 0
    msg.update_config.parallelism = 0
    msg.task_template.restart_policy.delay_ns = 0
    spec = validate.service_spec(servicepb.spec_dict(msg))
    assert (spec["replicas"], spec["update_config"]["parallelism"],
            spec["task_template"]["restart_policy"]["delay_ns"]) == (0, 0, 0)


def test_a_stored_service_round_trips_through_the_wire() -> None:
    svc = service("web", labels={"a": "b"}, task_template={
        "env": ["A=1"], "placement": {"constraints": ["node.role==worker"], "max_replicas": 2},
        "resources": {"reservations": {"nano_cpus": 500_000_000, "memory_bytes": 64 << 20}}},
        update_config={"order": "start-first", "max_failure_ratio": 0.25})
    msg = servicepb.service(svc, (1, 2, 3))
    assert (msg.running_tasks, msg.desired_tasks, msg.completed_tasks) == (1, 2, 3)
    assert not msg.HasField("previous_spec") and not msg.HasField("update_status")
    assert validate.service_spec(servicepb.spec_dict(msg.spec)) == svc["spec"]


def test_a_task_carries_its_node_hostname_and_drops_store_only_fields() -> None:
    svc = service("web")
    t = task(svc, "t1", node_id="n1", state="running", applied_at="2026-01-01T00:00:01Z")
    msg = servicepb.task(t, "host1")
    assert (msg.node_hostname, msg.status.state, msg.spec.program, msg.slot) == ("host1", "running", "/bin/sleep", 1)


def test_filters_in_dockers_words() -> None:
    assert parse_filters(["name=a", "name=b", "mode=global"], ("name", "mode")) == \
        {"name": ["a", "b"], "mode": ["global"]}
    with pytest.raises(SwarmError) as info:
        parse_filters(["bogus=1"], ("name",))
    assert info.value.message == "Invalid filter 'bogus'"
    with pytest.raises(SwarmError) as info:
        parse_filters(["name"], ("name",))
    assert info.value.message == "bad format of filter (expected name=value)"
    web, glob = service("web", labels={"tier": "front"}), service("glob", mode="global", replicas=0)
    assert [s["spec"]["name"] for s in (web, glob) if service_filter(["name=we"])(s)] == ["web"]
    assert [s["spec"]["name"] for s in (web, glob) if service_filter(["mode=global"])(s)] == ["glob"]
    assert [s["spec"]["name"] for s in (web, glob) if service_filter(["label=tier=front"])(s)] == ["web"]
    assert [s for s in (web, glob) if service_filter(["mode=bogus"])(s)] == []


def test_task_counts_are_dockers_service_status() -> None:
    web = service("web", replicas=3)
    tasks = [task(web, "a", state="running"), task(web, "b", state="complete", desired="shutdown"),
             task(web, "c", state="running", desired="shutdown")]
    assert task_counts(web, tasks) == (2, 3, 1)   # desired: the replica count
    glob = service("glob", mode="global", replicas=0)
    assert task_counts(glob, [task(glob, "g1", slot=0, node_id="n1", state="running"),
                              task(glob, "g2", slot=0, node_id="n2", state="running", desired="shutdown")]) == (2, 1, 0)

