"""The converge wait's decisions (``progress.Tracker``), fed with what the manager would answer
and a clock: Docker's frames in Docker's order, and the bounds Docker does not have."""

from __future__ import annotations

from swarmctl import progress
from swarmctl import render_service as r
from swarmctl.wire import spb

TEMPLATE = spb.TaskTemplate(program="bb:latest", args=["sleep", "100000"])


def service(replicas: int | None = 2, mode: str = "replicated", status: spb.UpdateStatus | None = None) -> spb.Service:
    s = spb.Service(id="s" * 25, spec=spb.ServiceSpec(name="web", mode=mode, task_template=TEMPLATE))
    if replicas is not None:
        s.spec.replicas = replicas
    if status is not None:
        s.update_status.CopyFrom(status)
    return s


def task(tid: str, slot: int, state: str, node: str = "n1", desired: str = "running", err: str = "",
         template: spb.TaskTemplate = TEMPLATE, updated: str = "t1") -> spb.Task:
    return spb.Task(id=tid, slot=slot, node_id=node, desired_state=desired, spec=template, updated_at=updated,
                    status=spb.TaskStatus(state=state, err=err))


def text(frames: list[r.Frame]) -> str:
    w = r.FrameWriter(tty=False)
    return "".join(w.write(f) for f in frames)


def poll(tracker: progress.Tracker, svc: spb.Service, tasks: list[spb.Task], now: float,
         active: set[str] | None = None) -> progress.Step:
    """One iteration of ``watch``: the service checks, then (unless they ended it) the tasks."""
    first = tracker.before_tasks(svc, now)
    if first is not None and (first.finished or first.error):
        return first
    step = tracker.after_tasks(svc, tasks, active if active is not None else {"n1", "n2", "n3"}, now)
    if first is not None:
        step.frames[:0] = first.frames
    return step


def test_replicated_create_non_tty_matches_docker() -> None:
    t = progress.Tracker("web")
    svc = service(2)
    out = []
    out.append(poll(t, svc, [], 0.0))
    out.append(poll(t, svc, [task("a", 1, "new"), task("b", 2, "new")], 0.2))
    running = [task("a", 1, "running"), task("b", 2, "running")]
    now = 0.4
    while True:
        step = poll(t, svc, running, now)
        out.append(step)
        if step.finished:
            break
        now += 0.2
    lines = text([f for s in out for f in s.frames]).splitlines()
    assert lines[:5] == ["overall progress: 0 out of 2 tasks", "1/2:  ", "2/2:  ",
                         "overall progress: 0 out of 2 tasks", "overall progress: 0 out of 2 tasks"]
    assert lines[5] == "overall progress: 2 out of 2 tasks"
    waits = [line for line in lines if line.startswith("verify: Waiting")]
    assert waits[0] == "verify: Waiting 5 seconds to verify that tasks are stable..."
    assert waits[-1] == "verify: Waiting 1 seconds to verify that tasks are stable..."
    assert [int(w.split()[2]) for w in waits] == sorted((int(w.split()[2]) for w in waits), reverse=True)
    assert lines[-1] == "verify: Service converged"
    assert all(s.error is None for s in out)


def test_global_shows_no_rows_off_a_terminal_and_counts_nodes() -> None:
    t = progress.Tracker("glob")
    svc = service(None, "global")
    assert text(poll(t, svc, [], 0.0).frames) == "overall progress: waiting for new tasks\n"
    tasks = [task(f"t{i}", 0, "pending", node=f"n{i}") for i in (1, 2, 3)]
    step = poll(t, svc, tasks, 0.2)
    assert text(step.frames) == "overall progress: 0 out of 3 tasks\noverall progress: 0 out of 3 tasks\n"
    assert [f.id for f in step.frames[1:4]] == ["n1", "n2", "n3"]
    done = [task(f"t{i}", 0, "running", node=f"n{i}") for i in (1, 2, 3)]
    assert text(poll(t, svc, done, 0.4).frames) == (
        "overall progress: 3 out of 3 tasks\nverify: Waiting 5 seconds to verify that tasks are stable...\n")


def test_down_nodes_and_stale_tasks_do_not_count() -> None:
    t = progress.Tracker("web")
    old = spb.TaskTemplate(program="bb:old")
    tasks = [task("a", 1, "running", node="gone"), task("b", 2, "running", template=old)]
    step = poll(t, service(2), tasks, 0.0, active={"n1"})
    assert text(step.frames).splitlines()[-1] == "overall progress: 0 out of 2 tasks"


def test_slot_shows_the_task_with_the_lowest_desired_state() -> None:
    t = progress.Tracker("web")
    tasks = [task("old", 1, "running", desired="shutdown"), task("new", 1, "starting", updated="t2")]
    step = poll(t, service(1), tasks, 0.0)
    assert r.Frame("1/1", "starting ", 8, 9) in step.frames


