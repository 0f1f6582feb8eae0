"""Regenerate swarmd/api from proto/ (the one command that keeps the stubs in sync).

usage: python scripts/genproto.py [OUTPUT_DIR]   (default: swarmd/api)

protoc writes imports as ``from swarm.v1 import swarm_pb2``; they are rewritten to the package
path so the stubs import as ``swarmd.api.swarm.v1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out: Path) -> list[Path]:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    args = ["protoc", f"-I{PROTO_DIR}", f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}", f"--python_out={out}",
            f"--grpc_python_out={out}", f"--mypy_out={out}", f"--mypy_grpc_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted(p for p in out.rglob("*") if p.suffix in (".py", ".pyi") and p.name != "__init__.py")
    for path in generated:
        text = path.read_text()
        path.write_text(text.replace("from swarm.v1 import", "from swarmd.api.swarm.v1 import"))
    for pkg in {p.parent for p in generated} | {out / "swarm"}:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text("")
    return generated


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "swarmd" / "api"
    for p in generate(target):
        print(p.relative_to(target))
