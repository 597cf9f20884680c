"""The README's CLI walkthrough, run as written by bash against the real pair.

Only the emulator's port and the interpreter path are substituted; the service addresses and
certificates come from the CLI's environment variables and its `certs/` default (the test
PKI, linked as `certs/` in a scratch working folder).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
README = PROJECT_ROOT / "README.md"
TEXT = " ".join(f"word{i}" for i in range(20))


def readme_block(block: str) -> str:
    match = re.search(
        rf"<!-- {block}:begin -->\s*```sh\n(.*?)```\s*<!-- {block}:end -->",
        README.read_text(),
        re.S,
    )
    assert match, f"README has no {block} block"
    return match.group(1)


async def test_readme_cli_walkthrough(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    tmp_path: Path,
) -> None:
    script = (
        readme_block("clients-cli")
        .replace(".venv/bin/python", sys.executable)
        .replace("127.0.0.1:8089", f"127.0.0.1:{emulator.port}")
    )
    (tmp_path / "certs").symlink_to(pki)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AGENTS_") and name != "PYTHONPATH"
    }
    env |= {
        "PYTHONPATH": str(PROJECT_ROOT),
        "AGENTS_VAULT_ADDRESS": f"localhost:{pair_vault.port}",
        "AGENTS_EXECUTION_ADDRESS": f"localhost:{execution.port}",
    }
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    raw_out, raw_err = await asyncio.wait_for(process.communicate(), timeout=60)
    out, err = raw_out.decode(), raw_err.decode()
    assert process.returncode == 0, err

    assert re.search(r"^(created|replaced) workspaces/demo/apiKeys/anthropic: sk-\.\.\.", out, re.M)
    assert re.search(r"^anthropic\s+sk-\.\.\.\S+\s+fp_\S+\s+http://127\.0\.0\.1:", out, re.M)
    assert "workspaces/demo/apiKeys/anthropic: valid (" in out
    assert f"{TEXT}\n" in out  # streamed, then the stored output text of `executions get`
    assert re.search(r"^SUCCEEDED: \d+ in / 20 out tokens, cost \$0\.\d+, ", err, re.M)
    assert re.search(r"^workspaces/demo/executions/\S+\s+support-bot\s+anthropic\s", out, re.M)
    assert re.search(r"^executions\s+\d+ \(running 0, succeeded \d+, failed 0", out, re.M)
    assert re.search(r"^\S+ \S+\s+SET\s+ALLOWED\s+spiffe://agents.internal/app\s+demo", out, re.M)
    assert "error:" not in err


async def test_readme_cli_agents(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    tmp_path: Path,
) -> None:
    script = (
        readme_block("clients-agents")
        .replace(".venv/bin/python", sys.executable)
        .replace("127.0.0.1:8089", f"127.0.0.1:{emulator.port}")
    )
    (tmp_path / "certs").symlink_to(pki)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AGENTS_") and name != "PYTHONPATH"
    }
    env |= {
        "PYTHONPATH": str(PROJECT_ROOT),
        "AGENTS_VAULT_ADDRESS": f"localhost:{pair_vault.port}",
        "AGENTS_EXECUTION_ADDRESS": f"localhost:{execution.port}",
    }
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    raw_out, raw_err = await asyncio.wait_for(process.communicate(), timeout=60)
    out, err = raw_out.decode(), raw_err.decode()
    assert process.returncode == 0, err

    assert re.search(r"^name\s+workspaces/demo/agents/faq-bot$", out, re.M)
    assert re.search(r"^faq-bot\s+openai\s+gpt-4o-mini\s+1 properties\s+2 properties\s", out, re.M)
    assert "openai gpt-4o-mini (max tokens 300)" in out
    assert "openai gpt-4o-mini (max tokens 500)" in out
    assert out.rstrip().endswith("deleted workspaces/demo/agents/faq-bot")
    answers = re.findall(r'^(\{"answer":.*\})$', out, re.M)  # the streamed JSON, one per run
    assert len(answers) == 2 and all(
        set(json.loads(a)) == {"answer", "confidence"} for a in answers
    )
    summaries = re.findall(r"^SUCCEEDED: .*, output valid \(workspaces/demo/executions/", err, re.M)
    assert len(summaries) == 2
    assert "refused: the input breaks the input schema" in out
    assert re.search(r"^error: INVALID_ARGUMENT.*input/question", err, re.M)
