"""End-to-end ``swarmctl service`` and ``node ps`` against a real manager running real tasks:
Docker 20.10's texts with this swarm's IDs.

Tasks run ``/bin/sleep`` (SIGTERM ends it, so a 1 s grace period is plenty) under the daemon's
own user (``swarmd --task-user`` default when it is not root).
"""

from __future__ import annotations

import json
import re

from tests.harness import Daemon, wait_for

SLEEP = "/bin/sleep"
ID = re.compile(r"^[0-9a-z]{25}$")


def outcome(d: Daemon, *args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    r = d.ctl(*args, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def rows(d: Daemon, *args: str) -> list[list[str]]:
    """A table's rows (after the header), cells split on runs of 3+ spaces."""
    lines = d.ok(*args).splitlines()[1:]
    return [re.split(r" {3,}", line.rstrip()) for line in lines]


def running(d: Daemon, name: str, count: int) -> bool:
    listed = [r for r in rows(d, "service", "ps", "--filter", "desired-state=running", name)
              if r[5].startswith("Running")]
    return len(listed) == count


def test_create_detached_then_ls_ps_inspect(manager: Daemon) -> None:
    code, out, err = outcome(manager, "service", "create", "-d", "--name", "web", "--replicas", "3",
                             "--stop-grace-period", "1s", SLEEP, "100000")
    assert code == 0 and err == "" and ID.match(out.strip())
    sid = out.strip()
    wait_for(lambda: running(manager, "web", 3), 20, what="3 running tasks")
    assert manager.ok("service", "ls") == (
        "ID             NAME      MODE         REPLICAS   IMAGE        PORTS\n"
        f"{sid[:12]}   web       replicated   3/3        {SLEEP}   \n")
    assert manager.ok("service", "ls", "-q") == sid[:12] + "\n"
    assert json.loads(manager.ok("service", "ls", "--format", "json")) == {
        "ID": sid[:12], "Image": SLEEP, "Mode": "replicated", "Name": "web", "Ports": "", "Replicas": "3/3"}
    ps = rows(manager, "service", "ps", "web")
    assert [r[1] for r in ps] == ["web.1", "web.2", "web.3"]
    assert all(r[2] == SLEEP and r[3] == manager.hostname and r[4] == "Running" for r in ps)
    assert all(re.fullmatch(r"Running (\d+ seconds?|Less than a second) ago", r[5]) for r in ps), ps
    assert len(manager.ok("service", "ps", "-q", "web").split()) == 3
    doc = json.loads(manager.ok("service", "inspect", "web"))[0]
    assert doc["ID"] == sid and doc["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}
    assert doc["Spec"]["TaskTemplate"]["ContainerSpec"] == {"Image": SLEEP, "Args": ["100000"],
                                                            "StopGracePeriod": 1_000_000_000}
    assert doc["Spec"]["TaskTemplate"]["RestartPolicy"] == {"Condition": "any", "Delay": 5_000_000_000,
                                                            "MaxAttempts": 0}
    assert doc["Spec"]["UpdateConfig"] == {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000,
                                           "MaxFailureRatio": 0, "Order": "stop-first"}
    pretty = manager.ok("service", "inspect", "--pretty", "web")
    assert pretty.startswith(f"\nID:\t\t{sid}\nName:\t\tweb\nService Mode:\tReplicated\n Replicas:\t3\n")
    assert pretty.endswith(f"ContainerSpec:\n Image:\t\t{SLEEP}\n Args:\t\t100000 \n Init:\t\tfalse\n"
                           "Resources:\nEndpoint Mode:\tvip\n\n")
    node_ps = rows(manager, "node", "ps")
    assert sorted(r[1] for r in node_ps) == ["web.1", "web.2", "web.3"]


def test_create_waits_for_convergence_and_prints_dockers_progress(manager: Daemon) -> None:
    code, out, err = outcome(manager, "service", "create", "--name", "web2", "--replicas", "2",
                             "--update-monitor", "1s", "--stop-grace-period", "1s", SLEEP, "100000")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert ID.match(lines[0])
    assert lines[1:4] == ["overall progress: 0 out of 2 tasks", "1/2:  ", "2/2:  "]
    assert "overall progress: 2 out of 2 tasks" in lines
    assert "verify: Waiting 1 seconds to verify that tasks are stable..." in lines
    assert lines[-1] == "verify: Service converged"
    assert not any("[" in line for line in lines)  # no bars off a terminal

    code, out, err = outcome(manager, "service", "create", "-q", "--name", "quiet", "--update-monitor", "1s",
                             SLEEP, "100000")
    assert code == 0 and ID.match(out.strip()) and out.count("\n") == 1


def test_unschedulable_create_stops_waiting_with_the_schedulers_reason(manager: Daemon) -> None:
    code, out, err = outcome(manager, "service", "create", "--name", "zoned", "--constraint", "node.labels.zone==x",
                             SLEEP, "100000")
    why = "no suitable node (scheduling constraints not satisfied on 1 node)"
    assert code == 1
    assert f"1/1: {why}" in out.splitlines()
    assert err == (f"service zoned is not converging after 10 seconds without a change: {why}; the swarm keeps "
                   "trying in the background (see `swarmctl service ps zoned`)\n")
    ps = rows(manager, "service", "ps", "zoned")
    assert ps[0][1] == "zoned.1" and ps[0][-1] == '"no suitable node (scheduling …"'
    assert rows(manager, "service", "ps", "--no-trunc", "zoned")[0][-1] == f'"{why}"'
    assert rows(manager, "service", "ls")[0][3] == "0/1"


def test_errors_in_dockers_words(manager: Daemon) -> None:
    manager.ok("service", "create", "-d", "--name", "web", SLEEP, "100000")
    assert outcome(manager, "service", "create", "-d", "--name", "web", SLEEP, "1") == (1, "", (
        "Error response from daemon: rpc error: code = AlreadyExists desc = name conflicts with an existing "
        "object: service web already exists\n"))
    assert outcome(manager, "service", "create", "-d", "--name", "e1", "--constraint", "node.labels.zone=x",
                   SLEEP, "1") == (1, "", "Error response from daemon: rpc error: code = Unknown desc = constraint "
                                          "expected one operator from ==, !=\n")
    assert outcome(manager, "service", "ps", "nosuch") == (1, "", "no such service: nosuch\n")
    code, out, err = outcome(manager, "service", "ps", "web", "nosuch")
    assert code == 1 and out.startswith("ID ") and err == "no such service: nosuch\n"
    assert outcome(manager, "service", "inspect", "nosuch") == (
        1, "[]\n", "Status: Error: no such service: nosuch, Code: 1\n")
    assert outcome(manager, "service", "rm", "nosuch") == (1, "", "Error: No such service: nosuch\n")
    assert outcome(manager, "service", "update", "--env-add", "A=1", "nosuch") == (
        1, "", "Error: No such service: nosuch\n")
    assert outcome(manager, "service", "rollback", "nosuch") == (1, "", "Error: No such service: nosuch\n")
    assert outcome(manager, "service", "scale", "-d", "web=2", "nosuch=3") == (
        1, "web scaled to 2\n", "nosuch: Error: No such service: nosuch\n")
    assert outcome(manager, "service", "ls", "--filter", "bogus=1") == (
        1, "", "Error response from daemon: Invalid filter 'bogus'\n")
    assert outcome(manager, "service", "ps", "--filter", "desired-state=bogus", "web") == (
        1, "", "Error response from daemon: Invalid desired-state filter: 'bogus'\n")
    assert outcome(manager, "node", "ps", "nosuch") == (1, "", "Error: No such node: nosuch\n")
    assert rows(manager, "service", "ls", "--filter", "name=nothing") == []


def test_scale_update_rollback_rm(manager: Daemon) -> None:
    manager.ok("service", "create", "-d", "--name", "web", "--stop-grace-period", "1s", "--update-monitor", "1s",
               SLEEP, "100000")
    manager.ok("service", "create", "-d", "--name", "glob", "--mode", "global", SLEEP, "100000")
    assert outcome(manager, "service", "scale", "-d", "web=3") == (0, "web scaled to 3\n", "")
    wait_for(lambda: running(manager, "web", 3), 20, what="3 running tasks")
    assert outcome(manager, "service", "scale", "glob=2") == (
        1, "", "glob: scale can only be used with replicated or replicated-job mode\n")
    assert outcome(manager, "service", "update", "-d", "--replicas", "2", "glob") == (
        1, "", "replicas can only be used with replicated mode\n")

    code, out, err = outcome(manager, "service", "update", "--env-add", "NEW=1", "web")
    assert (code, err) == (0, "") and out.splitlines()[0] == "web" and out.splitlines()[-1] == "verify: Service converged"
    spec = json.loads(manager.ok("service", "inspect", "web"))[0]
    assert spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["NEW=1"]
    assert spec["UpdateStatus"]["State"] == "completed"
    history = rows(manager, "service", "ps", "web")
    assert [r[1] for r in history].count("\\_ web.1") == 1

    code, out, err = outcome(manager, "service", "rollback", "web")
    assert (code, err) == (0, "")
    assert out.splitlines()[:2] == ["web", "rollback: manually requested rollback"]
    assert out.splitlines()[-1] == "verify: Service converged"
    assert "Env" not in json.loads(manager.ok("service", "inspect", "web"))[0]["Spec"]["TaskTemplate"]["ContainerSpec"]

    assert outcome(manager, "service", "update", "-d", "web") == (0, "web\n", "")  # a no-op update
    assert outcome(manager, "service", "rm", "web", "nosuch", "glob") == (
        1, "web\nglob\n", "Error: No such service: nosuch\n")
    wait_for(lambda: manager.ok("node", "ps", "-q") == "", 20, what="no task left")


def test_progress_on_a_terminal_redraws_rows_in_place(manager: Daemon) -> None:
    """stdout on a 120-column terminal: Docker's bytes (rows redrawn with cursor moves, bars)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    from tests.harness import SWARMCTL

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([SWARMCTL, "-H", f"unix://{manager.socket}", "service", "create", "--name", "tty",
                             "--update-monitor", "1s", SLEEP, "100000"], stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(master)
    out = b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's newline translation
    assert "\n\x1b[1A\x1b[2K\roverall progress: 0 out of 1 tasks \r\x1b[1B" in out
    assert "\n\x1b[1A\x1b[2K\r1/1:   \r\x1b[1B" in out
    assert "\x1b[2K\r1/1: running   [" + "=" * 50 + ">] \r" in out
    assert out.endswith("\x1b[1A\x1b[2K\rverify: Service converged \r\x1b[1B")
