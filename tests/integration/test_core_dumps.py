"""A manager's memory holds the cluster's CA key, the Raft data key and the unlock key: the daemon
must never write it to a core file.

The kernel shows a process's dumpable flag through the owner of its ``/proc/<pid>`` files: a
non-dumpable process's are owned by root whoever runs it. So the daemon runs here as ``nobody``
through ``setpriv`` (as root its files are root's either way), and its core file limit is read from
``/proc/<pid>/limits``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from tests.harness import Daemon, SWARMD, stop_process, wait_for

NOBODY = 65534
SETPRIV = shutil.which("setpriv") or "setpriv"


@pytest.fixture
def unprivileged_dir() -> Iterator[Path]:
    """A directory ``nobody`` may use (pytest's own tmp dir is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="swarmd-coredump-"))
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def core_limit(pid: int) -> str:
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max core file size"))
    return " ".join(line.split()[4:6])  # soft and hard limits


def serving(socket: Path, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"swarmd exited with {proc.returncode}"
    try:
        with grpc.insecure_channel(f"unix:{socket}") as ch:
            pb_grpc.ControlStub(ch).Info(pb.InfoRequest(), timeout=2)
        return True
    except grpc.RpcError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a daemon as another user needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_daemon_marks_itself_non_dumpable(unprivileged_dir: Path) -> None:
    socket = unprivileged_dir / "swarmd.sock"
    with open(unprivileged_dir / "swarmd.log", "wb") as log:
        proc = subprocess.Popen([SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SWARMD,
                                 "--state-dir", str(unprivileged_dir / "state"), "--control-socket", str(socket)],
                                stdout=log, stderr=subprocess.STDOUT,
                                env={"PATH": os.environ.get("PATH", ""), "HOME": str(unprivileged_dir)},
                                start_new_session=True)
    try:
        wait_for(lambda: serving(socket, proc), 15, what="swarmd to serve its control socket")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert f"Uid:\t{NOBODY}\t" in status  # it runs as nobody...
        assert os.stat(f"/proc/{proc.pid}/status").st_uid == 0  # ...yet its /proc files are root's
        assert core_limit(proc.pid) == "0 0"
    finally:
        stop_process(proc)


def test_manager_has_no_core_file_limit(manager: Daemon) -> None:
    assert manager.proc is not None
    assert core_limit(manager.proc.pid) == "0 0"
