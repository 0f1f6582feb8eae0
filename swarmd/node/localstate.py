"""``<state>/state.json``: what this node needs to resume its swarm after a restart.

Its presence is the one marker of "this node is part of a swarm": it is written last when a
swarm is created or joined and removed first when leaving, so a crash in between never leaves
a node that believes in half a swarm.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from swarmd import netaddr
from swarmd.errors import StateFileError
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
        """None when absent; ``StateFileError`` (naming the file) when it cannot be used."""
        path = state_dir / STATE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError as e:  # also a UnicodeDecodeError
            raise StateFileError(f"{path} is damaged: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise StateFileError(f"{path} is damaged: not a JSON object")
        return cls._from_fields(path, data)

    @classmethod
    def _from_fields(cls, path: Path, data: dict[str, Any]) -> LocalState:
        """Each known field with its type checked (unknown fields are ignored, as before)."""
        known: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise StateFileError(f"{path} is damaged: {f.name} is missing")
                continue
            value = data[f.name]
            if not _has_type(f.name, value):
                raise StateFileError(f"{path} is damaged: {f.name} has a wrong type")
            known[f.name] = value
        return cls(**known)

    @staticmethod
    def remove(state_dir: Path) -> None:
        (state_dir / STATE_FILE).unlink(missing_ok=True)


def _has_type(name: str, value: Any) -> bool:
    if name == "data_path_port":
        return type(value) is int and 0 <= value <= 65535
    if name == "role":
        return value in ("manager", "worker")
    if name == "remote_managers":
        return isinstance(value, list) and all(
            isinstance(m, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in m.items())
            and {"node_id", "addr"} <= m.keys() for m in value)
    return isinstance(value, str)
