"""The per-task supervisor ("shim"): one small process per task, detached from the daemon.

The daemon cannot wait for a process it did not fork, and a restarted daemon forked none of its
tasks. So the shim forks the task, waits for it, routes its stdout/stderr into rotated log files
and writes the task's status to ``status.json`` (atomically) for whichever daemon reads it. It
holds an exclusive flock on ``lock`` for its whole life: a free lock means no shim, whatever
the PID table says now.

Run as ``python -I -S shim.pyc TASK_DIR READY_FD`` (compiled by the executor: compiling the
source would cost each shim 2 MiB); it reads ``shim.conf`` (marshal, written by the executor
with this same interpreter). It imports nothing the interpreter has not already
loaded except ``select`` and ``fcntl``: every task pays this process's memory.

Signals to the shim: SIGTERM/SIGINT stop the task (its stop signal to its process group, SIGKILL
after the grace period); SIGUSR1 kills it now.
"""

from __future__ import annotations

import fcntl
import marshal
import os
import select
import sys
import time

import _signal  # type: ignore[import-not-found]  # the C module: ``signal`` would import enum

STATUS_VERSION = 1
MAX_LINE = 16 * 1024  # longer lines are split into partial records, as Docker's log copier does
READ_SIZE = 64 * 1024
DRAIN_SECONDS = 2.0  # after the task ends, how long output from escaped processes is still read
EXIT_NOT_STARTED = 127  # Docker's exit code for a program that could not be executed


# -- status ---------------------------------------------------------------------------------------

