"""The shapes of the store's objects.

TypedDicts, not classes: the state is JSON in the log, in snapshots and on the wire between
managers, and snapshots written before these types existed must load as they are. A TypedDict
is that same dict with its keys checked by mypy; nothing is converted on the way in or out.

Every object carries ``version`` (the store's change index of its last change, set by the
machine), ``created_at`` and ``updated_at`` (RFC 3339, chosen by the proposer).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class Stamped(TypedDict):
    id: str
    version: int
    created_at: str
    updated_at: str


# -- cluster --------------------------------------------------------------------------------------

class ClusterSpec(TypedDict, total=False):
    task_history_limit: int
    dispatcher_heartbeat_ns: int
    node_cert_expiry_ns: int
    snapshot_interval: int
    keep_old_snapshots: int
    log_entries_for_slow_followers: int
    heartbeat_tick: int
    election_tick: int
    autolock_managers: bool


class RootCA(TypedDict):
    cert: str
    key: str


class RootRotation(TypedDict):
    cert: str
    key: str
    cross_signed: str


class Cluster(Stamped):
    name: str
    spec: ClusterSpec
    root_ca: RootCA
    join_tokens: dict[str, str]          # role -> token
    default_addr_pool: list[str]
    subnet_size: int
    data_path_port: int
    force_rotate: int
    unlock_key: str
    root_rotation: NotRequired[RootRotation | None]


# -- nodes ----------------------------------------------------------------------------------------

class ManagerInfo(TypedDict):
    addr: str                            # the manager's advertise address (Raft, remote API)


class NodeTLS(TypedDict, total=False):
    trust_root: str
    issuer_subject: str
    issuer_public_key: str


class Node(Stamped):
    role: str                            # desired role: worker | manager
    availability: str                    # active | pause | drain
    labels: dict[str, str]
    hostname: str
    os: str
    architecture: str
    nano_cpus: int
    memory_bytes: int
    engine_version: str
    state: str                           # unknown | ready | down
    addr: str
    message: str
    manager: ManagerInfo | None          # set while the node is a Raft member
    tls: NotRequired[NodeTLS]
    cert_rotate: NotRequired[bool]
    public_key_sha256: NotRequired[str]  # of its first certificate: one key, one node


# -- networks -------------------------------------------------------------------------------------

class IPAMConfig(TypedDict):
    subnet: str
    gateway: str


class Network(Stamped):
    name: str
    driver: str
    ingress: bool
    internal: bool
    attachable: bool
    ipam: list[IPAMConfig]
    vxlan_ids: list[int]                 # one per IPAM configuration
    labels: dict[str, str]
    options: dict[str, str]


def stamp_defaults(obj: dict[str, Any]) -> None:
    """Fill what an object written before every object had version and timestamps lacks."""
    obj.setdefault("version", 0)
    obj.setdefault("created_at", "")
    obj.setdefault("updated_at", obj["created_at"])
