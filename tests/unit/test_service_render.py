"""What ``service ls|ps|inspect`` and ``node ps`` print, from wire messages: golden strings from
Docker 20.10's recorded sessions (../shared/reference/docker/services-transcripts.md)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from swarmctl import render_service as r
from swarmctl.wire import spb

NOW = 1_796_000_000 * 10**9  # a fixed "now" for the relative times
S = 10**9


def at(seconds_ago: float) -> str:
    ns = NOW - int(seconds_ago * S)
    base = datetime.fromtimestamp(ns // S, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns % S:09d}Z"


def svc(sid: str, name: str, mode: str = "replicated", running: int = 0, desired: int = 0,
        image: str = "bb:latest", **spec: object) -> spb.Service:
    s = spb.Service(id=sid, spec=spb.ServiceSpec(name=name, mode=mode, task_template=spb.TaskTemplate(program=image)),
                    running_tasks=running, desired_tasks=desired)
    for key, value in spec.items():
        setattr(s.spec, key, value)
    return s


def task(tid: str, service: str, slot: int, node: str, desired: str = "running", state: str = "running",
         ago: float = 3, created: float = 0, image: str = "bb:latest", err: str = "", node_id: str = "") -> spb.Task:
    return spb.Task(id=tid, service_name=service, slot=slot, node_hostname=node, node_id=node_id,
                    desired_state=desired, created_at=at(created or ago), spec=spb.TaskTemplate(program=image),
                    status=spb.TaskStatus(state=state, timestamp=at(ago), err=err))


# -- service ls ---------------------------------------------------------------------------------

SERVICES = [
    svc("x3la6xq5affdvc9ypxwpgm4bd", "web", running=3, desired=3),
    svc("2inoymfludtd7lctcsjkgdwe1", "web3", running=2, desired=2),
    svc("vg5mll1rroolgoa1hl7dxhlbz", "glob", "global", 3, 3),
    svc("jjfg1l7lx93z57qbq5e76tyam", "web2", running=2, desired=2),
    svc("3s4k56tjj8qgy7rrof5spl7fw", "glob2", "global", 3, 3),
]


def test_service_ls() -> None:
    assert r.service_table(SERVICES) == (
        "ID             NAME      MODE         REPLICAS   IMAGE       PORTS\n"
        "vg5mll1rrool   glob      global       3/3        bb:latest   \n"
        "3s4k56tjj8qg   glob2     global       3/3        bb:latest   \n"
        "x3la6xq5affd   web       replicated   3/3        bb:latest   \n"
        "jjfg1l7lx93z   web2      replicated   2/2        bb:latest   \n"
        "2inoymfludtd   web3      replicated   2/2        bb:latest   \n")


def test_service_ls_quiet_json_and_empty() -> None:
    assert r.service_ids(SERVICES) == "vg5mll1rrool\n3s4k56tjj8qg\nx3la6xq5affd\njjfg1l7lx93z\n2inoymfludtd\n"
    assert r.service_lines_json(SERVICES).splitlines()[:2] == [
        '{"ID":"vg5mll1rrool","Image":"bb:latest","Mode":"global","Name":"glob","Ports":"","Replicas":"3/3"}',
        '{"ID":"3s4k56tjj8qg","Image":"bb:latest","Mode":"global","Name":"glob2","Ports":"","Replicas":"3/3"}']
    assert r.service_table([]) == "ID        NAME      MODE      REPLICAS   IMAGE     PORTS\n"


def test_service_ls_mixed_states_and_max_per_node() -> None:
    rows = [svc("jn7iuwxx51xdaaaaaaaaaaaaa", "dr2", running=9, desired=6),
            svc("oxrkgd2x5579aaaaaaaaaaaaa", "festive_ishizaka", running=1, desired=1),
            svc("wzx4qkw6leb9aaaaaaaaaaaaa", "noimg", running=0, desired=2, image="bb:nonexistent")]
    assert r.service_table(rows) == (
        "ID             NAME               MODE         REPLICAS   IMAGE            PORTS\n"
        "jn7iuwxx51xd   dr2                replicated   9/6        bb:latest        \n"
        "oxrkgd2x5579   festive_ishizaka   replicated   1/1        bb:latest        \n"
        "wzx4qkw6leb9   noimg              replicated   0/2        bb:nonexistent   \n")
    capped = svc("a" * 25, "capped", running=2, desired=2)
    capped.spec.task_template.placement.max_replicas = 1
    assert r.replicas(capped) == "2/2 (max 1 per node)"


# -- service ps / node ps ---------------------------------------------------------------------------

def test_service_ps_replicated_and_global_sorted_together() -> None:
    tasks = [
        task("qfp30cb4ku3vlf4ijrgy2o6vf", "web", 3, "node2", ago=45),
        task("8gju4e5syf065s0ek4qck8a6f", "web", 1, "node3", ago=45),
        task("b4qwyqggxlu90lcxlwuwmeonx", "web", 2, "mgr", ago=45),
        task("58n2znbh0qm0aaaaaaaaaaaaa", "glob", 0, "node3", ago=32, node_id="yr2iz9ttim3sobnqcrelozbqa"),
        task("r54r8so0e22faaaaaaaaaaaaa", "glob", 0, "node2", ago=32, node_id="feexq98l5h6j16rtvyr6vbxg7"),
        task("t1dkdl5pejvwaaaaaaaaaaaaa", "glob", 0, "mgr", ago=32, node_id="vu2g4c182v5a6s0bghtvxx4fq"),
    ]
    assert r.task_table(tasks, NOW) == (
        "ID             NAME                             IMAGE       NODE      DESIRED STATE   CURRENT STATE            ERROR     PORTS\n"
        "r54r8so0e22f   glob.feexq98l5h6j16rtvyr6vbxg7   bb:latest   node2     Running         Running 32 seconds ago             \n"
        "t1dkdl5pejvw   glob.vu2g4c182v5a6s0bghtvxx4fq   bb:latest   mgr       Running         Running 32 seconds ago             \n"
        "58n2znbh0qm0   glob.yr2iz9ttim3sobnqcrelozbqa   bb:latest   node3     Running         Running 32 seconds ago             \n"
        "8gju4e5syf06   web.1                            bb:latest   node3     Running         Running 45 seconds ago             \n"
        "b4qwyqggxlu9   web.2                            bb:latest   mgr       Running         Running 45 seconds ago             \n"
        "qfp30cb4ku3v   web.3                            bb:latest   node2     Running         Running 45 seconds ago             \n")
    assert r.task_ids(tasks[:3]) == ("8gju4e5syf065s0ek4qck8a6f\nb4qwyqggxlu90lcxlwuwmeonx\n"
                                     "qfp30cb4ku3vlf4ijrgy2o6vf\n")
    assert r.task_ids(tasks[:1], trunc=True) == "qfp30cb4ku3v\n"  # node ps -q
    assert r.task_table(tasks[:3], NOW, trunc=False).splitlines()[:2] == [
        "ID                          NAME      IMAGE       NODE      DESIRED STATE   CURRENT STATE            ERROR     PORTS",
        "8gju4e5syf065s0ek4qck8a6f   web.1     bb:latest   node3     Running         Running 45 seconds ago             "]
    assert r.task_lines_json(tasks[:1], NOW) == (
        '{"CurrentState":"Running 45 seconds ago","DesiredState":"Running","Error":"","ID":"qfp30cb4ku3v",'
        '"Image":"bb:latest","Name":"web.3","Node":"node2","Ports":""}\n')


def test_service_ps_history_rows() -> None:
    tasks = [
        task("l7bymber89bkaaaaaaaaaaaaa", "upd", 1, "node2", "shutdown", "shutdown", ago=9, created=50, image="bb:v2"),
        task("l50lczi2xxi1aaaaaaaaaaaaa", "upd", 1, "node2", ago=9, created=10),
        task("tyjhae42pplkaaaaaaaaaaaaa", "upd", 1, "node2", "shutdown", "shutdown", ago=80, created=120),
        task("q05w2hisb4kfaaaaaaaaaaaaa", "upd", 1, "node2", "shutdown", "shutdown", ago=43, created=90),
    ]
    assert r.task_table(tasks, NOW) == (
        "ID             NAME        IMAGE       NODE      DESIRED STATE   CURRENT STATE                 ERROR     PORTS\n"
        "l50lczi2xxi1   upd.1       bb:latest   node2     Running         Running 9 seconds ago                   \n"
        "l7bymber89bk    \\_ upd.1   bb:v2       node2     Shutdown        Shutdown 9 seconds ago                  \n"
        "q05w2hisb4kf    \\_ upd.1   bb:latest   node2     Shutdown        Shutdown 43 seconds ago                 \n"
        "tyjhae42pplk    \\_ upd.1   bb:latest   node2     Shutdown        Shutdown about a minute ago             \n")


def test_service_ps_pending_error_truncated_and_quoted() -> None:
    pending = [task("53xs2a80d9ljqqd870mvwmst5", "zoned", 1, "", state="pending", ago=7,
                    err="no suitable node (scheduling constraints not satisfied on 3 nodes)")]
    assert r.task_table(pending, NOW) == (
        "ID             NAME      IMAGE       NODE      DESIRED STATE   CURRENT STATE           ERROR                              PORTS\n"
        '53xs2a80d9lj   zoned.1   bb:latest             Running         Pending 7 seconds ago   "no suitable node (scheduling …"   \n')
    pending[0].status.timestamp = at(10)
    assert r.task_table(pending, NOW, trunc=False) == (
        "ID                          NAME      IMAGE       NODE      DESIRED STATE   CURRENT STATE            ERROR                                                                  PORTS\n"
        '53xs2a80d9ljqqd870mvwmst5   zoned.1   bb:latest             Running         Pending 10 seconds ago   "no suitable node (scheduling constraints not satisfied on 3 nodes)"   \n')
    failed = [task("bc13c35hlufaaaaaaaaaaaaaa", "rc-onfail", 1, "node2", "shutdown", "failed", ago=240,
                   err="task: non-zero exit (3)")]
    assert r.task_table(failed, NOW).splitlines()[1] == (
        'bc13c35hlufa   rc-onfail.1   bb:latest   node2     Shutdown        Failed 4 minutes ago   '
        '"task: non-zero exit (3)"   ')


def test_service_ps_remove_and_empty() -> None:
    assert r.task_table([task("8gju4e5syf06aaaaaaaaaaaaa", "web", 1, "node3", "remove", ago=5)], NOW) == (
        "ID             NAME      IMAGE       NODE      DESIRED STATE   CURRENT STATE           ERROR     PORTS\n"
        "8gju4e5syf06   web.1     bb:latest   node3     Remove          Running 5 seconds ago             \n")
    assert r.task_table([], NOW) == (
        "ID        NAME      IMAGE     NODE      DESIRED STATE   CURRENT STATE   ERROR     PORTS\n")


def test_node_ps_natural_order_puts_digits_first() -> None:
    tasks = [task("t1dkdl5pejvwaaaaaaaaaaaaa", "glob", 0, "mgr", ago=180, node_id="vu2g4c182v5a6s0bghtvxx4fq"),
             task("rvbolyqx13qfaaaaaaaaaaaaa", "glob2", 0, "mgr", ago=180, node_id="vu2g4c182v5a6s0bghtvxx4fq"),
             task("mkve7o1of5kuaaaaaaaaaaaaa", "envsvc", 1, "mgr", "shutdown", "shutdown", ago=70)]
    assert r.task_table(tasks, NOW) == (
        "ID             NAME                              IMAGE       NODE      DESIRED STATE   CURRENT STATE                 ERROR     PORTS\n"
        "mkve7o1of5ku   envsvc.1                          bb:latest   mgr       Shutdown        Shutdown about a minute ago             \n"
        "rvbolyqx13qf   glob2.vu2g4c182v5a6s0bghtvxx4fq   bb:latest   mgr       Running         Running 3 minutes ago                   \n"
        "t1dkdl5pejvw   glob.vu2g4c182v5a6s0bghtvxx4fq    bb:latest   mgr       Running         Running 3 minutes ago                   \n")


# -- service inspect --------------------------------------------------------------------------------

def web() -> spb.Service:
    return spb.Service(
        id="x3la6xq5affdvc9ypxwpgm4bd", version=21, created_at="2026-12-01T17:23:23.120074704Z",
        updated_at="2026-12-01T17:23:23.120074704Z",
        spec=spb.ServiceSpec(
            name="web", mode="replicated", replicas=3,
            task_template=spb.TaskTemplate(program="bb:latest", args=["sleep", "100000"],
                                           stop_grace_period_ns=10 * S,
                                           restart_policy=spb.RestartPolicy(condition="any", delay_ns=5 * S)),
            update_config=spb.UpdateConfig(parallelism=1, failure_action="pause", monitor_ns=5 * S,
                                           order="stop-first"),
            rollback_config=spb.UpdateConfig(parallelism=1, failure_action="pause", monitor_ns=5 * S,
                                             order="stop-first")))


WEB_JSON = """[
    {
        "ID": "x3la6xq5affdvc9ypxwpgm4bd",
        "Version": {
            "Index": 21
        },
        "CreatedAt": "2026-12-01T17:23:23.120074704Z",
        "UpdatedAt": "2026-12-01T17:23:23.120074704Z",
        "Spec": {
            "Name": "web",
            "Labels": {},
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": "bb:latest",
                    "Args": [
                        "sleep",
                        "100000"
                    ],
                    "StopGracePeriod": 10000000000
                },
                "Resources": {
                    "Limits": {},
                    "Reservations": {}
                },
                "RestartPolicy": {
                    "Condition": "any",
                    "Delay": 5000000000,
                    "MaxAttempts": 0
                },
                "Placement": {},
                "ForceUpdate": 0
            },
            "Mode": {
                "Replicated": {
                    "Replicas": 3
                }
            },
            "UpdateConfig": {
                "Parallelism": 1,
                "FailureAction": "pause",
                "Monitor": 5000000000,
                "MaxFailureRatio": 0,
                "Order": "stop-first"
            },
            "RollbackConfig": {
                "Parallelism": 1,
                "FailureAction": "pause",
                "Monitor": 5000000000,
                "MaxFailureRatio": 0,
                "Order": "stop-first"
            }
        }
    }
]
"""


def test_inspect_json_is_dockers_where_it_maps() -> None:
    """Docker's document without what a process task has no use for (Init, DNSConfig,
    Isolation, Runtime, EndpointSpec, Endpoint)."""
    assert r.inspect_json([web()]) == WEB_JSON
    assert r.inspect_json([]) == "[]\n"


def test_inspect_json_fills_defaults_of_unset_fields_and_shows_update_status() -> None:
    s = spb.Service(id="i" * 25, spec=spb.ServiceSpec(name="g", mode="global", task_template=spb.TaskTemplate(
        program="p", env=["NEW=1"], workdir="/w", user="u", stop_signal="SIGINT",
        resources=spb.ResourceRequirements(reservations=spb.Resources(memory_bytes=500 << 30)),
        placement=spb.Placement(constraints=["node.labels.zone==x"], max_replicas=2),
        restart_policy=spb.RestartPolicy(window_ns=S))),
        previous_spec=spb.ServiceSpec(name="g", mode="global"),
        update_status=spb.UpdateStatus(state="updating", started_at="2026-12-01T17:25:51.567241053Z",
                                       message="update in progress"))
    doc = json.loads(r.inspect_json([s]))[0]
    t = doc["Spec"]["TaskTemplate"]
    assert t["ContainerSpec"] == {"Image": "p", "Env": ["NEW=1"], "Dir": "/w", "User": "u", "StopSignal": "SIGINT",
                                  "StopGracePeriod": 10 * S}
    assert t["Resources"] == {"Limits": {}, "Reservations": {"MemoryBytes": 536870912000}}
    assert t["RestartPolicy"] == {"Condition": "any", "Delay": 5 * S, "MaxAttempts": 0, "Window": S}
    assert t["Placement"] == {"Constraints": ["node.labels.zone==x"], "MaxReplicas": 2}
    assert doc["Spec"]["Mode"] == {"Global": {}} and doc["PreviousSpec"]["Mode"] == {"Global": {}}
    assert doc["UpdateStatus"] == {"State": "updating", "StartedAt": "2026-12-01T17:25:51.567241053Z",
                                   "Message": "update in progress"}
    assert doc["Spec"]["UpdateConfig"] == {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5 * S,
                                           "MaxFailureRatio": 0, "Order": "stop-first"}


POLICIES = ("UpdateConfig:\n Parallelism:\t1\n On failure:\tpause\n Monitoring Period: 5s\n"
            " Max failure ratio: 0\n Update order:      stop-first\n"
            "RollbackConfig:\n Parallelism:\t1\n On failure:\tpause\n Monitoring Period: 5s\n"
            " Max failure ratio: 0\n Rollback order:    stop-first\n")


def test_pretty_replicated() -> None:
    assert r.service_pretty(web(), NOW) == (
        "\nID:\t\tx3la6xq5affdvc9ypxwpgm4bd\nName:\t\tweb\nService Mode:\tReplicated\n Replicas:\t3\n"
        "Placement:\n" + POLICIES +
        "ContainerSpec:\n Image:\t\tbb:latest\n Args:\t\tsleep 100000 \n Init:\t\tfalse\nResources:\n"
        "Endpoint Mode:\tvip\n\n")


def test_pretty_global_constraint_reservation_env_and_update_status() -> None:
    glob = web()
    glob.spec.mode = "global"
    glob.spec.ClearField("replicas")
    assert "Service Mode:\tGlobal\nPlacement:\n" in r.service_pretty(glob, NOW)

    s = web()
    s.spec.replicas = 4
    s.spec.task_template.env.extend(["FOO=bar", "BAZ=1"])
    s.spec.task_template.placement.constraints.append("node.labels.zone==x")
    s.spec.task_template.resources.reservations.memory_bytes = 500 << 30
    s.spec.task_template.resources.limits.nano_cpus = S // 2
    s.spec.update_config.parallelism = 2
    s.spec.update_config.delay_ns = 3 * S
    s.spec.update_config.failure_action = "rollback"
    s.update_status.CopyFrom(spb.UpdateStatus(state="rollback_completed", started_at=at(23),
                                              completed_at=at(20), message="rollback completed"))
    text = r.service_pretty(s, NOW)
    assert text.startswith(
        "\nID:\t\tx3la6xq5affdvc9ypxwpgm4bd\nName:\t\tweb\nService Mode:\tReplicated\n Replicas:\t4\n"
        "UpdateStatus:\n State:\t\trollback_completed\n Started:\t23 seconds ago\n"
        " Message:\trollback completed\n"
        "Placement:\n Constraints:\t[node.labels.zone==x]\n"
        "UpdateConfig:\n Parallelism:\t2\n Delay:\t\t3s\n On failure:\trollback\n")
    assert text.endswith(
        "ContainerSpec:\n Image:\t\tbb:latest\n Args:\t\tsleep 100000 \n Env:\t\tFOO=bar BAZ=1 \n Init:\t\tfalse\n"
        "Resources:\n Reservations:\n  Memory:\t500GiB\n Limits:\n  CPU:\t\t0.5\nEndpoint Mode:\tvip\n\n")
    s.update_status.state = "completed"
    assert " Started:\t23 seconds ago\n Completed:\t20 seconds ago\n Message:" in r.service_pretty(s, NOW)
    two = r.service_pretty(web(), NOW) + r.service_pretty(glob, NOW)
    assert "Endpoint Mode:\tvip\n\n\nID:\t\t" in two


# -- progress frames ------------------------------------------------------------------------------

def test_bars_fill_as_docker_numbers_the_states() -> None:
    lengths = [r.Frame("1/2", "x", k, 9).bar().count("=") for k in range(1, 10)]
    assert lengths == [5, 11, 16, 22, 27, 33, 38, 44, 50]
    assert r.Frame("1/2", "x", 9, 9).bar() == "[" + "=" * 50 + ">] "
    assert r.Frame("1/2", "x", 0, 9).bar() == "[>" + " " * 50 + "] "


def test_non_tty_frames_leave_out_bars() -> None:
    w = r.FrameWriter(tty=False)
    frames = [r.overall_frame(0, 2, False), r.Frame("1/2", " "), r.Frame("2/2", " "),
              r.task_frame("1/2", task("a", "web", 1, "n", state="new"), False), r.overall_frame(2, 2, False),
              r.verify_waiting(5), r.VERIFY_CONVERGED]
    assert "".join(w.write(f) for f in frames if f is not None) == (
        "overall progress: 0 out of 2 tasks\n1/2:  \n2/2:  \noverall progress: 2 out of 2 tasks\n"
        "verify: Waiting 5 seconds to verify that tasks are stable...\nverify: Service converged\n")


def test_tty_frames_redraw_each_row_in_place() -> None:
    """The recorded bytes of a 2-replica create on a terminal (after the service ID)."""
    w = r.FrameWriter(tty=True, width=120)
    new = task("a", "web", 1, "n", state="new")
    text = "".join(w.write(f) for f in [r.overall_frame(0, 2, False), r.Frame("1/2", " "), r.Frame("2/2", " "),
                                        r.task_frame("1/2", new, False), r.task_frame("2/2", new, False),
                                        r.overall_frame(0, 2, False)] if f is not None)
    assert text == (
        "\n\x1b[1A\x1b[2K\roverall progress: 0 out of 2 tasks \r\x1b[1B"
        "\n\x1b[1A\x1b[2K\r1/2:   \r\x1b[1B"
        "\n\x1b[1A\x1b[2K\r2/2:   \r\x1b[1B"
        "\x1b[2A\x1b[2K\r1/2: new       [=====>                                             ] \r\x1b[2B"
        "\x1b[1A\x1b[2K\r2/2: new       [=====>                                             ] \r\x1b[1B"
        "\x1b[3A\x1b[2K\roverall progress: 0 out of 2 tasks \r\x1b[3B")
    narrow = r.FrameWriter(tty=True, width=80)
    assert narrow.write(r.task_frame("1/1", new, False) or r.VERIFY_FAILURE) == (
        "\n\x1b[1A\x1b[2K\r1/1: new       \r\x1b[1B")


def test_task_rows() -> None:
    running = task("a", "web", 1, "n")
    assert r.task_frame("1/3", running, False) == r.Frame("1/3", "running  ", 9, 9)
    assert r.task_frame("1/3", running, True) == r.Frame("1/3", "running  ", 0, 9)
    pending = task("a", "z", 1, "", state="pending", err="no suitable node (scheduling constraints not "
                                                          "satisfied on 3 nodes)")
    assert r.FrameWriter(tty=False).write(r.task_frame("1/1", pending, False) or r.VERIFY_FAILURE) == (
        "1/1: no suitable node (scheduling constraints not satisfied on 3 nodes)\n")
    assert r.task_frame("1/3", task("a", "web", 1, "n", "shutdown", "shutdown"), False) is None
    assert r.overall_frame(0, 4, True).action == "rolling back update: 0 out of 4 tasks"


def test_messages_are_plain_lines_and_end_the_redrawn_rows() -> None:
    w = r.FrameWriter(tty=True, width=120)
    w.write(r.overall_frame(1, 1, False))
    assert w.write(r.Frame("rollback", "rollback completed", message=True)) == "rollback: rollback completed\n"
    assert w.write(r.VERIFY_CONVERGED).startswith("\n\x1b[1A")  # a new row below the message


def test_json_rows_are_not_indented() -> None:
    tasks = [task("new0aaaaaaaaaaaaaaaaaaaaa", "upd", 1, "n", ago=1, created=1),
             task("old0aaaaaaaaaaaaaaaaaaaaa", "upd", 1, "n", "shutdown", "shutdown", ago=5, created=9)]
    assert [json.loads(line)["Name"] for line in r.task_lines_json(tasks, NOW).splitlines()] == ["upd.1", "upd.1"]
    assert " \\_ upd.1" in r.task_table(tasks, NOW)