def test_scale_to_zero_converges_at_once() -> None:
    t = progress.Tracker("web")
    step = poll(t, service(0), [task("a", 1, "running", desired="remove")], 0.0)
    assert text(step.frames) == ("overall progress: 0 out of 0 tasks\noverall progress: 0 out of 0 tasks\n"
                                 "verify: Waiting 5 seconds to verify that tasks are stable...\n")


def test_task_failure_after_convergence_is_reported() -> None:
    t = progress.Tracker("crash")
    poll(t, service(1), [task("a", 1, "running")], 0.0)
    step = poll(t, service(1), [task("a", 1, "failed", desired="shutdown"), task("b", 1, "new", updated="t2")], 1.0)
    assert text(step.frames).splitlines() == ["overall progress: 0 out of 1 tasks", "verify: Detected task failure"]
    assert step.error is None


def test_unschedulable_service_ends_the_wait_with_the_schedulers_reason() -> None:
    """Docker waits forever here; this stops after STALL_SECONDS without a change."""
    t = progress.Tracker("zoned")
    why = "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    pending = [task("a", 1, "pending", node="", err=why)]
    now, step = 0.0, poll(t, service(1), pending, 0.0)
    assert text(step.frames).splitlines() == [
        "overall progress: 0 out of 1 tasks", "1/1:  ", f"1/1: {why}", "overall progress: 0 out of 1 tasks"]
    while step.error is None:
        now += 0.2
        assert now < progress.STALL_SECONDS + 1
        step = poll(t, service(1), pending, now)
        assert f"1/1: {why}\n" in text(step.frames)  # repeated on every redraw, as Docker does
    assert now >= progress.STALL_SECONDS
    assert step.error == (f"service zoned is not converging after 10 seconds without a change: {why}; "
                          "the swarm keeps trying in the background (see `swarmctl service ps zoned`)")


def test_crash_loop_ends_the_wait_after_repeated_failures() -> None:
    t = progress.Tracker("crash")
    history: list[spb.Task] = []
    step = None
    for attempt in range(progress.FAILED_TASKS_LIMIT):
        history.append(task(f"t{attempt}", 1, "failed", desired="shutdown", err="task: non-zero exit (3)"))
        step = poll(t, service(1), [*history, task(f"n{attempt}", 1, "new", updated="t9")], float(attempt))
    assert step is not None and step.error is not None
    assert step.error.startswith("service crash is not converging: 3 of its tasks failed (")


def test_update_states() -> None:
    rolling = spb.UpdateStatus(state="rollback_started", message="manually requested rollback")
    t = progress.Tracker("upd")
    step = poll(t, service(2, status=rolling), [task("a", 1, "running"), task("b", 2, "new")], 0.0)
    assert text(step.frames).splitlines()[:2] == ["rollback: manually requested rollback",
                                                  "overall progress: rolling back update: 0 out of 2 tasks"]
    assert r.Frame("1/2", "running  ", 0, 9) in step.frames
    assert "rollback:" not in text(poll(t, service(2, status=rolling), [], 0.2).frames)

    paused = progress.Tracker("upd").before_tasks(
        service(2, status=spb.UpdateStatus(state="paused", message="update paused due to failure")), 0.0)
    assert paused is not None and paused.error == "service update paused: update paused due to failure"
    # a rollback that completed before the tasks converged is said after convergence
    rolled = progress.Tracker("upd")
    done = service(1, status=spb.UpdateStatus(state="rollback_completed", message="rollback completed"))
    assert poll(rolled, done, [task("a", 1, "starting")], 0.0).error is None
    poll(rolled, done, [task("a", 1, "running")], 1.0)
    end = rolled.before_tasks(done, 6.0)
    assert end is not None and end.finished and end.error is None
    assert text(end.frames) == "verify: Service converged\nrollback: rollback completed\n"
    completed = progress.Tracker("upd").before_tasks(service(2, status=spb.UpdateStatus(state="completed")), 0.0)
    assert completed is not None and completed.finished and completed.error is None


def test_monitor_period_comes_from_the_update_config() -> None:
    t = progress.Tracker("web")
    svc = service(1)
    svc.spec.update_config.monitor_ns = 2 * 10**9
    step = poll(t, svc, [task("a", 1, "running")], 0.0)
    assert "verify: Waiting 2 seconds to verify that tasks are stable..." in text(step.frames)
    converged = t.before_tasks(svc, 2.0)
    assert converged is not None and converged.finished and converged.frames == [r.VERIFY_CONVERGED]


def test_slot_shows_the_lower_state_when_desired_states_match() -> None:
    t = progress.Tracker("web")
    step = poll(t, service(1), [task("a", 1, "running"), task("b", 1, "assigned")], 0.0)
    assert r.Frame("1/1", "assigned ", 4, 9) in step.frames


def test_long_errors_are_cut_as_docker_cuts_them() -> None:
    t = progress.Tracker("web")
    step = poll(t, service(1), [task("a", 1, "pending", node="", err="x" * 80 + "\nmore")], 0.0)
    assert r.Frame("1/1", "x" * 74 + "…") in step.frames
