"""What every kind's calls share: the node runtime that serves them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from swarmd.node.runtime import NodeRuntime

Ctx: TypeAlias = Any  # grpc ships no type information


class ControlAPI:
    """The base of every kind's mixin (``servicer.ControlServicer`` combines them)."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime
