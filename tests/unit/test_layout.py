"""The layout keeps its layers (DESIGN §8): ``ca`` and ``store`` build on nothing of the manager
or the node, no two top-level parts of swarmd import each other, and the Control API serves
every call of the wire contract.

The import checks read the source: module-level imports only (what runs when a module is
imported), so imports inside functions and under ``if TYPE_CHECKING:`` do not count.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import swarmctl
import swarmd
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]

# What the foundations may not reach, even through other modules.
FOUNDATIONS = ("swarmd.ca", "swarmd.store")
ABOVE_THEM = ("swarmd.manager", "swarmd.node")


def modules() -> list[str]:
    names = []
    for package in (swarmd, swarmctl):
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(names)


def source_of(module: str) -> Path:
    base = ROOT / module.replace(".", "/")
    return base / "__init__.py" if (base / "__init__.py").is_file() else base.with_suffix(".py")


def is_module(name: str) -> bool:
    base = ROOT / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run on import: not function bodies, not ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If):
            if not _type_checking(node.test):
                yield from _statements(node.body)
            yield from _statements(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _statements(part)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _statements(node.body)
        else:
            yield node


def imports_of(module: str) -> set[str]:
    """The swarmd/swarmctl modules ``module`` imports when it is imported (parent packages too)."""
    path = source_of(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    named: set[str] = set()
    for node in _statements(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}"))
    found: set[str] = set()
    for name in named:
        parts = name.split(".")
        if parts[0] in ("swarmd", "swarmctl"):
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in found if m != module and is_module(m)}


def graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in modules()}


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def unit_of(module: str) -> str | None:
    """The top-level part of swarmd a module belongs to: ``swarmd.manager``, ``swarmd.server``...
    (None for the root package, the generated stubs and swarmctl)."""
    parts = module.split(".")
    if parts[0] != "swarmd" or len(parts) < 2 or parts[1] == "api":
        return None
    return ".".join(parts[:2])


def path_to(imports: dict[str, set[str]], start: str, goal: tuple[str, ...]) -> list[str] | None:
    """An import chain from ``start`` to a module under one of ``goal`` (breadth first)."""
    came_from: dict[str, str | None] = {start: None}
    queue = [start]
    for current in queue:
        if any(under(current, g) for g in goal):
            chain = [current]
            while (previous := came_from[chain[-1]]) is not None:
                chain.append(previous)
            return chain[::-1]
        for nxt in sorted(imports.get(current, ())):
            if nxt not in came_from:
                came_from[nxt] = current
                queue.append(nxt)
    return None


def test_every_module_imports() -> None:
    for name in modules():
        importlib.import_module(name)


def test_ca_and_store_reach_nothing_of_the_manager_or_the_node() -> None:
    imports = graph()
    leaks = []
    for module in sorted(imports):
        if any(under(module, f) for f in FOUNDATIONS):
            chain = path_to(imports, module, ABOVE_THEM)
            if chain is not None:
                leaks.append(" -> ".join(chain))
    assert not leaks, "ca/ and store/ must not import the manager or the node:\n" + "\n".join(leaks)


def unit_graph(imports: dict[str, set[str]]) -> dict[str, dict[str, tuple[str, str]]]:
    """Which top-level part imports which, with one module-to-module import that shows it."""
    units: dict[str, dict[str, tuple[str, str]]] = {}
    for module, targets in imports.items():
        source = unit_of(module)
        if source is None:
            continue
        edges = units.setdefault(source, {})
        for target in sorted(targets, key=lambda t: (-t.count("."), t)):  # the most precise first
            dest = unit_of(target)
            if dest is not None and dest != source:
                edges.setdefault(dest, (module, target))
    return units


def cycles(units: dict[str, dict[str, tuple[str, str]]]) -> list[list[str]]:
    """The strongly connected groups of more than one part (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(unit: str) -> None:
        index[unit] = low[unit] = len(index)
        stack.append(unit)
        for nxt in units.get(unit, {}):
            if nxt not in index:
                visit(nxt)
                low[unit] = min(low[unit], low[nxt])
            elif nxt in stack:
                low[unit] = min(low[unit], index[nxt])
        if low[unit] == index[unit]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == unit:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for unit in sorted(units):
        if unit not in index:
            visit(unit)
    return found


def test_no_two_parts_of_swarmd_import_each_other() -> None:
    units = unit_graph(graph())
    assert {"swarmd.ca", "swarmd.store", "swarmd.manager", "swarmd.node", "swarmd.agent"} <= set(units)
    report = []
    for group in cycles(units):
        report.append(" <-> ".join(group))
        for source in group:
            for dest, (module, target) in sorted(units[source].items()):
                if dest in group:
                    report.append(f"  {module} imports {target}")
    assert not report, "import cycles between the parts of swarmd:\n" + "\n".join(report)


def test_the_cycle_check_sees_a_cycle() -> None:
    units = {"swarmd.a": {"swarmd.b": ("swarmd.a.x", "swarmd.b")},
             "swarmd.b": {"swarmd.c": ("swarmd.b", "swarmd.c.y")},
             "swarmd.c": {"swarmd.a": ("swarmd.c.y", "swarmd.a")},
             "swarmd.d": {"swarmd.a": ("swarmd.d", "swarmd.a")}}
    assert cycles(units) == [["swarmd.a", "swarmd.b", "swarmd.c"]]


def test_the_scan_skips_type_checking_and_function_imports() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nimport swarmd.errors\n"
                     "if TYPE_CHECKING:\n    import swarmd.node.runtime\n"
                     "def f():\n    import swarmd.manager\n"
                     "try:\n    import swarmd.store\nexcept ImportError:\n    pass\n")
    named = {alias.name for node in _statements(tree.body) if isinstance(node, ast.Import) for alias in node.names}
    assert named == {"swarmd.errors", "swarmd.store"}


def test_every_control_call_is_served_by_a_kind() -> None:
    from swarmd.manager.controlapi.servicer import ControlServicer

    methods = pb.DESCRIPTOR.services_by_name["Control"].methods_by_name
    unserved = [name for name in methods if getattr(ControlServicer, name) is getattr(pb_grpc.ControlServicer, name)]
    assert not unserved, "Control calls no kind module serves (they would answer UNIMPLEMENTED): " + ", ".join(unserved)
