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


if TYPE_CHECKING:
    from swarmd.api.swarm.v1 import services_pb2 as spb
    from swarmd.api.swarm.v1 import swarm_pb2 as pb
else:
    pb = lazy_module("swarmd.api.swarm.v1.swarm_pb2")
    spb = lazy_module("swarmd.api.swarm.v1.services_pb2")  # services and tasks
