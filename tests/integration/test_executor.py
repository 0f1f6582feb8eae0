"""The process executor with real processes: exit codes, start errors, environment, users,
stop signals, adoption after the launching process dies, logs, cgroup limits.

Every task is removed at teardown (its shim and its process group killed, by PID, and its
cgroup deleted); every wait is bounded.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swarmd.agent.exec import logs
from swarmd.agent.exec.api import ExecError, TaskRuntimeSpec, TaskState, TaskStatus
from swarmd.agent.exec.cgroups import Cgroups, Layout
from swarmd.agent.exec.process import ProcessExecutor, ProcessExecutorConfig
from tests.harness import wait_for
from tests.tasklib import kill_leftovers, start_ticks

WAIT = 20.0
PY = sys.executable
ROOT = os.geteuid() == 0
ME = pwd.getpwuid(os.geteuid()).pw_name
_parents = itertools.count()


def spec(task_id: str, program: str, *args: str, **kw: object) -> TaskRuntimeSpec:
    return TaskRuntimeSpec(task_id=task_id, service_id="svc0123456789", service_name="web", slot=2,
                           node_id="node0123456789", node_hostname="host-a", program=program, args=args,
                           **kw)  # type: ignore[arg-type]


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    """Task cgroups under a parent of this test's own, removed at the end."""
    cg = Cgroups(parent=f"swarmd-test-{os.getpid()}-{next(_parents)}")
    yield cg
    for h in cg.layout.dirs:
        for base in dict.fromkeys((h.own, h.mountpoint)):
            try:
                os.rmdir(os.path.join(base, cg.parent_name))
            except OSError:
                pass


@pytest.fixture
def make(tmp_path: Path, cgroups: Cgroups) -> Iterator[Callable[..., ProcessExecutor]]:
    """Executors on one state dir; tasks run as this test's user unless a test says otherwise."""
    state = tmp_path / "state"

    def factory(cgroups_: Cgroups | None = None, **config: object) -> ProcessExecutor:
        config.setdefault("task_user", ME)
        return ProcessExecutor(state, ProcessExecutorConfig(**config), cgroups_ or cgroups)  # type: ignore[arg-type]

    yield factory
    kill_leftovers(state, cgroups)


@pytest.fixture
def ex(make: Callable[..., ProcessExecutor]) -> ProcessExecutor:
    return make()


def run(ex: ProcessExecutor, s: TaskRuntimeSpec) -> TaskStatus:
    """Prepare, start and wait for a task that ends by itself."""
    ex.prepare(s)
    ex.start(s.task_id)
    status = ex.wait(s.task_id, WAIT)
    assert status is not None and status.final, status
    return status


def output(ex: ProcessExecutor, task_id: str, stream: str = "stdout") -> list[str]:
    return [r.data.decode() for r in logs.read_records(ex.log_files(task_id)) if r.stream == stream]


def gone(pid: int) -> bool:
    return start_ticks(pid) is None


# -- exit codes and start errors ------------------------------------------------------------------

def test_exit_zero_completes(ex: ProcessExecutor) -> None:
    status = run(ex, spec("t-ok", "/bin/sh", "-c", "exit 0"))
    assert (status.state, status.exit_code, status.error) == (TaskState.COMPLETE, 0, "")
    assert status.started_at is not None and status.finished_at is not None
    assert status.finished_at >= status.started_at and not status.stop_requested


def test_nonzero_exit_fails_in_docker_words(ex: ProcessExecutor) -> None:
    status = run(ex, spec("t-three", "sh", "-c", "exit 3"))
    assert (status.state, status.exit_code, status.error) == (TaskState.FAILED, 3, "task: non-zero exit (3)")


def test_start_returns_running_and_pid(ex: ProcessExecutor) -> None:
    ex.prepare(spec("t-run", "sleep", "1000"))
    status = ex.start("t-run")
    assert status.state == TaskState.RUNNING and status.pid is not None and not gone(status.pid)
    assert ex.start("t-run").pid == status.pid  # starting again starts nothing


def test_missing_program_fails_at_once(ex: ProcessExecutor, tmp_path: Path) -> None:
    ex.prepare(spec("t-none", "/nonexistent"))
    status = ex.start("t-none")  # no wait: start itself reports it
    assert status.state == TaskState.FAILED and status.exit_code == 127
    assert status.error == ('starting container failed: exec: "/nonexistent": '
                            'stat /nonexistent: no such file or directory')
    status = run(ex, spec("t-nopath", "no-such-program-anywhere"))
    assert status.error == 'starting container failed: exec: "no-such-program-anywhere": executable file not found in $PATH'
    directory = tmp_path / "adir"
    directory.mkdir()
    status = run(ex, spec("t-dir", str(directory)))
    assert status.error == f'starting container failed: exec: "{directory}": permission denied'


def test_unknown_user_and_workdir_fail_to_start(ex: ProcessExecutor) -> None:
    status = run(ex, spec("t-user", "true", user="no-such-user"))
    assert status.error == "starting container failed: unable to find user no-such-user: no matching entries in passwd file"
    status = run(ex, spec("t-cwd", "true", workdir="/no/such/dir"))
    assert status.error == 'starting container failed: chdir to cwd ("/no/such/dir") failed: no such file or directory'


# -- what the task sees ---------------------------------------------------------------------------

def test_environment(ex: ProcessExecutor) -> None:
    run(ex, spec("t-env", "env", env=("FOO=bar baz", "SWARM_TASK_ID=forged", "EMPTY=")))
    env = dict(line.split("=", 1) for line in output(ex, "t-env"))
    assert env["FOO"] == "bar baz" and env["EMPTY"] == ""
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert {k: v for k, v in env.items() if k.startswith("SWARM_")} == {
        "SWARM_SERVICE_ID": "svc0123456789", "SWARM_SERVICE_NAME": "web", "SWARM_TASK_ID": "t-env",
        "SWARM_TASK_SLOT": "2", "SWARM_NODE_ID": "node0123456789", "SWARM_NODE_HOSTNAME": "host-a"}
    assert not any(k.startswith("PYTEST") for k in env)  # nothing of the daemon's environment


def test_workdir(ex: ProcessExecutor, tmp_path: Path) -> None:
    run(ex, spec("t-pwd", "pwd", workdir=str(tmp_path)))
    assert output(ex, "t-pwd") == [str(tmp_path)]
    run(ex, spec("t-root", "pwd"))
    assert output(ex, "t-root") == ["/"]


def test_own_session_and_no_inherited_signal_state(ex: ProcessExecutor) -> None:
    """Ignored dispositions and the blocked mask survive exec: the shim must reset both, whatever
    the daemon had (Python itself ignores SIGPIPE)."""
    old = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        # The program reads its own state (a shell would block signals around its forks).
        ex.prepare(spec("t-sig", "grep", "-E", "^(Sig(Ign|Blk)|NSpgid|NSsid):", "/proc/self/status"))
        ex.start("t-sig")
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        signal.signal(signal.SIGUSR2, old)
    status = ex.wait("t-sig", WAIT)
    assert status is not None and status.state == TaskState.COMPLETE
    fields = dict(line.split(":\t") for line in output(ex, "t-sig"))
    assert fields["SigIgn"] == fields["SigBlk"] == "0000000000000000"
    assert fields["NSsid"] == fields["NSpgid"] == str(status.pid)  # its own session and process group


@pytest.mark.skipif(not ROOT, reason="switching users needs root")
def test_root_daemon_runs_tasks_as_nobody(make: Callable[..., ProcessExecutor]) -> None:
    ex = make(task_user=None)
    nobody = pwd.getpwnam("nobody")
    run(ex, spec("t-nobody", "id"))
    (line,) = output(ex, "t-nobody")
    assert line.startswith(f"uid={nobody.pw_uid}(nobody) gid={nobody.pw_gid}(")
    run(ex, spec("t-asroot", "id", "-u", user="root"))  # only when the spec asks
    assert output(ex, "t-asroot") == ["0"]
    run(ex, spec("t-numeric", "sh", "-c", "id -u; id -g", user="4000123"))
    assert output(ex, "t-numeric") == ["4000123", "4000123"]  # its own group, not root's
    run(ex, spec("t-uidgid", "sh", "-c", "id -u; id -g; id -G", user="12345:23456"))
    assert output(ex, "t-uidgid") == ["12345", "23456", "23456"]


# -- stopping and dying ---------------------------------------------------------------------------

def test_stop_signal_then_sigkill_after_grace(ex: ProcessExecutor) -> None:
    """A program that traps TERM and goes on: it gets TERM, then SIGKILL when the grace ends."""
    ex.prepare(spec("t-trap", "sh", "-c", "trap 'echo got-term' TERM; echo ready; while :; do sleep 0.05; done",
                    stop_grace_seconds=1.0))
    ex.start("t-trap")
    wait_for(lambda: "ready" in output(ex, "t-trap"), WAIT, what="the trap to be set")
    ex.shutdown("t-trap")
    status = ex.wait("t-trap", WAIT)
    assert status is not None and status.final
    assert (status.state, status.signal, status.exit_code) == (TaskState.FAILED, signal.SIGKILL, 137)
    assert status.error == "task: non-zero exit (137)" and status.stop_requested
    assert "got-term" in output(ex, "t-trap")


def test_custom_stop_signal_and_clean_exit(ex: ProcessExecutor) -> None:
    ex.prepare(spec("t-usr1", "sh", "-c", "trap 'exit 0' USR1; echo ready; while :; do sleep 0.05; done",
                    stop_signal="SIGUSR1"))
    ex.start("t-usr1")
    wait_for(lambda: "ready" in output(ex, "t-usr1"), WAIT, what="the trap to be set")
    ex.shutdown("t-usr1")
    status = ex.wait("t-usr1", WAIT)
    assert status is not None and status.state == TaskState.COMPLETE and status.stop_requested


def test_default_stop_signal_is_term(ex: ProcessExecutor) -> None:
    ex.prepare(spec("t-term", "sleep", "1000"))
    ex.start("t-term")
    ex.shutdown("t-term")
    status = ex.wait("t-term", WAIT)
    assert status is not None and (status.signal, status.exit_code) == (signal.SIGTERM, 143)


def test_kill_9_of_the_task_fails_it(ex: ProcessExecutor) -> None:
    ex.prepare(spec("t-k9", "sleep", "1000"))
    pid = ex.start("t-k9").pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    status = ex.wait("t-k9", WAIT)
    assert status is not None
    assert (status.state, status.exit_code, status.signal) == (TaskState.FAILED, 137, signal.SIGKILL)
    assert status.error == "task: non-zero exit (137)" and not status.stop_requested


def test_the_task_ends_with_its_main_process(ex: ProcessExecutor) -> None:
    """As in a container: what the main process left behind in its group is killed with it."""
    status = run(ex, spec("t-bg", "sh", "-c", "sleep 1000 & echo $!"))
    assert status.state == TaskState.COMPLETE
    (child,) = output(ex, "t-bg")
    wait_for(lambda: gone(int(child)), WAIT, what="the background child to be killed")


def test_killed_shim_fails_the_task_and_kills_it(ex: ProcessExecutor) -> None:
    ex.prepare(spec("t-shim", "sleep", "1000"))
    pid = ex.start("t-shim").pid
    assert pid is not None
    shim_pid = json.loads((ex.task_dir("t-shim") / "status.json").read_text())["shim_pid"]
    os.kill(shim_pid, signal.SIGKILL)
    wait_for(lambda: gone(shim_pid), WAIT, what="the shim to die")
    status = ex.status("t-shim")
    assert status is not None and status.state == TaskState.FAILED
    assert status.error == "task: supervisor exited unexpectedly"
    wait_for(lambda: gone(pid), WAIT, what="the unsupervised task to be killed")


# -- surviving the daemon -------------------------------------------------------------------------

LAUNCHER = """
import json, sys
from pathlib import Path
from swarmd.agent.exec.cgroups import Cgroups
from swarmd.agent.exec.process import ProcessExecutor, ProcessExecutorConfig
from tests.integration.test_executor import spec
state, parent, user, work = sys.argv[1:5]
ex = ProcessExecutor(Path(state), ProcessExecutorConfig(task_user=user), Cgroups(parent=parent))
for name, code in (("t-long", 7), ("t-short", 5)):
    gate = Path(work, name)
    ex.prepare(spec(name, "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo after-gate; exit {code}"))
    ex.start(name)
print(json.dumps({t: ex.status(t).pid for t in ("t-long", "t-short")}), flush=True)
sys.stdin.read()
"""


