"""swarmctl is a thin client: it imports the wire contract (``swarmd.api``) and a few leaf
modules of ``swarmd`` that use only the standard library, never the daemon; and it starts
without grpc, protobuf or cryptography, which only a command that calls the daemon needs.

Each check runs where nothing else was imported before: a fresh interpreter, or the source.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import swarmctl

ROOT = Path(__file__).resolve().parents[2]
CLI_DIR = Path(swarmctl.__file__).parent

# The rule. swarmctl may import, from swarmd, only the wire contract and these leaves; a leaf
# imports only the standard library and other leaves, so it can never drag the daemon in.
WIRE = "swarmd.api"
LEAVES = {"swarmd", "swarmd.gostr", "swarmd.keypem", "swarmd.netaddr", "swarmd.paths", "swarmd.timeutil"}
THIRD_PARTY = {"click", "grpc", "google", "cryptography"}
# What the daemon is made of: named so a failure says what leaked, not only that something did.
FORBIDDEN = ("swarmd.node", "swarmd.manager", "swarmd.store", "swarmd.agent", "swarmd.daemon",
             "swarmd.server", "swarmd.remotes", "swarmd.ca", "pysyncobj", "pyroute2")
HEAVY = ("grpc", "google.protobuf", "cryptography")

PROBE = """
import importlib, json, pkgutil, sys
import swarmctl, swarmctl.main
for info in pkgutil.walk_packages(swarmctl.__path__, "swarmctl."):
    importlib.import_module(info.name)
from swarmctl.wire import pb
pb.InfoRequest  # runs the lazily loaded messages
import swarmd.api.swarm.v1.swarm_pb2_grpc
json.dump(sorted(sys.modules), open(sys.argv[1], "w"))
"""

STARTUP = """
import contextlib, io, json, sys
from swarmctl.main import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(sys.argv[2:])
    except SystemExit:
        pass
json.dump(sorted(sys.modules), open(sys.argv[1], "w"))
"""


def modules_after(script: str, tmp_path: Path, *argv: str) -> list[str]:
    out = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", script, str(out), *argv], cwd=ROOT, check=True, timeout=60)
    loaded: list[str] = json.loads(out.read_text())
    return loaded


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_cli_and_the_wire_contract_load_nothing_of_the_daemon(tmp_path: Path) -> None:
    loaded = modules_after(PROBE, tmp_path)
    assert "swarmctl.main" in loaded and "swarmd.api.swarm.v1.swarm_pb2" in loaded
    forbidden = [m for m in loaded if any(under(m, f) for f in FORBIDDEN)]
    assert not forbidden, ("importing swarmctl loaded daemon modules: " + ", ".join(forbidden)
                           + f"\n(the CLI may import only {WIRE} and the leaves {', '.join(sorted(LEAVES))})")
    other = [m for m in loaded if under(m, "swarmd") and not under(m, WIRE) and m not in LEAVES]
    assert not other, ("importing swarmctl loaded swarmd modules outside the rule: " + ", ".join(other)
                       + f"\n(allowed: {WIRE}.* and {', '.join(sorted(LEAVES))})")


def is_module(name: str) -> bool:
    base = ROOT / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names, at any depth (lazy imports inside functions and
    ``TYPE_CHECKING`` blocks included); ``from swarmd import gostr`` names ``swarmd.gostr``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else node.module))
    return found


def test_every_import_in_the_cli_follows_the_rule() -> None:
    wrong = []
    for path in sorted(CLI_DIR.rglob("*.py")):
        for line, name in imports_of(path):
            top = name.split(".")[0]
            if top == "swarmd":
                ok = under(name, WIRE) or name in LEAVES
            else:
                ok = top in sys.stdlib_module_names or top == "swarmctl" or top in THIRD_PARTY
            if not ok:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not wrong, "swarmctl imports what the rule forbids:\n" + "\n".join(wrong)


def test_the_leaves_use_only_the_standard_library_and_each_other() -> None:
    wrong = []
    for leaf in sorted(LEAVES):
        path = ROOT / (leaf.replace(".", "/") + ("/__init__.py" if leaf == "swarmd" else ".py"))
        for line, name in imports_of(path):
            top = name.split(".")[0]
            if not (top in sys.stdlib_module_names or name in LEAVES):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not wrong, "a leaf module shared with swarmctl imports beyond the standard library:\n" + "\n".join(wrong)


def heavy_in(loaded: list[str]) -> list[str]:
    return [h for h in HEAVY if h in loaded]


def test_commands_that_need_no_daemon_start_without_grpc_protobuf_or_cryptography(tmp_path: Path) -> None:
    for argv in (["--help"], ["--version"], ["node", "ls", "--help"], ["init", "--cert-expiry", "soon"],
                 ["join-token", "nobody"]):
        heavy = heavy_in(modules_after(STARTUP, tmp_path, *argv))
        assert not heavy, f"'swarmctl {' '.join(argv)}' imported {', '.join(heavy)} without calling the daemon"
    # The probe sees them when a command does call the daemon (here: none is listening).
    absent = f"unix://{tmp_path}/absent.sock"
    assert heavy_in(modules_after(STARTUP, tmp_path, "-H", absent, "version")) == ["grpc", "google.protobuf"]
