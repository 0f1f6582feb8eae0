"""Who may call what, declared once next to the API and enforced by one interceptor (DESIGN §2).

Identity comes from the endpoint (the control socket is ``local``) or from the verified peer
certificate (OU = role, O = cluster ID), never from request fields. Anything not in the table
is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from swarmd.handlers import checked, rebuild

log = logging.getLogger(__name__)

LOCAL = "local"
MANAGER = "swarm-manager"
WORKER = "swarm-worker"
JOIN_WORKER = "join-worker"
JOIN_MANAGER = "join-manager"

_ADMIN = frozenset({LOCAL, MANAGER})
_NODES_AND_JOINERS = frozenset({MANAGER, WORKER, JOIN_WORKER, JOIN_MANAGER})

RULES: dict[str, frozenset[str]] = {
    "/swarm.v1.Control/Info": _ADMIN,
    "/swarm.v1.Control/Version": _ADMIN,
    "/swarm.v1.Control/Init": frozenset({LOCAL}),
    "/swarm.v1.Control/Leave": frozenset({LOCAL}),
    "/swarm.v1.Control/GetCluster": _ADMIN,
    "/swarm.v1.Control/GetJoinToken": _ADMIN,
    "/swarm.v1.Control/ListNodes": _ADMIN,
    "/swarm.v1.Control/GetNode": _ADMIN,
    "/swarm.v1.Control/UpdateNode": _ADMIN,
    "/swarm.v1.Control/ListNetworks": _ADMIN,
    "/swarm.v1.Control/GetNetwork": _ADMIN,
    "/swarm.v1.Control/CreateNetwork": _ADMIN,
    "/swarm.v1.Control/RemoveNetwork": _ADMIN,
    "/swarm.v1.Control/GetUnlockKey": _ADMIN,
    "/swarm.v1.Control/UpdateCluster": _ADMIN,
    "/swarm.v1.Control/Unlock": frozenset({LOCAL}),
    "/swarm.v1.Control/Join": frozenset({LOCAL}),
    "/swarm.v1.Control/RemoveNode": _ADMIN,
    "/swarm.v1.Control/CreateService": _ADMIN,
    "/swarm.v1.Control/GetService": _ADMIN,
    "/swarm.v1.Control/ListServices": _ADMIN,
    "/swarm.v1.Control/UpdateService": _ADMIN,
    "/swarm.v1.Control/RemoveService": _ADMIN,
    "/swarm.v1.Control/ListTasks": _ADMIN,
    "/swarm.v1.Control/GetTask": _ADMIN,
    "/swarm.v1.Control/ServiceLogs": _ADMIN,
    "/swarm.v1.CA/GetRootCACertificate": _NODES_AND_JOINERS,
    "/swarm.v1.CA/IssueNodeCertificate": _NODES_AND_JOINERS,
    "/swarm.v1.RaftMembership/Join": frozenset({MANAGER}),
    "/swarm.v1.RaftMembership/Leave": frozenset({MANAGER}),
    "/swarm.v1.Raft/Stream": frozenset({MANAGER}),
    "/swarm.v1.Dispatcher/Session": frozenset({WORKER, MANAGER}),
    "/swarm.v1.Dispatcher/Heartbeat": frozenset({WORKER, MANAGER}),
    "/swarm.v1.Dispatcher/UpdateTaskStatus": frozenset({WORKER, MANAGER}),
    "/swarm.v1.Dispatcher/ListenLogSubscriptions": frozenset({WORKER, MANAGER}),
    "/swarm.v1.Dispatcher/PublishLogs": frozenset({WORKER, MANAGER}),
}

Identify = Callable[[grpc.ServicerContext], "str | None"]
# Told of every call: (gRPC's peer text, whether the caller is a node or joiner of this cluster).
CallHook = Callable[[str, bool], None]


def local_identity(context: grpc.ServicerContext) -> str | None:
    return LOCAL


class AuthzInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, identify: Identify, rules: dict[str, frozenset[str]] = RULES,
                 on_call: CallHook | None = None) -> None:
        self._identify = identify
        self._rules = rules
        self._on_call = on_call

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        allowed = self._rules.get(details.method, frozenset())
        method = details.method
        on_call = self._on_call

        def check(request: Any, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
            role = self._identify(context)
            if on_call is not None:
                on_call(context.peer(), role is not None)
            if role not in allowed:
                log.warning("refused %s for %s", method, role or "an unidentified peer")
                return grpc.StatusCode.PERMISSION_DENIED, f"Permission denied: unauthorized peer role: {role or 'none'}"
            return None

        return rebuild(handler, lambda behavior, _, streams: checked(behavior, check, streams))
