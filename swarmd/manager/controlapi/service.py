"""Services: create, inspect, list (with Docker's task counts), update (version-checked, or a
rollback to the previous spec), remove.

A spec is checked (``validate.service_spec``, Docker's texts) before anything is proposed, so
bad input creates nothing; the store checks it again and keeps names unique (swarmkit's name
conflict text). What the service's tasks do then is the leader's orchestrators' business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from swarmd import errors
from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.ca import ids
from swarmd.manager import servicepb, validate
from swarmd.manager.controlapi.base import ControlAPI, Ctx
from swarmd.manager.controlapi.forwarding import on_leader
from swarmd.manager.manager import Manager
from swarmd.server import abort_on_error
from swarmd.store import taskstate
from swarmd.store.objects import Service, Task
from swarmd.store.services import name_key
from swarmd.store.state import State
from swarmd.timeutil import now_rfc3339

SERVICE_FILTERS = ("id", "label", "mode", "name")


class ServiceAPI(ControlAPI):
    @abort_on_error
    @on_leader
    def CreateService(self, request: spb.CreateServiceRequest, context: Ctx) -> spb.CreateServiceResponse:
        return spb.CreateServiceResponse(service=create_service(self.rt.require_manager(), request.spec))

    @abort_on_error
    @on_leader
    def GetService(self, request: spb.GetServiceRequest, context: Ctx) -> spb.GetServiceResponse:
        manager = self.rt.require_manager()
        return spb.GetServiceResponse(service=manager.read(lambda s: servicepb.service(resolve_service(s, request.ref))))

    @abort_on_error
    @on_leader
    def ListServices(self, request: spb.ListServicesRequest, context: Ctx) -> spb.ListServicesResponse:
        return spb.ListServicesResponse(services=list_services(self.rt.require_manager(), list(request.filters)))

    @abort_on_error
    @on_leader
    def UpdateService(self, request: spb.UpdateServiceRequest, context: Ctx) -> spb.UpdateServiceResponse:
        return spb.UpdateServiceResponse(service=update_service(self.rt.require_manager(), request))

    @abort_on_error
    @on_leader
    def RemoveService(self, request: spb.RemoveServiceRequest, context: Ctx) -> spb.RemoveServiceResponse:
        manager = self.rt.require_manager()
        service_id = manager.read(lambda s: resolve_service(s, request.ref)["id"])
        manager.propose("remove_service", id=service_id, now=now_rfc3339())
        return spb.RemoveServiceResponse()


def resolve_service(state: State, ref: str) -> Service:
    """By ID, then name, then unique ID prefix (Docker's daemon's ``getService``, its texts)."""
    services = state["services"]
    if ref in services:
        return services[ref]
    by_name = [services[i] for i in services.lookup("name", name_key(ref))] if ref else []
    for candidates in (by_name, [s for s in services.values() if ref and s["id"].startswith(ref)]):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise errors.invalid(f"service {ref} is ambiguous ({len(candidates)} matches found)")
    raise errors.not_found(f"service {ref} not found")


def parse_filters(filters: Sequence[str], accepted: Iterable[str]) -> dict[str, list[str]]:
    """``key=value`` items by key (Docker's filter args: one key's values OR, keys AND)."""
    allowed = set(accepted)
    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise errors.invalid("bad format of filter (expected name=value)")
        if key not in allowed:
            raise errors.invalid(f"Invalid filter '{key}'")
        parsed.setdefault(key, []).append(value)
    return parsed


def _labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def service_filter(filters: Sequence[str]) -> Callable[[Service], bool]:
    """Docker's ``service ls --filter``: id and name match prefixes, label a key or key=value
    (all must match), mode the mode (an unknown mode matches nothing)."""
    by_key = parse_filters(filters, SERVICE_FILTERS)

    def keep(service: Service) -> bool:
        spec = service["spec"]
        if "id" in by_key and not any(service["id"].startswith(v) for v in by_key["id"]):
            return False
        if "name" in by_key and not any(spec["name"].startswith(v) for v in by_key["name"]):
            return False
        if "mode" in by_key and spec["mode"] not in by_key["mode"]:
            return False
        return "label" not in by_key or _labels_match(spec["labels"], by_key["label"])
    return keep


def task_counts(service: Service, tasks: Iterable[Task]) -> tuple[int, int, int]:
    """(running, desired, completed) as swarmkit's ListServiceStatuses counts them: running
    and completed by observed state, desired by desired state running, or the replica count
    of a replicated service."""
    running = desired = completed = 0
    for task in tasks:
        if task["desired_state"] == taskstate.RUNNING:
            desired += 1
        if task["status"]["state"] == taskstate.RUNNING:
            running += 1
        elif task["status"]["state"] == taskstate.COMPLETE:
            completed += 1
    if service["spec"]["mode"] == "replicated":
        desired = service["spec"]["replicas"]
    return running, desired, completed


def list_services(manager: Manager, filters: Sequence[str]) -> list[spb.Service]:
    keep = service_filter(filters)

    def read(state: State) -> list[spb.Service]:
        tasks = state["tasks"]
        out = []
        for service in sorted(state["services"].values(), key=lambda s: s["id"]):
            if keep(service):
                own = (tasks[i] for i in tasks.lookup("service", service["id"]))
                out.append(servicepb.service(service, task_counts(service, own)))
        return out
    return manager.read(read)


def create_service(manager: Manager, spec_msg: spb.ServiceSpec) -> spb.Service:
    spec = validate.service_spec(servicepb.spec_dict(spec_msg))
    result = manager.propose("create_service", id=ids.new_id(), spec=spec, now=now_rfc3339())
    service_id = str(result["service_id"])
    return manager.read(lambda s: servicepb.service(s["services"][service_id]))


def update_service(manager: Manager, req: spb.UpdateServiceRequest) -> spb.Service:
    """The whole new spec, refused when the service changed since ``req.version`` (swarmkit's
    ``update out of sequence``); with ``rollback`` the previous spec comes back instead."""
    service_id = manager.read(lambda s: resolve_service(s, req.ref)["id"])
    expect = {"services": {service_id: req.version}}
    if req.rollback:
        manager.propose("update_service", id=service_id, rollback=True, expect=expect, now=now_rfc3339())
    else:
        spec = validate.service_spec(servicepb.spec_dict(req.spec))
        manager.propose("update_service", id=service_id, spec=spec, expect=expect, now=now_rfc3339())
    return manager.read(lambda s: servicepb.service(resolve_service(s, service_id)))
