"""Ops for tests of the state machine, shaped as the manager proposes them."""

from __future__ import annotations

from typing import Any

from swarmd.manager import requestid
from swarmd.manager.allocator.networks import NetworkAllocator, Request, legacy_allocation
from swarmd.store.machine import StateMachine, encode_op
from swarmd.store.refusal import OpError
from swarmd.store.state import Hooks


def network_op(network_id: str, name: str, n: int = 1, **fields: Any) -> bytes:
    """A create_network op carrying its allocation: the n-th /24 of 10.0.0.0/8, VXLAN ID 4096+n."""
    return encode_op("create_network", id=network_id, name=name, now="t",
                     ipam=[{"subnet": f"10.{n >> 8}.{n & 255}.0/24", "gateway": f"10.{n >> 8}.{n & 255}.1"}],
                     vxlan_ids=[4096 + n], **fields)


INGRESS = {"id": "i" * 25, "name": "ingress", "ingress": True, "now": "t0",
           "ipam": [{"subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}], "vxlan_ids": [4096]}


def create_network(machine: StateMachine, name: str, network_id: str | None = None,
                   ipam: list[dict[str, str]] | None = None, **fields: Any) -> dict[str, Any]:
    """A network created as the leader creates one (the allocator picks, then the op is
    applied, tagged when inside a ``requestid.scope``); a refusal before the op as the failed
    result apply would give."""
    def propose(choice: Any) -> dict[str, Any]:
        picked = choice.op_fields() if choice is not None else {}
        return machine.apply(encode_op("create_network", id=network_id or name.ljust(25, "x"), name=name, now="t",
                                       rid=requestid.next_tag(), **picked, **fields))
    requests = [Request(c.get("subnet", ""), c.get("gateway", "")) for c in ipam or []]
    try:
        return NetworkAllocator().create(machine.read, propose, name, bool(fields.get("ingress")), requests,
                                         requestid.next_write_committed)
    except OpError as e:
        return {"ok": False, "code": e.code, "message": e.message}


def legacy_machine() -> StateMachine:
    """A machine as a manager builds it: it can replay ops from before the leader allocated."""
    return StateMachine(Hooks(legacy_network_allocation=legacy_allocation))
