"""The generated stubs in swarmd/api must be exactly what proto/ generates today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("genproto", ROOT / "scripts" / "genproto.py")
    assert spec and spec.loader
    genproto = importlib.util.module_from_spec(spec)
    sys.modules["genproto"] = genproto
    spec.loader.exec_module(genproto)
    fresh = genproto.generate(tmp_path)
    assert fresh, "protoc generated nothing"
    committed = ROOT / "swarmd" / "api"
    for path in fresh:
        rel = path.relative_to(tmp_path)
        assert (committed / rel).read_bytes() == path.read_bytes(), (
            f"{rel} is stale: run `python scripts/genproto.py` and commit the result")
