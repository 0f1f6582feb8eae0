"""Default locations (DESIGN §2–3): system paths for root, XDG paths for a normal user."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_STATE_DIR = Path("/var/lib/swarmd")
SYSTEM_CONTROL_SOCKET = Path("/run/swarmd/swarmd.sock")


def _is_root() -> bool:
    return os.geteuid() == 0


def default_state_dir() -> Path:
    if _is_root():
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "swarmd"


def default_control_socket() -> Path:
    if _is_root():
        return SYSTEM_CONTROL_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "swarmd.sock"
    return default_state_dir() / "swarmd.sock"
