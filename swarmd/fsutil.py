"""Durable file helpers: every state file is replaced atomically and fsynced, so a crash
leaves either the old content or the new one, never a torn file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Persist a directory entry change (create, rename, unlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) and force its mode: state directories are private."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write temp file, fsync, rename over ``path``, fsync the directory.

    The temp file is created with ``mode`` from the start, so a secret is never readable by
    others even for an instant.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove a directory tree if present; used to wipe swarm state on leave or a failed init."""
    if path.exists():
        shutil.rmtree(path)
