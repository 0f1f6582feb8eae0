"""The daemon's one error type and Docker's user-facing texts (swarm-behaviour.md §6).

A ``SwarmError`` carries a gRPC status code and the exact message the CLI prints after
``Error response from daemon: ``. Servicers raise it; one decorator turns it into a status.
"""

from __future__ import annotations

import grpc

NOT_PART_OF_SWARM = "This node is not part of a swarm"
ALREADY_IN_SWARM = ('This node is already part of a swarm. Use "swarmctl leave" to leave this swarm '
                    "and join another one.")
NOT_MANAGER_INACTIVE = ('This node is not a swarm manager. Use "swarmctl init" or "swarmctl join" to '
                        "connect this node to swarm and try again.")
NOT_MANAGER_WORKER = ("This node is not a swarm manager. Worker nodes can't be used to view or modify "
                      "cluster state. Please run this command on a manager node or promote the current "
                      "node to a manager.")
NO_LEADER = ("rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too "
             "few managers are online. Make sure more than half of the managers are online.")
LEAVE_LAST_MANAGER = ("You are attempting to leave the swarm on a node that is participating as a manager. "
                      "Removing the last manager erases all current state of the swarm. Use `--force` to "
                      "ignore this message.")
MIN_CERT_EXPIRY = "minimum certificate expiry time is: 1h0m0s"
NEGATIVE_HEARTBEAT = "heartbeat time period cannot be a negative duration"
SWARM_LOCKED = ('Swarm is encrypted and needs to be unlocked before it can be used. Please use '
                '"swarmctl unlock" to unlock it.')
CERTS_EXPIRED = "Swarm certificates have expired. To replace them, leave the swarm and join again."
INVALID_UNLOCK_KEY = "swarm could not be unlocked: invalid key provided"
NOT_LOCKED = "swarm is not locked"
INVALID_KEY_STRING = "invalid key string"


NOT_LEADER = "this manager is not the leader"


class SwarmError(Exception):
    """``leader_addr``: where the leader is, for a refusal by a manager that is not it (sent as
    trailing metadata, so callers never parse it out of the text)."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION,
                 leader_addr: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.leader_addr = leader_addr


def not_leader(leader_addr: str | None) -> SwarmError:
    """The refusal of a call only the leader serves; without a known leader, Docker's text."""
    if not leader_addr:
        return SwarmError(NO_LEADER, grpc.StatusCode.UNKNOWN)
    return SwarmError(NOT_LEADER, grpc.StatusCode.FAILED_PRECONDITION, leader_addr=leader_addr)


def invalid(message: str) -> SwarmError:
    return SwarmError(message, grpc.StatusCode.INVALID_ARGUMENT)


def not_found(message: str) -> SwarmError:
    return SwarmError(message, grpc.StatusCode.NOT_FOUND)


# Names Go's gRPC prints in "rpc error: code = <Name> desc = ..." (Docker passes swarmkit errors on).
GO_CODE_NAMES = {
    "INVALID_ARGUMENT": "InvalidArgument",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "PERMISSION_DENIED": "PermissionDenied",
    "UNAVAILABLE": "Unavailable",
    "INTERNAL": "Internal",
    "UNKNOWN": "Unknown",
    "UNIMPLEMENTED": "Unimplemented",
}


def rpc_text(code: str, desc: str) -> str:
    """Docker's rendering of a swarmkit gRPC error, e.g. for node rm refusals."""
    return f"rpc error: code = {GO_CODE_NAMES.get(code, code)} desc = {desc}"


class StateFileError(SwarmError):
    """A file of the state dir that cannot be read back (damaged, truncated, tampered with): the
    message names the file and what is wrong with it, in one line, so a daemon refuses to start
    with it instead of serving without what it held."""
