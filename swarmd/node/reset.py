"""``swarmd --reset-state``: make a node's state dir empty again, for a node whose daemon will
not start (a damaged Raft store, certificates or ``state.json``), so ``swarmctl leave`` cannot run.

It takes the same lock as a running daemon, so it refuses while a swarmd uses the directory,
and removes in ``leave``'s order: ``state.json`` first (the membership marker), so an
interrupted reset leaves leftovers that the next start wipes, never half a swarm.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from swarmd.errors import SwarmError
from swarmd.fsutil import fsync_dir, remove_tree
from swarmd.node.localstate import STATE_FILE

# What a swarm leaves in the state dir (raft.old-* is a --force-new-cluster in progress).
_SWARM_DIRS = ("certificates", "raft")
EXECUTOR_DIR = "executor"


def _remove_tasks(executor_dir: Path) -> None:
    """Stop and remove every task the node's executor still holds (they outlive the daemon by
    design), as ``leave`` does: a reset node runs nothing of its old swarm."""
    from swarmd.agent.exec.api import ExecError
    from swarmd.agent.exec.process import ProcessExecutor

    tasks = executor_dir / "tasks"
    if not tasks.is_dir():
        return
    executor = ProcessExecutor(executor_dir)
    for task_dir in sorted(tasks.iterdir()):
        try:
            executor.remove(task_dir.name)
        except (ExecError, OSError) as e:
            raise SwarmError(f"could not stop task {task_dir.name[:64]}: {e}") from None


def reset_state(state_dir: Path) -> list[str]:
    """Remove this node's swarm state from ``state_dir``; the names removed, in order."""
    if not state_dir.is_dir():
        return []
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SwarmError(f"another swarmd is already using the state dir {state_dir}; stop it first") from None
        removed = []
        marker = state_dir / STATE_FILE
        if marker.exists():
            marker.unlink()
            fsync_dir(state_dir)
            removed.append(STATE_FILE)
        if (state_dir / EXECUTOR_DIR).exists():
            _remove_tasks(state_dir / EXECUTOR_DIR)
        leftovers = [state_dir / name for name in (*_SWARM_DIRS, EXECUTOR_DIR)]
        leftovers += sorted(state_dir.glob("raft.old-*"))
        for path in leftovers:
            if path.exists():
                remove_tree(path)
                removed.append(path.name)
        fsync_dir(state_dir)
        return removed
    finally:
        os.close(fd)
