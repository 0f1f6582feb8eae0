"""``<state>/state.json``: what this node needs to resume its swarm after a restart.

Its presence is the one marker of "this node is part of a swarm": it is written last when a
swarm is created or joined and removed first when leaving, so a crash in between never leaves
a node that believes in half a swarm.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swarmd import netaddr
from swarmd.fsutil import atomic_write

STATE_FILE = "state.json"


@dataclass
class LocalState:
    node_id: str
    cluster_id: str
    role: str                 # manager | worker
    listen_addr: str          # ip:port the remote API binds
    advertise_addr: str       # host:port other nodes use to reach it
    local_addr: str           # this node's own IP
    data_path_addr: str = ""
    data_path_port: int = 4789
    remote_managers: list[dict[str, str]] = field(default_factory=list)

    @property
    def advertise_host(self) -> str:
        return netaddr.host_of(self.advertise_addr)

    def save(self, state_dir: Path) -> None:
        atomic_write(state_dir / STATE_FILE, json.dumps(asdict(self), indent=2).encode() + b"\n", 0o600)

    @classmethod
    def load(cls, state_dir: Path) -> LocalState | None:
        path = state_dir / STATE_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @staticmethod
    def remove(state_dir: Path) -> None:
        (state_dir / STATE_FILE).unlink(missing_ok=True)
