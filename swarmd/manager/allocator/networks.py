"""A new network's subnets, gateways and VXLAN IDs, chosen on the leader before it proposes.

The choice is made from the state this leader has applied and travels in the
``create_network`` op; apply only checks it (``swarmd.store.networks``). Two creates on this
leader at once must not pick the same free subnet, so a pick stays reserved here until its op
has been applied. A pick can still lose at apply time to an op this leader did not know of (one
a previous leader proposed just before the election): apply refuses it as a conflict and the
pick is made again from the newer state, so a user never sees that race as an error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from swarmd.manager.allocator import ipam
from swarmd.store.networks import Networks, check_new
from swarmd.store.objects import Cluster, IPAMConfig
from swarmd.store.refusal import OpError, Result
from swarmd.store.state import Draft, State

ATTEMPTS = 3  # a pick refused as a conflict is made again this many times in all


@dataclass(frozen=True)
class Request:
    """One IPAM configuration as the user asked for it ("" = choose one)."""

    subnet: str = ""
    gateway: str = ""


@dataclass(frozen=True)
class Choice:
    ipam: list[IPAMConfig]
    vxlan_ids: list[int]

    def op_fields(self) -> dict[str, Any]:
        """The fields of a ``create_network`` op (or a bootstrap's ingress) that carry it."""
        return {"ipam": [dict(c) for c in self.ipam], "vxlan_ids": list(self.vxlan_ids)}


@dataclass(frozen=True)
class InUse:
    """What a choice depends on, read from the state in one go."""

    pools: list[str]
    size: int
    subnets: dict[str, str]    # subnet -> the name of the network that holds it, in table order
    vxlan_ids: frozenset[int]

    @classmethod
    def of(cls, networks: Networks, cluster: Cluster | None) -> InUse:
        if cluster is None:
            raise OpError("FAILED_PRECONDITION", "the cluster does not exist")
        return cls(list(cluster["default_addr_pool"]), cluster["subnet_size"],
                   {c["subnet"]: n["name"] for n in networks.values() for c in n["ipam"]},
                   frozenset(v for n in networks.values() for v in n["vxlan_ids"]))

    def plus(self, picks: Iterable[tuple[str, Choice]]) -> InUse:
        """With the picks of ops still in flight (network name, choice) as if applied."""
        subnets, vxlan_ids = dict(self.subnets), set(self.vxlan_ids)
        for name, choice in picks:
            subnets.update((c["subnet"], name) for c in choice.ipam)
            vxlan_ids.update(choice.vxlan_ids)
        return InUse(self.pools, self.size, subnets, frozenset(vxlan_ids))


def choose(in_use: InUse, name: str, requests: Sequence[Request]) -> Choice:
    """First fit, in the order and with the texts the store used when it chose: each requested
    subnet checked against those in use (and the earlier ones of this network), each missing one
    the lowest free prefix of the pools, then one VXLAN ID per subnet, the lowest free ones.
    ``IPAMError`` for a refusal."""
    used = dict(in_use.subnets)
    configs: list[IPAMConfig] = []
    for req in requests or [Request()]:
        if req.subnet:
            subnet = ipam.check_requested_subnet(req.subnet, used)
        else:
            if req.gateway:
                raise ipam.IPAMError("a gateway needs a subnet")
            subnet = ipam.allocate_subnet(in_use.pools, in_use.size, list(used))
        gateway = ipam.check_gateway(req.gateway, subnet) if req.gateway else ipam.default_gateway(subnet)
        used[subnet] = name
        configs.append({"subnet": subnet, "gateway": gateway})
    taken = set(in_use.vxlan_ids)
    vxlan_ids = []
    for _ in configs:
        vni = ipam.allocate_vxlan_id(taken)
        taken.add(vni)
        vxlan_ids.append(vni)
    return Choice(configs, vxlan_ids)


def first_network(pools: Sequence[str], size: int) -> Choice:
    """The values of the first network of a new cluster (init's ingress)."""
    return choose(InUse(list(pools), size, {}, frozenset()), "ingress", [Request()])


def legacy_allocation(draft: Draft, cmd: dict[str, Any]) -> dict[str, Any]:
    """For the store's hooks: a create_network op written before the leader chose (an old
    journal) is allocated as apply allocated it then, from the state it is applied to."""
    requests = [Request(r.get("subnet") or "", r.get("gateway") or "") for r in cmd.get("ipam") or [{}]]
    try:
        return choose(InUse.of(draft.networks, draft.cluster), cmd["name"], requests).op_fields()
    except ipam.IPAMError as e:
        raise OpError("INVALID_ARGUMENT", str(e)) from None


class NetworkAllocator:
    """The leader's side of network creation: check, choose, propose, choose again on a
    conflict. Refusals are ``OpError`` (the store's codes and texts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the picks in flight; never held across a read or a write
        self._in_flight: dict[int, tuple[str, Choice]] = {}
        self._next = 0

    def create(self, read: Callable[[Callable[[State], InUse | None]], InUse | None],
               propose: Callable[[Choice | None], Result], name: str, ingress: bool,
               requests: Sequence[Request], retried: Callable[[State], bool] = lambda state: False) -> Result:
        """``read`` runs a function on the current state, ``propose`` proposes the op with a
        choice and returns its result; the result of the last attempt is returned.

        ``retried`` tells, from the state read, whether the next proposal repeats one that
        committed already (a call retried after its answer was lost): the network it created
        would fail the checks and the pick, so it is proposed again without either, and apply
        answers with its first result."""
        def in_use(state: State) -> InUse | None:
            if retried(state):
                return None
            check_new(state["networks"], name, ingress)
            return InUse.of(state["networks"], state["cluster"])

        result: Result = {}
        for _ in range(ATTEMPTS):
            current = read(in_use)
            result = propose(None) if current is None else self._pick_and_propose(current, propose, name, requests)
            if result.get("ok") or not result.get("conflict"):
                break
        return result

    def _pick_and_propose(self, current: InUse, propose: Callable[[Choice | None], Result], name: str,
                          requests: Sequence[Request]) -> Result:
        """Pick beside the picks in flight, keep the pick reserved while its op is proposed."""
        with self._lock:
            try:
                choice = choose(current.plus(self._in_flight.values()), name, requests)
            except ipam.IPAMError as e:
                raise OpError("INVALID_ARGUMENT", str(e)) from None
            self._next += 1
            token = self._next
            self._in_flight[token] = (name, choice)
        try:
            return propose(choice)
        finally:
            with self._lock:
                del self._in_flight[token]
