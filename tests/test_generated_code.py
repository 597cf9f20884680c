"""clients/gen is committed: it must be exactly what `make proto` makes from protos/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COMMITTED = PROJECT_ROOT / "clients" / "gen"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_protos", PROJECT_ROOT / "tools" / "gen_protos.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    _generator().generate(fresh)
    expected, committed = _tree(fresh), _tree(COMMITTED)
    assert sorted(committed) == sorted(expected), "files differ: run `make proto`"
    stale = [name for name in expected if expected[name] != committed[name]]
    assert not stale, f"clients/gen is stale, run `make proto`: {stale}"
