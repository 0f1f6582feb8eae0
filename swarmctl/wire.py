"""The wire contract's messages (``swarmd.api``), executed when a command first builds a request.

protobuf and the generated module cost more start-up time than the rest of the CLI's imports
together, and ``--help``, ``--version`` and every flag error need neither: ``pb`` is a module
that the standard library's ``LazyLoader`` runs on its first attribute access. Type checkers
see the generated module itself.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["pb", "spb"]


def lazy_module(name: str) -> ModuleType:
    """``name``, imported now but executed on first use (the recipe of importlib's documentation)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)
    return module


class _ImportedOnFirstUse(ModuleType):
    """A stand-in that imports ``name`` (normally) at its first attribute access. Not a lazy
    module in ``sys.modules``: ``swarm_pb2`` imports ``services_pb2`` when it runs, and a
    lazy module there would hand it a file whose descriptors are not loaded yet."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__target = name

    def __getattr__(self, attr: str) -> object:
        return getattr(importlib.import_module(self.__target), attr)


if TYPE_CHECKING:
    from swarmd.api.swarm.v1 import services_pb2 as spb
    from swarmd.api.swarm.v1 import swarm_pb2 as pb
else:
    pb = lazy_module("swarmd.api.swarm.v1.swarm_pb2")
    spb = _ImportedOnFirstUse("swarmd.api.swarm.v1.services_pb2")  # services and tasks