def test_tasks_outlive_a_crashed_daemon_and_are_adopted(make: Callable[..., ProcessExecutor], tmp_path: Path,
                                                        cgroups: Cgroups) -> None:
    """The process that started the tasks is SIGKILLed; a new executor adopts the survivor and
    sees its exit code, and reports the task that ended while no daemon ran."""
    state, work = tmp_path / "state", tmp_path / "work"
    work.mkdir()
    launcher = subprocess.Popen([PY, "-c", LAUNCHER, str(state), cgroups.parent_name, ME, str(work)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert launcher.stdout is not None
        pids = json.loads(launcher.stdout.readline())
    finally:
        launcher.kill()
        launcher.wait(WAIT)
    assert not gone(pids["t-long"]) and not gone(pids["t-short"])
    (work / "t-short").touch()
    short_status = state / "tasks" / "t-short" / "status.json"
    wait_for(lambda: json.loads(short_status.read_text())["state"] == "failed", WAIT, what="t-short to end")

    ex = make()
    found = ex.adopt()
    assert set(found) == {"t-long", "t-short"}
    long_now, short_now = found["t-long"], found["t-short"]
    assert long_now is not None and long_now.state == TaskState.RUNNING and long_now.pid == pids["t-long"]
    assert short_now is not None and (short_now.state, short_now.exit_code) == (TaskState.FAILED, 5)
    (work / "t-long").touch()
    status = ex.wait("t-long", WAIT)
    assert status is not None and (status.state, status.exit_code) == (TaskState.FAILED, 7)
    assert output(ex, "t-long") == ["after-gate"]  # written after its launcher was gone


def test_a_new_executor_object_sees_the_same_tasks(make: Callable[..., ProcessExecutor]) -> None:
    first = make()
    first.prepare(spec("t-same", "sleep", "1000"))
    pid = first.start("t-same").pid
    del first
    second = make()
    assert second.adopt()["t-same"] == second.status("t-same")
    second.shutdown("t-same")
    status = second.wait("t-same", WAIT)
    assert status is not None and status.final and status.pid == pid


def test_prepared_tasks_and_unfinished_prepares_on_adopt(make: Callable[..., ProcessExecutor]) -> None:
    ex = make()
    ex.prepare(spec("t-prep", "true"))
    (ex.root / "t-half").mkdir()  # a prepare interrupted before its record was written
    assert make().adopt() == {"t-prep": None}
    assert not (ex.root / "t-half").exists()


# -- the interface's promises ---------------------------------------------------------------------

def test_calls_are_idempotent_and_unknown_tasks_refused(ex: ProcessExecutor) -> None:
    s = spec("t-idem", "true")
    ex.prepare(s)
    ex.prepare(s)
    with pytest.raises(ExecError, match="already prepared with another spec"):
        ex.prepare(spec("t-idem", "false"))
    assert ex.status("t-idem") is None
    first = run(ex, s)
    assert ex.start("t-idem") == first
    ex.remove("t-idem")
    ex.remove("t-idem")
    for call in (ex.status, ex.start, ex.shutdown):
        with pytest.raises(ExecError, match="^no such task: t-idem$"):
            call("t-idem")


def test_remove_kills_a_running_task(ex: ProcessExecutor) -> None:
    ex.prepare(spec("t-rm", "sleep", "1000"))
    pid = ex.start("t-rm").pid
    assert pid is not None
    shim_pid = json.loads((ex.task_dir("t-rm") / "status.json").read_text())["shim_pid"]
    ex.remove("t-rm")
    assert not (ex.root / "t-rm").exists()
    wait_for(lambda: gone(pid) and gone(shim_pid), WAIT, what="task and shim to end")


# -- logs -----------------------------------------------------------------------------------------

ROTATE = """
import sys
for i in range(3000):
    print("line %05d " % i + "x" * 88)
sys.stderr.write("to stderr\\n")
sys.stdout.write("y" * 40000)
"""


def test_logs_are_written_and_rotated_at_the_cap(make: Callable[..., ProcessExecutor]) -> None:
    cap = 64 * 1024
    ex = make(log_max_bytes=cap, log_max_files=3)
    status = run(ex, spec("t-logs", PY, "-c", ROTATE))
    assert status.state == TaskState.COMPLETE
    files = ex.log_files("t-logs")
    assert [p.name for p in files] == ["output.log.2", "output.log.1", "output.log"]
    assert all(p.stat().st_size <= cap for p in files)
    records = list(logs.read_records(files))
    stdout = [r for r in records if r.stream == "stdout"]
    assert [r.partial for r in stdout[-3:]] == [True, True, False]  # a 40000-byte line, unfinished at exit
    assert b"".join(r.data for r in stdout[-3:]) == b"y" * 40000
    assert stdout[-4].data == b"line 02999 " + b"x" * 88  # the newest lines are kept, the oldest rotated out
    assert not any(r.data.startswith(b"line 00000") for r in stdout)
    assert [r.data for r in records if r.stream == "stderr"] == [b"to stderr"]


def test_no_pipe_to_the_daemon(ex: ProcessExecutor) -> None:
    """The task's output goes to the shim, not through any descriptor this process holds."""
    ex.prepare(spec("t-fds", "sleep", "1000"))
    pid = ex.start("t-fds").pid
    assert pid is not None
    theirs = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    ours = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not {t for t in theirs if t.startswith("pipe:")} & ours


# -- cgroups --------------------------------------------------------------------------------------

def needs_cgroup(cgroups: Cgroups, controller: str) -> None:
    if not ROOT:
        pytest.skip("creating cgroups needs root")
    if controller not in cgroups.layout.hierarchies:
        pytest.skip(f"no cgroup {controller} controller on this host")


def task_cgroup(ex: ProcessExecutor, task_id: str, controller: str) -> Path:
    meta = json.loads((ex.task_dir(task_id) / "task.json").read_text())
    mount = ex.cgroups.layout.hierarchies[controller].mountpoint
    (path,) = [p for p in meta["cgroup"]["dirs"] if p.startswith(mount + "/")]
    return Path(path)


def test_memory_limit_kills_a_task_that_allocates_more(ex: ProcessExecutor, cgroups: Cgroups) -> None:
    needs_cgroup(cgroups, "memory")
    limit = 64 * 1024 * 1024
    s = spec("t-oom", PY, "-c", "data = b'x' * (512 << 20); print('survived')", memory_bytes=limit)
    ex.prepare(s)
    directory = task_cgroup(ex, "t-oom", "memory")
    limit_file = "memory.max" if cgroups.layout.version == 2 else "memory.limit_in_bytes"
    assert int((directory / limit_file).read_text()) == limit
    ex.start("t-oom")
    status = ex.wait("t-oom", WAIT)
    assert status is not None and status.final
    assert (status.state, status.signal, status.exit_code, status.oom_killed) == (
        TaskState.FAILED, signal.SIGKILL, 137, True)
    assert "survived" not in output(ex, "t-oom")
    ex.remove("t-oom")
    assert not directory.exists()


def test_cpu_limit_is_written_and_throttles(ex: ProcessExecutor, cgroups: Cgroups) -> None:
    needs_cgroup(cgroups, "cpu")
    ex.prepare(spec("t-cpu", PY, "-c", "while True: pass", cpu_nanos=100_000_000))  # 0.1 CPU
    directory = task_cgroup(ex, "t-cpu", "cpu")
    if cgroups.layout.version == 2:
        assert (directory / "cpu.max").read_text().split() == ["10000", "100000"]
    else:
        assert (directory / "cpu.cfs_quota_us").read_text().strip() == "10000"
        assert (directory / "cpu.cfs_period_us").read_text().strip() == "100000"
    pid = ex.start("t-cpu").pid
    assert pid is not None and pid in ex_cgroup_pids(directory)

    def throttled() -> bool:
        stat = dict(line.split() for line in (directory / "cpu.stat").read_text().splitlines())
        return int(stat["nr_throttled"]) > 0

    wait_for(throttled, WAIT, step=0.1, what="the CFS quota to throttle the task")
    ex.remove("t-cpu")
    assert not directory.exists()


def ex_cgroup_pids(directory: Path) -> set[int]:
    return {int(p) for p in (directory / "cgroup.procs").read_text().split()}


def test_a_task_without_limits_still_gets_a_cgroup(ex: ProcessExecutor, cgroups: Cgroups) -> None:
    needs_cgroup(cgroups, "memory")
    ex.prepare(spec("t-acct", "sleep", "1000"))
    directory = task_cgroup(ex, "t-acct", "memory")
    pid = ex.start("t-acct").pid
    assert ex_cgroup_pids(directory) == {pid}  # the task alone: its shim is not charged to it
    ex.remove("t-acct")
    assert not directory.exists()


def test_limits_are_refused_without_a_cgroup(make: Callable[..., ProcessExecutor]) -> None:
    ex = make(Cgroups(Layout(0)))
    with pytest.raises(ExecError, match=r"^cannot enforce the task's memory limit: no cgroup memory controller"):
        ex.prepare(spec("t-nolimit", "true", memory_bytes=64 << 20))
    assert not (ex.root / "t-nolimit").exists()
    status = run(ex, spec("t-plain", "true"))  # without limits, no cgroup is fine
    assert status.state == TaskState.COMPLETE


def test_the_cgroup_kills_what_left_the_process_group(ex: ProcessExecutor, cgroups: Cgroups) -> None:
    """A child in a session of its own escapes the group kill, not the task's cgroup."""
    needs_cgroup(cgroups, "memory")
    script = ("setsid sleep 1000 & child=$!; "  # the task ends only once the child has its own session
              "until [ \"$(ps -o sid= -p $child | tr -d ' ')\" = $child ]; do sleep 0.01; done; echo $child")
    status = run(ex, spec("t-escape", "sh", "-c", script))
    assert status.state == TaskState.COMPLETE
    (child,) = output(ex, "t-escape")
    wait_for(lambda: gone(int(child)), WAIT, what="the escaped child to be killed")
