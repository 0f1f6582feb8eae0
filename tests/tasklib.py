"""Teardown of the tasks a test's daemons left running: every daemon's tasks outlive it by
design (they survive a swarmd restart), so a test that ends must remove them itself."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from collections.abc import Iterable
from typing import TYPE_CHECKING

from swarmd.agent.exec.cgroups import Cgroups
from swarmd.agent.exec.process import ProcessExecutor

if TYPE_CHECKING:
    from tests.harness import Daemon


def start_ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    return None if fields[0] == b"Z" else int(fields[19])


def kill_leftovers(state_dir: Path, cgroups: Cgroups) -> None:
    """Teardown: remove every task (the executor kills shim and process group), then kill by
    PID whatever a failed removal left."""
    tasks = state_dir / "tasks"
    if not tasks.exists():
        return
    for task_dir in tasks.iterdir():
        raw: dict[str, object] = {}
        try:
            raw = json.loads((task_dir / "status.json").read_text())
        except (OSError, ValueError):
            pass
        try:
            ProcessExecutor(state_dir, cgroups=cgroups).remove(task_dir.name)
        finally:
            for pid_key, start_key in (("shim_pid", "shim_start"), ("pid", "pid_start")):
                pid = raw.get(pid_key)
                if isinstance(pid, int) and pid > 0 and start_ticks(pid) == raw.get(start_key):
                    try:
                        os.killpg(pid, signal.SIGKILL) if pid_key == "pid" else os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass


def stop_all(daemons: Iterable[Daemon]) -> None:
    """Teardown of a test's daemons: each stopped by PID, then the tasks they ran removed."""
    started = list(daemons)
    for d in started:
        try:
            d.stop()
        except AssertionError:
            pass
    for d in started:
        kill_leftovers(d.state_dir / "executor", Cgroups())
