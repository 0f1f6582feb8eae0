"""``swarmctl service logs`` end to end: real daemons (a manager and a worker, or three
managers), real tasks writing to stdout and stderr, their lines fetched from the nodes that ran
them through the leader's log broker, in Docker 20.10's format.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from tests.harness import SWARMCTL, Daemon, join, leader_of, node_tls, wait_for
from tests.tasklib import stop_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="worker daemons run tasks as nobody: needs root")

WAIT = 30.0
HELLO = "echo hello; echo err >&2; exec sleep 100000"
TICKER = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"


def create(d: Daemon, name: str, replicas: int, script: str, *extra: str) -> None:
    d.ok("service", "create", "-d", "--name", name, "--replicas", str(replicas), "--stop-grace-period", "1s",
         *extra, "/bin/sh", "-c", script)


def tasks(d: Daemon, name: str) -> dict[int, tuple[str, str]]:
    """slot -> (full task ID, node hostname) of the service's running tasks."""
    found = {}
    for line in d.ok("service", "ps", "--no-trunc", "--filter", "desired-state=running", name).splitlines()[1:]:
        cells = re.split(r" {3,}", line.strip())
        if cells[5].startswith("Running"):
            found[int(cells[1].rsplit(".", 1)[1])] = (cells[0], cells[3])
    return found


def logs(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return d.ctl("service", "logs", *args, timeout=WAIT)


def wait_logged(d: Daemon, name: str, replicas: int) -> dict[int, tuple[str, str]]:
    """Once every task runs and has written its two lines: the tasks."""
    def ready() -> dict[int, tuple[str, str]] | None:
        found = tasks(d, name)
        r = logs(d, name)
        return found if len(found) == replicas and r.stdout.count("hello") == replicas \
            and r.stderr.count("err") == replicas else None
    found: dict[int, tuple[str, str]] = wait_for(ready, WAIT, step=0.2, what=f"{name}'s lines")
    return found


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """A manager and a worker; ``web`` runs one task on each."""
    mgr, w1 = Daemon(tmp_path, "mgr"), Daemon(tmp_path, "w1")
    try:
        mgr.start()
        w1.start()
        mgr.init()
        join(w1, mgr)
        create(mgr, "web", 2, HELLO)
        yield mgr, w1
    finally:
        stop_all([mgr, w1])


def test_logs_of_a_service_come_from_both_nodes(pair: tuple[Daemon, Daemon]) -> None:
    mgr, _ = pair
    found = wait_logged(mgr, "web", 2)
    assert sorted(host for _, host in found.values()) == ["mgr", "w1"]
    r = logs(mgr, "web")
    assert (r.returncode, sorted(r.stdout.splitlines(keepends=True))) == (0, sorted(
        f"web.{slot}.{tid[:12]}@{host}    | hello\n" for slot, (tid, host) in found.items()))
    assert sorted(r.stderr.splitlines(keepends=True)) == sorted(
        f"web.{slot}.{tid[:12]}@{host}    | err\n" for slot, (tid, host) in found.items())

    r = logs(mgr, "--no-task-ids", "web")
    assert sorted(r.stdout.splitlines()) == sorted(f"web.{s}@{h}    | hello" for s, (_, h) in found.items())
    r = logs(mgr, "--no-trunc", "web")
    assert sorted(r.stdout.splitlines()) == sorted(f"web.{s}.{t}@{h}    | hello" for s, (t, h) in found.items())
    r = logs(mgr, "--raw", "web")
    assert (r.stdout, r.stderr) == ("hello\nhello\n", "err\nerr\n")
    r = logs(mgr, "-t", "web")
    stamped = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (web\.\d\.[0-9a-z]{12}@(mgr|w1)    \| hello)")
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(stamped.fullmatch(line) for line in lines), lines


def test_logs_of_one_task_by_its_id(pair: tuple[Daemon, Daemon]) -> None:
    mgr, _ = pair
    found = wait_logged(mgr, "web", 2)
    tid, host = found[2]
    r = logs(mgr, tid)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"web.2.{tid[:12]}@{host}    | hello\n",
                                                  f"web.2.{tid[:12]}@{host}    | err\n")
    r = logs(mgr, tid[:8])  # a unique prefix will do
    assert r.stdout == f"web.2.{tid[:12]}@{host}    | hello\n"


