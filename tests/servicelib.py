"""Services, tasks and nodes for tests, shaped as the store holds them."""

from __future__ import annotations

import copy
from typing import Any, cast

from swarmd.store import specs
from swarmd.store.machine import StateMachine, encode_op
from swarmd.store.objects import Service, Task
from tests.storelib import INGRESS

CLUSTER = {"id": "c" * 25, "default_addr_pool": ["10.0.0.0/8"], "subnet_size": 24, "spec": {},
           "join_tokens": {"worker": "w", "manager": "m"}, "root_ca": {}, "created_at": "t0", "updated_at": "t0"}
T0 = "2026-01-01T00:00:00Z"
SECOND = 1_000_000_000
GIB = 1 << 30


def node(name: str, **fields: Any) -> dict[str, Any]:
    """A ready, active worker with 4 CPUs and 8 GiB."""
    return {"id": name, "role": "worker", "labels": {}, "availability": "active", "state": "ready",
            "hostname": name, "os": "linux", "architecture": "x86_64", "nano_cpus": 4 * SECOND,
            "memory_bytes": 8 * GIB, "engine_version": "", "addr": "10.0.0.1", "message": "", "manager": None,
            "public_key_sha256": f"key-{name}", "created_at": "t0", "updated_at": "t0", "version": 1, **fields}


def raw_spec(name: str = "web", **fields: Any) -> dict[str, Any]:
    """A spec as a caller sends it: only what differs from the defaults."""
    template = fields.pop("task_template", {})
    return {"name": name, "task_template": {"program": "/bin/sleep", "args": ["1000"], **template}, **fields}


def service(name: str = "web", service_id: str | None = None, spec_version: int = 10, **fields: Any) -> Service:
    return {"id": service_id or f"svc-{name}", "version": spec_version, "created_at": T0, "updated_at": T0,
            "spec": specs.normalize(raw_spec(name, **fields)), "spec_version": spec_version,
            "previous_spec": None, "previous_spec_version": None, "update_status": None}


def task(svc: Service, task_id: str, slot: int = 1, node_id: str = "", state: str = "new",
         desired: str = "running", timestamp: str = T0, created_at: str = T0, **status: Any) -> Task:
    return {"id": task_id, "version": 1, "created_at": created_at, "updated_at": created_at,
            "service_id": svc["id"], "service_name": svc["spec"]["name"], "slot": slot, "node_id": node_id,
            "spec": copy.deepcopy(svc["spec"]["task_template"]), "spec_version": svc["spec_version"],
            "desired_state": desired,
            "status": cast(Any, {"state": state, "timestamp": timestamp, "message": "", "err": "", "exit_code": 0,
                                 "pid": 0, "container_id": "", **status})}


def machine(*nodes: dict[str, Any]) -> StateMachine:
    """A bootstrapped store holding ``nodes`` (the first one is the bootstrap node)."""
    m = StateMachine()
    first, *rest = nodes or (node("n0"),)
    assert m.apply(encode_op("bootstrap", cluster=CLUSTER, node=first, ingress=INGRESS))["ok"]
    for n in rest:
        assert m.apply(encode_op("add_node", node=n))["ok"]
    return m


def apply(m: StateMachine, kind: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("now", T0)
    return m.apply(encode_op(kind, **fields))


def propose_plan(m: StateMachine, ops: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """A plan's ops applied as the leader proposes them (in order), each result checked ok."""
    results = [m.apply(encode_op(kind, **fields)) for kind, fields in ops]
    assert all(r["ok"] for r in results), results
    return results
