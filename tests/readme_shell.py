"""Run a README command block the way a reader would: bash, from a project folder, with the
PATH the shell had before the block (no folder that holds grpcurl), so the block's own
`export PATH=...` line is what finds the tools.

The scratch project folder links `certs/` to the test PKI and `.venv/` to the test
interpreter's environment, so the commands run unchanged apart from the substitutions the
caller makes (ports)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def readme_block(block: str, language: str = "sh") -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(
        rf"<!-- {block}:begin -->\s*```{language}\n(.*?)```\s*<!-- {block}:end -->", text, re.S
    )
    assert match, f"README has no {block} block"
    return match.group(1)


def at_test_ports(text: str, *, vault: int, execution: int, emulator: int) -> str:
    """README text with the documented ports replaced by the test servers' ports."""
    return (
        text.replace("localhost:50051", f"localhost:{vault}")
        .replace("localhost:50052", f"localhost:{execution}")
        .replace("127.0.0.1:8089", f"127.0.0.1:{emulator}")
    )


def path_without_grpcurl() -> str:
    """The caller's PATH minus every folder holding grpcurl (the venv's bin among them)."""
    folders = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(f for f in folders if f and not (Path(f) / "grpcurl").exists())


def project_folder(root: Path, pki: Path) -> Path:
    folder = root / "project"
    folder.mkdir()
    (folder / "certs").symlink_to(pki)
    (folder / ".venv").symlink_to(sys.prefix)
    return folder


async def run_block(
    script: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `script` in bash from `cwd`, with `env` (default: this process's) minus grpcurl."""
    env = dict(os.environ if env is None else env, PATH=path_without_grpcurl())
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, out.decode(), err.decode()
