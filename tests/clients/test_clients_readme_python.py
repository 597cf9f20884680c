"""The README's Python client example, run as written against the real pair: only the ports
change; `certs/` is the test PKI, linked into a scratch working folder."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from tests.readme_shell import at_test_ports, readme_block

PROJECT_ROOT = Path(__file__).resolve().parents[2]


async def test_readme_python_example(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    tmp_path: Path,
) -> None:
    code = at_test_ports(
        readme_block("clients-python", "python"),
        vault=pair_vault.port,
        execution=execution.port,
        emulator=emulator.port,
    )
    (tmp_path / "example.py").write_text(code)
    (tmp_path / "certs").symlink_to(pki)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "example.py",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    raw_out, raw_err = await asyncio.wait_for(process.communicate(), timeout=60)
    out, err = raw_out.decode(), raw_err.decode()
    assert process.returncode == 0, err

    assert "stored workspaces/demo/apiKeys/anthropic sk-...6789\n" in out
    assert "word0 word1" in out and "\n20 tokens out, 1 attempt(s)\n" in out
    assert re.search(
        r"^failed: FAILED_PRECONDITION API_KEY_NOT_CONFIGURED, recorded as "
        r"workspaces/demo-without-keys/executions/\S+$",
        out,
        re.M,
    ), out
