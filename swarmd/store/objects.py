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
    engine_labels: NotRequired[dict[str, str]]  # what `engine.labels.KEY` constraints match


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


# -- services -------------------------------------------------------------------------------------
# swarmkit's ServiceSpec, cut to what a process executor runs. Durations are nanoseconds; a spec
# in the store is complete (``store.specs.normalize`` fills in Docker's defaults).

class Resources(TypedDict):
    nano_cpus: int
    memory_bytes: int


class ResourceRequirements(TypedDict):
    limits: Resources
    reservations: Resources              # what the scheduler sets aside on the chosen node


class Placement(TypedDict):
    constraints: list[str]               # "node.labels.zone==x", as swarmkit parses them
    max_replicas: int                    # tasks of the service per node; 0: no limit


class RestartPolicy(TypedDict):
    condition: str                       # none | on-failure | any
    delay_ns: int
    max_attempts: int                    # 0: no limit
    window_ns: int                       # the window max_attempts counts in; 0: unbounded


class TaskTemplate(TypedDict):
    program: str                         # IMAGE of `service create IMAGE [COMMAND] [ARG...]`
    args: list[str]
    env: list[str]                       # "KEY=VALUE"
    workdir: str
    user: str
    stop_signal: str
    stop_grace_period_ns: int
    resources: ResourceRequirements
    placement: Placement
    restart_policy: RestartPolicy
    force_update: int                    # `update --force` bumps it: every task is out of date


class UpdateConfig(TypedDict):
    parallelism: int                     # tasks per step; 0: all at once
    delay_ns: int
    failure_action: str                  # pause | continue | rollback
    monitor_ns: int
    max_failure_ratio: float
    order: str                           # stop-first | start-first


class ServiceSpec(TypedDict):
    name: str
    labels: dict[str, str]
    mode: str                            # replicated | global
    replicas: int                        # replicated only (0 for global)
    task_template: TaskTemplate
    update_config: UpdateConfig
    rollback_config: UpdateConfig


class UpdateStatus(TypedDict):
    state: str                           # updating | paused | completed | rollback_started | ...
    started_at: str
    completed_at: str
    message: str


class Service(Stamped):
    spec: ServiceSpec
    spec_version: int                    # the change index that set ``spec``; its tasks carry it
    previous_spec: ServiceSpec | None    # what a rollback returns to
    previous_spec_version: int | None
    update_status: UpdateStatus | None


# -- tasks ----------------------------------------------------------------------------------------

class TaskStatus(TypedDict):
    state: str                           # store.taskstate: only ever moves forward
    timestamp: str                       # when it was observed (the reporter's clock)
    message: str
    err: str
    exit_code: int
    pid: int                             # the task's process (group leader); 0 when none
    container_id: str                    # the executor's handle for what it runs
    applied_at: NotRequired[str]         # when a manager wrote a node's report (its clock)


class Task(Stamped):
    service_id: str
    service_name: str
    slot: int                            # replicated: 1..N; global: 0
    node_id: str                         # "" until scheduled; a global task's node from the start
    spec: TaskTemplate                   # the service's template when the task was made
    spec_version: int                    # the service's spec_version it was made from
    desired_state: str                   # managers write it; never moves back either
    status: TaskStatus                   # the node reports it (the scheduler, while pending)


def stamp_defaults(obj: dict[str, Any]) -> None:
    """Fill what an object written before every object had version and timestamps lacks."""
    obj.setdefault("version", 0)
    obj.setdefault("created_at", "")
    obj.setdefault("updated_at", obj["created_at"])
