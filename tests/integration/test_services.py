"""Services on real swarms: the Control calls over the control socket, the leader's scheduler
and orchestrator placing, scaling, moving and removing tasks (the daemons run no tasks here:
placement is what these tests look at: a placed task is assigned, or further on its way to
running, since the nodes run their tasks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from tests.harness import Daemon, join, leader_of, wait_for

Factory = Callable[..., Daemon]
TIMEOUT = 10
SETTLE = 30   # bound of every wait for the leader's components


@contextmanager
def control(d: Daemon) -> Iterator[pb_grpc.ControlStub]:
    with grpc.insecure_channel(f"unix:{d.socket}") as ch:
        yield pb_grpc.ControlStub(ch)


def spec(name: str = "web", replicas: int | None = 1, **template: object) -> spb.ServiceSpec:
    msg = spb.ServiceSpec(name=name, task_template=spb.TaskTemplate(program="/bin/sleep", args=["1000"]))
    if replicas is not None:
        msg.replicas = replicas
    for key, value in template.items():
        if key == "constraints":
            msg.task_template.placement.constraints.extend(value)  # type: ignore[arg-type]
        elif key == "max_replicas":
            msg.task_template.placement.max_replicas = value  # type: ignore[assignment]
        elif key == "mode":
            msg.mode = value  # type: ignore[assignment]
        else:
            raise AssertionError(key)
    return msg


def create(c: pb_grpc.ControlStub, s: spb.ServiceSpec) -> spb.Service:
    return c.CreateService(spb.CreateServiceRequest(spec=s), timeout=TIMEOUT).service


def tasks(c: pb_grpc.ControlStub, service: str, *filters: str) -> list[spb.Task]:
    return list(c.ListTasks(spb.ListTasksRequest(services=[service], filters=list(filters)), timeout=TIMEOUT).tasks)


def running(c: pb_grpc.ControlStub, service: str) -> list[spb.Task]:
    return tasks(c, service, "desired-state=running")


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    return err.code(), err.details()  # type: ignore[attr-defined]


def scale(c: pb_grpc.ControlStub, ref: str, replicas: int) -> spb.Service:
    current = c.GetService(spb.GetServiceRequest(ref=ref), timeout=TIMEOUT).service
    new = spb.ServiceSpec()
    new.CopyFrom(current.spec)
    new.replicas = replicas
    return c.UpdateService(spb.UpdateServiceRequest(ref=ref, version=current.version, spec=new),
                           timeout=TIMEOUT).service


PLACED = ("assigned", "accepted", "preparing", "ready", "starting", "running")


def placed(t: spb.Task) -> bool:
    """Given to a node by the scheduler (the node may have started it since)."""
    return bool(t.node_id) and t.status.state in PLACED


def assigned(ts: list[spb.Task]) -> bool:
    return all(placed(t) for t in ts)


def swarm(daemons: Factory, workers: int) -> tuple[Daemon, list[Daemon]]:
    m = daemons("m1")
    m.init()
    ws = [daemons(f"w{i}") for i in range(1, workers + 1)]
    for w in ws:
        join(w, m)
    with control(m) as c:
        wait_for(lambda: all(n.state == "ready" for n in c.ListNodes(pb.ListNodesRequest(), timeout=TIMEOUT).nodes)
                 and len(c.ListNodes(pb.ListNodesRequest(), timeout=TIMEOUT).nodes) == workers + 1,
                 SETTLE, what="every node ready")
    return m, ws


def test_create_assigns_scales_and_counts(daemons: Factory) -> None:
    m, _ = swarm(daemons, 1)
    with control(m) as c:
        service = create(c, spec(replicas=3))
        assert len(service.id) == 25 and service.spec.replicas == 3
        assert service.spec.update_config.monitor_ns == 5_000_000_000   # Docker's defaults filled in
        wait_for(lambda: len(running(c, "web")) == 3 and assigned(running(c, "web")), SETTLE, what="3 tasks assigned")
        ts = running(c, "web")
        assert sorted(t.slot for t in ts) == [1, 2, 3]
        assert {t.node_hostname for t in ts} == {"m1", "w1"}   # spread over both ready nodes
        assert all(t.status.message == "scheduler assigned task to node" for t in ts if t.status.state == "assigned")
        listed = c.ListServices(spb.ListServicesRequest(), timeout=TIMEOUT).services
        assert [(s.spec.name, s.desired_tasks, s.running_tasks) for s in listed] == [("web", 3, 0)]
        # By unique ID prefix and by name alike.
        assert c.GetService(spb.GetServiceRequest(ref=service.id[:5]), timeout=TIMEOUT).service.id == service.id
        one = ts[0]
        assert c.GetTask(spb.GetTaskRequest(ref=one.id[:8]), timeout=TIMEOUT).task.id == one.id

        scale(c, "web", 5)
        wait_for(lambda: len(running(c, "web")) == 5 and assigned(running(c, "web")), SETTLE, what="scaled to 5")
        scale(c, "web", 1)
        wait_for(lambda: len(running(c, "web")) == 1, SETTLE, what="scaled to 1")
        gone = [t for t in tasks(c, "web") if t.desired_state == "remove"]
        assert len(gone) == 4   # told to go; the nodes stop them, then the reaper deletes them

        # A spec based on an old version is refused, and changes nothing.
        stale = c.GetService(spb.GetServiceRequest(ref="web"), timeout=TIMEOUT).service
        scale(c, "web", 2)
        new = spb.ServiceSpec()
        new.CopyFrom(stale.spec)
        new.replicas = 7
        assert refusal(lambda: c.UpdateService(spb.UpdateServiceRequest(ref="web", version=stale.version, spec=new),
                                               timeout=TIMEOUT)) == (grpc.StatusCode.UNKNOWN,
                                                                     "rpc error: code = Unknown desc = update out of sequence")
        assert c.GetService(spb.GetServiceRequest(ref="web"), timeout=TIMEOUT).service.spec.replicas == 2

        # Rollback returns to the spec before the last update.
        current = c.GetService(spb.GetServiceRequest(ref="web"), timeout=TIMEOUT).service
        back = c.UpdateService(spb.UpdateServiceRequest(ref="web", version=current.version, rollback=True),
                               timeout=TIMEOUT).service
        assert back.spec.replicas == 1 and back.update_status.state == "rollback_started"


def test_unschedulable_tasks_wait_with_dockers_explanation(daemons: Factory) -> None:
    m, ws = swarm(daemons, 1)
    with control(m) as c:
        create(c, spec("zoned", replicas=1, constraints=["node.labels.zone==x"]))
        create(c, spec("capped", replicas=3, max_replicas=1))
        wait_for(lambda: [t.status.state for t in tasks(c, "zoned")] == ["pending"], SETTLE, what="pending task")
        [task] = tasks(c, "zoned")
        assert (task.node_id, task.status.err) == ("", "no suitable node (scheduling constraints not satisfied "
                                                       "on 2 nodes)")

        def capped() -> list[str]:
            return sorted("placed" if placed(t) else t.status.state for t in tasks(c, "capped"))
        wait_for(lambda: capped() == ["pending", "placed", "placed"], SETTLE, what="one capped task pending")
        [waiting] = [t for t in tasks(c, "capped") if t.status.state == "pending"]
        assert waiting.status.err == "no suitable node (max replicas per node limit exceed)"
        assert len({t.node_id for t in tasks(c, "capped") if t.node_id}) == 2

        # A node that gets the label takes the waiting task: the scheduler follows node changes.
        c.UpdateNode(pb.UpdateNodeRequest(ref=ws[0].hostname, label_add=["zone=x"]), timeout=TIMEOUT)
        wait_for(lambda: [(placed(t), t.node_hostname) for t in tasks(c, "zoned")] == [(True, "w1")],
                 SETTLE, what="the labelled node to get the task")


def test_drain_moves_tasks_and_global_follows_nodes(daemons: Factory) -> None:
    m, ws = swarm(daemons, 2)
    with control(m) as c:
        create(c, spec("rep", replicas=6))
        create(c, spec("glob", replicas=None, mode="global"))
        wait_for(lambda: len(running(c, "rep")) == 6 and assigned(running(c, "rep")), SETTLE, what="6 assigned")
        wait_for(lambda: len(running(c, "glob")) == 3 and assigned(running(c, "glob")), SETTLE, what="global on 3")
        on_w1 = {t.id for t in running(c, "rep") if t.node_hostname == "w1"}
        assert on_w1
        c.UpdateNode(pb.UpdateNodeRequest(ref="w1", availability="drain"), timeout=TIMEOUT)

        def moved() -> bool:
            ts = tasks(c, "rep")
            old = [t for t in ts if t.id in on_w1]
            live = [t for t in ts if t.desired_state in ("running", "ready")]
            return all(t.desired_state == "shutdown" for t in old) and len(live) == 6 and \
                all(t.node_hostname in ("m1", "w2") and placed(t) for t in live)
        wait_for(moved, SETTLE, what="the drained node's tasks replaced elsewhere")
        glob = tasks(c, "glob")
        wait_for(lambda: sorted(t.node_hostname for t in running(c, "glob")) == ["m1", "w2"], SETTLE,
                 what="the global task on the drained node shut down")
        assert [t.desired_state for t in glob if t.node_hostname == "w1"] in (["running"], ["shutdown"])
        [listed] = c.ListServices(spb.ListServicesRequest(filters=["name=glob"]), timeout=TIMEOUT).services
        assert listed.desired_tasks == 2   # a global service wants a task per eligible node
        # The node back: the global service gets a task there again; replicated tasks stay put.
        c.UpdateNode(pb.UpdateNodeRequest(ref="w1", availability="active"), timeout=TIMEOUT)
        wait_for(lambda: sorted(t.node_hostname for t in running(c, "glob")) == ["m1", "w1", "w2"], SETTLE,
                 what="a global task on the reactivated node")
        assert all(t.node_hostname != "w1" for t in running(c, "rep"))


def test_remove_service_and_its_tasks(daemons: Factory) -> None:
    m, _ = swarm(daemons, 0)
    with control(m) as c:
        create(c, spec("placed", replicas=2))
        create(c, spec("waiting", replicas=2, constraints=["node.role==worker"]))
        wait_for(lambda: assigned(running(c, "placed")) and len(running(c, "placed")) == 2, SETTLE, what="placed")
        wait_for(lambda: [t.status.state for t in tasks(c, "waiting")] == ["pending", "pending"], SETTLE,
                 what="pending")
        waiting_ids = [t.id for t in tasks(c, "waiting")]
        placed_ids = [t.id for t in tasks(c, "placed")]
        for name in ("placed", "waiting"):
            c.RemoveService(spb.RemoveServiceRequest(ref=name), timeout=TIMEOUT)
            assert refusal(lambda: c.GetService(spb.GetServiceRequest(ref=name), timeout=TIMEOUT)) == \
                (grpc.StatusCode.NOT_FOUND, f"service {name} not found")

        def all_tasks() -> dict[str, spb.Task]:
            return {t.id: t for t in c.ListTasks(spb.ListTasksRequest(), timeout=TIMEOUT).tasks}
        # Tasks that never reached a node go at once; placed ones are told to go (their node
        # stops them, then they are deleted).
        wait_for(lambda: not set(waiting_ids) & set(all_tasks()), SETTLE, what="the pending tasks deleted")
        assert {all_tasks()[i].desired_state for i in placed_ids} == {"remove"}
        assert c.ListServices(spb.ListServicesRequest(), timeout=TIMEOUT).services == []


def test_bad_input_is_refused_and_creates_nothing(daemons: Factory) -> None:
    m, _ = swarm(daemons, 0)
    with control(m) as c:
        create(c, spec("web"))
        cases = [
            (spec("web"), grpc.StatusCode.ALREADY_EXISTS,
             "rpc error: code = AlreadyExists desc = name conflicts with an existing object: service web already exists"),
            (spec("WEB"), grpc.StatusCode.ALREADY_EXISTS,
             "rpc error: code = AlreadyExists desc = name conflicts with an existing object: service WEB already exists"),
            (spec("bad_name!"), grpc.StatusCode.INVALID_ARGUMENT,
             "rpc error: code = InvalidArgument desc = name must be valid as a DNS name component"),
            (spec("g", replicas=2, mode="global"), grpc.StatusCode.INVALID_ARGUMENT,
             "replicas can only be used with replicated or replicated-job mode"),
            (spec("m", mode="bogus"), grpc.StatusCode.INVALID_ARGUMENT,
             "Unknown mode: bogus, only replicated and global supported"),
            (spec("c", constraints=["node.labels.zone=x"]), grpc.StatusCode.UNKNOWN,
             "rpc error: code = Unknown desc = constraint expected one operator from ==, !="),
            (spb.ServiceSpec(name="noprog"), grpc.StatusCode.INVALID_ARGUMENT,
             "rpc error: code = InvalidArgument desc = ContainerSpec: image reference must be provided"),
        ]
        for bad, code, text in cases:
            assert refusal(lambda: create(c, bad)) == (code, text), bad.name
        cpu = spec("cpu")
        cpu.task_template.resources.limits.nano_cpus = -1_000_000_000
        assert refusal(lambda: create(c, cpu)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "rpc error: code = InvalidArgument desc = invalid cpu value -1: Must be at least 0.001")
        assert [s.spec.name for s in c.ListServices(spb.ListServicesRequest(), timeout=TIMEOUT).services] == ["web"]
        wait_for(lambda: len(c.ListTasks(spb.ListTasksRequest(), timeout=TIMEOUT).tasks) == 1, SETTLE,
                 what="the one good service's task")

        # Refs and filters, in Docker's daemon's words.
        assert refusal(lambda: c.GetService(spb.GetServiceRequest(ref="nosuch"), timeout=TIMEOUT)) == \
            (grpc.StatusCode.NOT_FOUND, "service nosuch not found")
        assert refusal(lambda: c.RemoveService(spb.RemoveServiceRequest(ref="nosuch"), timeout=TIMEOUT)) == \
            (grpc.StatusCode.NOT_FOUND, "service nosuch not found")
        assert refusal(lambda: c.ListServices(spb.ListServicesRequest(filters=["bogus=1"]), timeout=TIMEOUT)) == \
            (grpc.StatusCode.INVALID_ARGUMENT, "Invalid filter 'bogus'")
        assert c.ListServices(spb.ListServicesRequest(filters=["mode=bogus"]), timeout=TIMEOUT).services == []
        assert refusal(lambda: tasks(c, "web", "bogus=1")) == (grpc.StatusCode.INVALID_ARGUMENT, "Invalid filter 'bogus'")
        assert refusal(lambda: tasks(c, "web", "desired-state=bogus")) == \
            (grpc.StatusCode.INVALID_ARGUMENT, "Invalid desired-state filter: 'bogus'")
        assert refusal(lambda: tasks(c, "nosuch")) == (grpc.StatusCode.NOT_FOUND, "service nosuch not found")
        assert refusal(lambda: c.GetTask(spb.GetTaskRequest(ref="nosuch"), timeout=TIMEOUT)) == \
            (grpc.StatusCode.NOT_FOUND, "task nosuch not found")
        [task] = c.ListTasks(spb.ListTasksRequest(nodes=["self"]), timeout=TIMEOUT).tasks
        assert task.node_hostname == "m1"
        # What an update may not change, in swarmkit's words.
        web = c.GetService(spb.GetServiceRequest(ref="web"), timeout=TIMEOUT).service
        for field, value, text in (("mode", "global", "service mode change is not allowed"),
                                   ("name", "other", "renaming services is not supported")):
            changed = spb.ServiceSpec()
            changed.CopyFrom(web.spec)
            setattr(changed, field, value)
            if field == "mode":
                changed.ClearField("replicas")
            assert refusal(lambda: c.UpdateService(spb.UpdateServiceRequest(ref="web", version=web.version,
                                                                            spec=changed), timeout=TIMEOUT)) == \
                (grpc.StatusCode.UNIMPLEMENTED, f"rpc error: code = Unimplemented desc = {text}")
        # A rollback with nothing to go back to.
        web = c.GetService(spb.GetServiceRequest(ref="web"), timeout=TIMEOUT).service
        assert refusal(lambda: c.UpdateService(spb.UpdateServiceRequest(ref="web", version=web.version, rollback=True),
                                               timeout=TIMEOUT)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"rpc error: code = FailedPrecondition desc = service {web.id} does not have a previous spec")


def test_a_worker_serves_no_service_call(daemons: Factory) -> None:
    m, [w] = swarm(daemons, 1)
    with control(w) as c:
        for call in (lambda: c.ListServices(spb.ListServicesRequest(), timeout=TIMEOUT),
                     lambda: create(c, spec("w")),
                     lambda: c.ListTasks(spb.ListTasksRequest(), timeout=TIMEOUT)):
            code, text = refusal(call)
            assert text.startswith("This node is not a swarm manager. Worker nodes can't be used"), text
    with control(m) as c:
        assert c.ListServices(spb.ListServicesRequest(), timeout=TIMEOUT).services == []


def test_a_new_leader_keeps_reconciling(daemons: Factory) -> None:
    ms = [daemons(f"m{i}") for i in (1, 2, 3)]
    ms[0].init("--dispatcher-heartbeat", "1s")
    for other in ms[1:]:
        join(other, ms[0], "manager")
    first = leader_of(ms)
    follower = next(d for d in ms if d is not first)
    with control(follower) as c:   # forwarded to the leader
        create(c, spec("web", replicas=3))
        wait_for(lambda: len(running(c, "web")) == 3 and assigned(running(c, "web")), SETTLE, what="3 assigned")
        # "self" is the manager that was asked, not the leader the call is forwarded to.
        mine = c.ListTasks(spb.ListTasksRequest(nodes=["self"]), timeout=TIMEOUT).tasks
        assert {t.node_hostname for t in mine} == {follower.hostname}
    first.kill9()
    rest = [d for d in ms if d is not first]
    second = leader_of(rest)
    with control(second) as c:
        # The old leader's node goes down: its tasks are replaced on the managers left.
        def replaced() -> bool:
            live = running(c, "web") + tasks(c, "web", "desired-state=shutdown")
            current = [t for t in tasks(c, "web") if t.desired_state in ("running", "ready")]
            return len(current) == 3 and all(t.node_hostname != first.hostname and placed(t)
                                             for t in current) and bool(live)
        wait_for(replaced, SETTLE, what="the dead node's tasks replaced by the new leader")
        scale(c, "web", 5)
        wait_for(lambda: len([t for t in tasks(c, "web") if t.desired_state in ("running", "ready")
                              and placed(t)]) == 5, SETTLE, what="scaled by the new leader")
