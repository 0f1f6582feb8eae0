"""A service spec checked before it is proposed, in Docker's order and words.

The control API calls ``service_spec`` on what the user sent; it gets the complete spec to
propose (Docker's defaults filled in) or a ``SwarmError`` whose message is what the CLI prints
after ``Error response from daemon: ``. The same checks run again in ``apply`` (``store.specs``),
which has no constraint parser: here a constraint is parsed where swarmkit parses it, and its
error is reported as Docker reports an error swarmkit returns without a gRPC code
(``rpc error: code = Unknown desc = constraint expected one operator from ==, !=``).
"""

from __future__ import annotations

from typing import Any

import grpc

from swarmd import errors
from swarmd.errors import SwarmError
from swarmd.manager.scheduler import constraints
from swarmd.store import specs
from swarmd.store.objects import ServiceSpec
from swarmd.store.refusal import OpError

_CODES = {"INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN": grpc.StatusCode.UNKNOWN}


def parse_constraints(exprs: list[str]) -> None:
    try:
        constraints.parse(exprs)
    except constraints.ConstraintError as e:
        raise OpError("UNKNOWN", errors.rpc_text("UNKNOWN", str(e))) from None


def service_spec(raw: Any) -> ServiceSpec:
    """The spec to propose, or Docker's refusal."""
    try:
        return specs.normalize(raw, check_constraints=parse_constraints)
    except OpError as e:
        raise SwarmError(e.message, _CODES.get(e.code, grpc.StatusCode.INVALID_ARGUMENT)) from None