def test_unknown_service_and_a_worker_are_refused_with_dockers_texts(pair: tuple[Daemon, Daemon]) -> None:
    mgr, w1 = pair
    r = logs(mgr, "nosuch")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "no such task or service: nosuch\n")
    r = logs(w1, "web")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("Error response from daemon: This node is not a swarm manager. Worker nodes can't be used "
                        "to view or modify cluster state. Please run this command on a manager node or promote "
                        "the current node to a manager.\n")
    r = mgr.ctl("service", "logs")
    assert r.returncode == 1 and r.stderr.startswith('"swarmctl service logs" requires exactly 1 argument.\n')


def test_a_worker_certificate_cannot_ask_for_logs(pair: tuple[Daemon, Daemon]) -> None:
    mgr, w1 = pair
    root, cert, key = node_tls(w1.state_dir)
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(mgr.listen, creds, options=[("grpc.ssl_target_name_override", "swarm-manager")]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            next(pb_grpc.ControlStub(ch).ServiceLogs(spb.ServiceLogsRequest(ref="web"), timeout=10))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_tail_and_follow(pair: tuple[Daemon, Daemon]) -> None:
    mgr, _ = pair
    create(mgr, "ticker", 2, TICKER)

    def ticked() -> bool:
        r = logs(mgr, "--raw", "ticker")
        return r.stdout.count("tick 3\n") == 2
    wait_for(ticked, WAIT, step=0.2, what="both tickers' first lines")
    r = logs(mgr, "--tail", "2", "ticker")
    assert r.returncode == 0
    by_task: dict[str, list[int]] = {}
    for line in r.stdout.splitlines():
        m = re.fullmatch(r"(ticker\.\d\.[0-9a-z]{12}@(?:mgr|w1))    \| tick (\d+)", line)
        assert m, line
        by_task.setdefault(m.group(1), []).append(int(m.group(2)))
    assert len(by_task) == 2 and all(len(n) == 2 and n[1] == n[0] + 1 for n in by_task.values()), by_task
    assert logs(mgr, "--tail", "0", "ticker").stdout == ""

    # -f --tail 0: nothing from before; lines written later arrive, from both nodes.
    follow = subprocess.Popen([SWARMCTL, "-H", f"unix://{mgr.socket}", "service", "logs", "-f", "--tail", "0",
                               "ticker"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mgr.env)
    lines: list[str] = []
    assert follow.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(follow.stdout or ()), daemon=True)
    reader.start()
    try:
        def from_both_nodes() -> bool:
            return {"mgr", "w1"} <= {line.split("    |")[0].rsplit("@", 1)[-1] for line in list(lines)}
        wait_for(from_both_nodes, WAIT, step=0.05, what="followed lines from both nodes")
        assert all(re.fullmatch(r"ticker\.\d\.[0-9a-z]{12}@(mgr|w1)    \| tick \d+\n", line) for line in lines)
        follow.send_signal(signal.SIGINT)  # Ctrl-C: ends cleanly
        assert follow.wait(WAIT) == 130
        assert follow.stderr is not None and "Traceback" not in follow.stderr.read()
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(5)
    # The subscription ends on the leader when its reader goes away.
    wait_for(lambda: _open_subscriptions(mgr) == 0, WAIT, step=0.1, what="the follow's subscription to end")


class Follow:
    """``service logs -f`` running in the background, its stdout lines collected by a thread."""

    def __init__(self, d: Daemon, *args: str) -> None:
        self.proc = subprocess.Popen([SWARMCTL, "-H", f"unix://{d.socket}", "service", "logs", "-f", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=d.env)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or ()), daemon=True).start()

    def nodes(self) -> set[str]:
        return {line.split("    |")[0].rsplit("@", 1)[-1] for line in list(self.lines)}

    def interrupt(self) -> str:
        """Ctrl-C: the CLI ends cleanly (exit 130, no traceback); its stderr."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(WAIT) == 130
        err = self.proc.stderr.read() if self.proc.stderr else ""
        assert "Traceback" not in err
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def test_follow_takes_in_the_tasks_a_scale_up_adds(pair: tuple[Daemon, Daemon]) -> None:
    mgr, _ = pair
    create(mgr, "grow", 1, TICKER, "--constraint", "node.hostname==mgr")
    wait_for(lambda: "tick 1\n" in logs(mgr, "--raw", "grow").stdout, WAIT, step=0.2, what="grow's first lines")
    follow = Follow(mgr, "--tail", "1", "grow")
    try:
        wait_for(lambda: any(line.startswith("grow.1.") for line in follow.lines), WAIT, what="slot 1's lines")
        mgr.ok("service", "scale", "-d", "grow=2")
        wait_for(lambda: any(line.startswith("grow.2.") for line in follow.lines), WAIT, what="the new slot's lines")
        follow.interrupt()
    finally:
        follow.kill()


def test_a_node_that_is_down_makes_dockers_incomplete_warning(pair: tuple[Daemon, Daemon]) -> None:
    mgr, w1 = pair
    found = wait_logged(mgr, "web", 2)
    w1.stop()
    (slot, (tid, _)), = [(s, v) for s, v in found.items() if v[1] == "mgr"]

    def warned() -> subprocess.CompletedProcess[str] | None:
        r = logs(mgr, "web")
        return r if r.returncode == 1 else None
    r = wait_for(warned, WAIT, step=0.2, what="the worker's absence noticed")
    assert r.stdout == f"web.{slot}.{tid[:12]}@mgr    | hello\n"
    head, warning = r.stderr.splitlines()
    assert head == f"web.{slot}.{tid[:12]}@mgr    | err"
    assert re.fullmatch(r"error from daemon in stream: Error grabbing logs: warning: incomplete log stream\. some "
                        r"logs could not be retrieved for the following reasons: node [0-9a-z]{25} is not available",
                        warning), warning


def _open_subscriptions(d: Daemon) -> int:
    log = d.log()
    opened = len(re.findall(r"log subscription \S+ opened", log))
    ended = len(re.findall(r"log subscription \S+ ended", log))
    return opened - ended


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[list[Daemon]]:
    started = [Daemon(tmp_path, f"m{i}") for i in range(3)]
    try:
        for d in started:
            d.start()
        started[0].init()
        for d in started[1:]:
            join(d, started[0], "manager")
        yield started
    finally:
        stop_all(started)


def test_logs_through_a_manager_that_is_not_the_leader(managers: list[Daemon]) -> None:
    leader = leader_of(managers)
    follower = next(d for d in managers if d is not leader)
    create(leader, "web", 3, HELLO)
    found = wait_logged(leader, "web", 3)
    assert sorted(h for _, h in found.values()) == ["m0", "m1", "m2"]
    r = logs(follower, "web")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(f"web.{s}.{t[:12]}@{h}    | hello" for s, (t, h) in found.items())
    assert sorted(r.stderr.splitlines()) == sorted(f"web.{s}.{t[:12]}@{h}    | err" for s, (t, h) in found.items())
    assert logs(follower, "nosuch").stderr == "no such task or service: nosuch\n"

    create(leader, "ticker", 3, TICKER)
    follow = Follow(follower, "--tail", "0", "ticker")
    try:
        wait_for(lambda: follow.nodes() == {"m0", "m1", "m2"}, WAIT, step=0.05, what="followed lines from 3 nodes")
        follow.interrupt()
    finally:
        follow.kill()
    # The follower cancels its call on the leader: the subscription ends there too.
    wait_for(lambda: _open_subscriptions(leader) == 0, WAIT, step=0.1, what="the leader's subscription to end")
