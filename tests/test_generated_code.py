"""clients/gen is committed: it must be exactly what `make proto` makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COMMITTED = PROJECT_ROOT / "clients" / "gen"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    fresh = tmp_path / "gen"
    # In a process of its own: protoc forks its plugins, and a fork of this process (whose
    # gRPC threads other tests started) can crash the child before it runs the plugin.
    subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "tools" / "gen_protos.py"), str(fresh)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    expected, committed = _tree(fresh), _tree(COMMITTED)
    assert sorted(committed) == sorted(expected), "files differ: run `make proto`"
    stale = [name for name in expected if expected[name] != committed[name]]
    assert not stale, f"clients/gen is stale, run `make proto`: {stale}"