def json_text(value: object) -> str:
    """The few JSON shapes the status needs, without importing json (1 MiB per shim)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            code = ord(ch)
            if ch == '"' or ch == "\\":
                out.append("\\" + ch)
            elif code < 0x20 or 0xD800 <= code <= 0xDFFF or code == 0x7F:
                out.append("\\u%04x" % code)
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(json_text(str(k)) + ": " + json_text(v) for k, v in value.items()) + "}"
    raise TypeError("unsupported status value")


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
    os.rename(tmp, path)


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: with the PID, it names one process for good."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2:].split()[19])


# -- logs -----------------------------------------------------------------------------------------

def rfc3339_nano(ns: int) -> bytes:
    secs, frac = divmod(ns, 1_000_000_000)
    t = time.gmtime(secs)
    return b"%04d-%02d-%02dT%02d:%02d:%02d.%09dZ" % (t[0], t[1], t[2], t[3], t[4], t[5], frac)


class LineFramer:
    """Cuts one stream into CRI log records: ``<time> <stream> F|P <line>\\n`` (P: a partial line,
    continued by the next record). Holds at most MAX_LINE bytes of an unfinished line."""

    def __init__(self, stream: bytes) -> None:
        self.tag = b" " + stream + b" "
        self.pending = b""

    def feed(self, data: bytes, stamp: bytes) -> list[bytes]:
        parts = (self.pending + data).split(b"\n")
        rest = parts.pop()
        if parts and max(map(len, parts)) <= MAX_LINE:  # the usual case, without a Python loop per byte
            full = stamp + self.tag + b"F "
            records = [full + line + b"\n" for line in parts]
        else:
            records = [r for line in parts for r in self._split(line, stamp)]
        while len(rest) >= MAX_LINE:
            records.append(stamp + self.tag + b"P " + rest[:MAX_LINE] + b"\n")
            rest = rest[MAX_LINE:]
        self.pending = rest
        return records

    def _split(self, line: bytes, stamp: bytes) -> list[bytes]:
        """A complete line as records of at most MAX_LINE bytes: partial ones, then a full one."""
        chunks = [line[i:i + MAX_LINE] for i in range(0, len(line), MAX_LINE)] or [b""]
        return [stamp + self.tag + (b"F " if i == len(chunks) - 1 else b"P ") + c + b"\n"
                for i, c in enumerate(chunks)]

    def flush(self, stamp: bytes) -> list[bytes]:
        if not self.pending:
            return []
        record = stamp + self.tag + b"F " + self.pending + b"\n"
        self.pending = b""
        return [record]


class RotatingLog:
    """``output.log`` plus ``output.log.1`` … ``.N-1``: at most ``max_files`` files of at most
    ``max_bytes`` each (a single record larger than that gets a file to itself). Write errors
    (disk full) drop output rather than block the task."""

    def __init__(self, path: str, max_bytes: int, max_files: int) -> None:
        self.path, self.max_bytes, self.max_files = path, max_bytes, max(1, max_files)
        self.fd = -1
        self.size = 0
        self.dropped = 0
        self._open()

    def _open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self.size = os.fstat(self.fd).st_size
        except OSError:
            self.fd = -1

    def rotate(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        try:
            if self.max_files == 1:
                os.unlink(self.path)
            else:
                for n in range(self.max_files - 1, 0, -1):
                    older = self.path if n == 1 else "%s.%d" % (self.path, n - 1)
                    if os.path.exists(older):
                        os.rename(older, "%s.%d" % (self.path, n))
        except OSError:
            pass
        self._open()

    def write(self, records: list[bytes]) -> None:
        batch: list[bytes] = []
        batch_size = 0
        for record in records:
            if self.size + batch_size + len(record) > self.max_bytes and self.size + batch_size > 0:
                self._write(b"".join(batch))
                batch, batch_size = [], 0
                self.rotate()
            batch.append(record)
            batch_size += len(record)
        self._write(b"".join(batch))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self.fd < 0:
            self.dropped += len(data)
            return
        try:
            while data:
                n = os.write(self.fd, data)
                self.size += n
                data = data[n:]
        except OSError:
            self.dropped += len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- the task process -----------------------------------------------------------------------------

def go_error(err: OSError) -> str:
    """An errno as Go prints it (``no such file or directory``), which is what Docker shows."""
    text = os.strerror(err.errno) if err.errno else str(err)
    return text[:1].lower() + text[1:]


def go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_program(program: str, args: list[str], env: dict[str, str]) -> str:
    """Exec the program as runc would find it; returns the error text if it cannot be run."""
    argv = [program] + args
    if "/" in program:
        try:
            os.stat(program)
        except OSError as err:
            return "exec: %s: stat %s: %s" % (go_quote(program), program, go_error(err))
        try:
            os.execve(program, argv, env)
        except OSError as err:
            return "exec: %s: %s" % (go_quote(program), go_error(err))
    search = env.get("PATH", "")
    for directory in search.split(":"):
        candidate = os.path.join(directory or ".", program)
        try:
            if not os.path.isfile(candidate) or not os.access(candidate, os.X_OK):
                continue
            os.execve(candidate, argv, env)
        except OSError as err:
            return "exec: %s: %s" % (go_quote(program), go_error(err))
    return "exec: %s: executable file not found in $PATH" % go_quote(program)


def reset_signals() -> None:
    """Default dispositions and an empty mask: ignored signals and the mask survive exec, and
    the daemon (Python ignores SIGPIPE and SIGXFSZ) must not pass them on to the task."""
    _signal.set_wakeup_fd(-1)
    for sig in range(1, _signal.NSIG):
        if sig in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])


def run_child(conf: dict[str, object], out_w: int, err_w: int, exec_w: int) -> None:
    """In the forked child: become the task, then exec; never returns."""
    message = "unknown error"
    try:
        os.setsid()  # its own session and process group: the stop signal goes to the group
        for procs in conf["cgroup_procs"]:  # type: ignore[attr-defined]
            try:
                fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, b"%d" % os.getpid())
                finally:
                    os.close(fd)
            except OSError as err:
                raise RuntimeError("joining cgroup %s: %s" % (procs, go_error(err))) from None
        reset_signals()
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        uid, gid = int(conf["uid"]), int(conf["gid"])  # type: ignore[call-overload]
        if os.geteuid() == 0:
            os.setgroups(conf["groups"])  # type: ignore[arg-type]
            os.setgid(gid)
            os.setuid(uid)
        os.umask(0o022)
        workdir = str(conf["workdir"])
        try:
            os.chdir(workdir)
        except OSError as err:
            raise RuntimeError("chdir to cwd (%s) failed: %s" % (go_quote(workdir), go_error(err))) from None
        message = exec_program(str(conf["program"]), conf["args"], conf["env"])  # type: ignore[arg-type]
    except BaseException as err:  # anything at all: the task fails to start with a message
        message = str(err) or type(err).__name__
    try:
        os.write(exec_w, message.encode("utf-8", "replace")[:4096])
    finally:
        os._exit(EXIT_NOT_STARTED)


# -- supervision ----------------------------------------------------------------------------------

def _noop(signum: int, frame: object) -> None:
    """Signals are read from the wakeup pipe; the Python-level handler has nothing to do."""


def oom_kills(path: str) -> int:
    """The ``oom_kill`` counter of the task's memory cgroup (v1 memory.oom_control, v2
    memory.events); 0 when there is none."""
    if not path:
        return 0
    try:
        with open(path, "rb") as f:
            for line in f.read().splitlines():
                key, _, value = line.partition(b" ")
                if key == b"oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def kill_cgroup(procs_files: list[str]) -> None:
    """SIGKILL what is left in the task's cgroups (processes that left its process group)."""
    for procs in procs_files:
        try:
            with open(procs, "rb") as f:
                pids = [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            continue
        for pid in pids:
            try:
                os.kill(pid, _signal.SIGKILL)
            except OSError:
                pass


def killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


class Shim:
    def __init__(self, task_dir: str, conf: dict[str, object]) -> None:
        self.dir = task_dir
        self.conf = conf
        self.status: dict[str, object] = {
            "v": STATUS_VERSION, "state": "starting", "shim_pid": os.getpid(),
            "shim_start": start_ticks(os.getpid()), "pid": None, "pid_start": None,
            "exit_code": None, "signal": None, "error": "", "started_at": None,
            "finished_at": None, "stop_requested": False, "oom_killed": False,
        }

    def save(self) -> None:
        write_atomic(os.path.join(self.dir, "status.json"), json_text(self.status) + "\n")

    def run(self, ready_fd: int) -> int:
        conf = self.conf
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        _signal.set_wakeup_fd(wake_w)
        for sig in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGUSR1, _signal.SIGCHLD):
            _signal.signal(sig, _noop)
        self.save()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        exec_r, exec_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(out_r)
            os.close(err_r)
            os.close(exec_r)
            run_child(conf, out_w, err_w, exec_w)
        for fd in (out_w, err_w, exec_w):
            os.close(fd)
        self.status["pid"], self.status["pid_start"] = pid, start_ticks(pid)
        failure = b""
        while True:  # EOF when exec closed the pipe (success) or the child wrote why it failed
            try:
                chunk = os.read(exec_r, 4096)
            except InterruptedError:
                continue
            if not chunk:
                break
            failure += chunk
        os.close(exec_r)
        if failure:
            os.waitpid(pid, 0)
            os.close(out_r)
            os.close(err_r)
            self.status.update(state="failed", exit_code=EXIT_NOT_STARTED, pid=None,
                               error="starting container failed: " + failure.decode("utf-8", "replace"),
                               finished_at=time.time_ns())
            self.save()
            os.close(ready_fd)
            return 0
        self.status.update(state="running", started_at=time.time_ns())
        self.save()
        os.close(ready_fd)
        self.supervise(pid, out_r, err_r, wake_r)
        return 0

    def supervise(self, pid: int, out_r: int, err_r: int, wake_r: int) -> None:
        conf = self.conf
        log = RotatingLog(os.path.join(self.dir, "output.log"),
                          int(conf["log_max_bytes"]), int(conf["log_max_files"]))  # type: ignore[call-overload]
        streams = {out_r: LineFramer(b"stdout"), err_r: LineFramer(b"stderr")}
        poller = select.poll()
        for fd in (out_r, err_r, wake_r):
            poller.register(fd, select.POLLIN)
        stop_signal = int(conf["stop_signal"])  # type: ignore[call-overload]
        grace = float(conf["stop_grace_seconds"])  # type: ignore[arg-type]
        procs_files: list[str] = conf["cgroup_procs"]  # type: ignore[assignment]
        exit_status: int | None = None
        kill_at: float | None = None
        drain_until = 0.0
        while exit_status is None or (streams and time.monotonic() < drain_until):
            deadlines = [d for d in (kill_at, drain_until if exit_status is not None else None) if d is not None]
            timeout = None if not deadlines else max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)
            events = poller.poll(timeout)
            stamp = rfc3339_nano(time.time_ns())
            for fd, _ in events:
                if fd == wake_r:
                    for sig in self._drain_wakeups(wake_r):
                        if sig in (_signal.SIGTERM, _signal.SIGINT) and not self.status["stop_requested"]:
                            self.status["stop_requested"] = True
                            self.save()
                            if exit_status is None:
                                killpg(pid, stop_signal)
                                kill_at = time.monotonic() + grace
                        elif sig == _signal.SIGUSR1 and exit_status is None:
                            self.status["stop_requested"] = True
                            killpg(pid, _signal.SIGKILL)
                    continue
                framer = streams.get(fd)
                if framer is None:
                    continue
                try:
                    data = os.read(fd, READ_SIZE)
                except InterruptedError:
                    continue
                if data:
                    log.write(framer.feed(data, stamp))
                else:
                    log.write(framer.flush(stamp))
                    poller.unregister(fd)
                    os.close(fd)
                    del streams[fd]
            if exit_status is None:
                # Seen but not reaped: the zombie keeps the PID, so the group kill cannot hit a
                # process that reused it.
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    # The task ends with its main process, as a container does with its PID 1.
                    killpg(pid, _signal.SIGKILL)
                    kill_cgroup(procs_files)
                    exit_status = os.waitpid(pid, 0)[1]
                    drain_until = time.monotonic() + DRAIN_SECONDS
                    kill_at = None
                elif kill_at is not None and time.monotonic() >= kill_at:
                    killpg(pid, _signal.SIGKILL)
                    kill_at = None
        stamp = rfc3339_nano(time.time_ns())
        for fd, framer in streams.items():
            log.write(framer.flush(stamp))
            os.close(fd)
        log.close()
        self._finish(exit_status)

    def _drain_wakeups(self, wake_r: int) -> bytes:
        data = b""
        while True:
            try:
                chunk = os.read(wake_r, 512)
            except (BlockingIOError, InterruptedError):
                return data
            if not chunk:
                return data
            data += chunk

    def _finish(self, wait_status: int) -> None:
        finished = time.time_ns()
        if os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            code = 128 + sig
            self.status.update(signal=sig, oom_killed=sig == _signal.SIGKILL
                               and oom_kills(str(self.conf.get("oom_events", ""))) > 0)
        else:
            code = os.WEXITSTATUS(wait_status)
        self.status.update(exit_code=code, finished_at=finished,
                           state="complete" if code == 0 else "failed",
                           error="" if code == 0 else "task: non-zero exit (%d)" % code)
        self.save()


def main(argv: list[str]) -> int:
    task_dir, ready_fd = argv[1], int(argv[2])
    os.set_inheritable(ready_fd, False)
    lock = os.open(os.path.join(task_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 3  # another shim supervises this task
    with open(os.path.join(task_dir, "shim.conf"), "rb") as f:
        conf = marshal.loads(f.read())
    if os.fork():
        os._exit(0)  # the daemon reaps this parent at once; the shim is nobody's child now
    # SIGCHLD must not be ignored (children would vanish unwaited); nothing may stay blocked.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
    shim = Shim(task_dir, conf)
    try:
        return shim.run(ready_fd)
    except BaseException as err:
        shim.status.update(state="failed", error="task supervisor failed: %s" % (str(err) or type(err).__name__),
                           finished_at=time.time_ns())
        try:
            shim.save()
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
