"""The README's CLI walkthrough, run as written by bash against the real pair.

Only the emulator's port and the interpreter path are substituted; the service addresses and
certificates come from the CLI's environment variables and its `certs/` default (the test
PKI, linked as `certs/` in a scratch working folder).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from tests.readme_shell import at_test_ports, readme_block, run_block

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEXT = " ".join(f"word{i}" for i in range(20))


async def run_cli_block(
    block: str,
    vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    folder: Path,
) -> tuple[str, str]:
    """Run a README CLI block from `folder` (the test PKI linked as its `certs/`), with the
    services' addresses in the CLI's environment variables; its output and error text."""
    script = at_test_ports(
        readme_block(block).replace(".venv/bin/python", sys.executable),
        vault=vault.port,
        execution=execution.port,
        emulator=emulator.port,
    )
    (folder / "certs").symlink_to(pki)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AGENTS_") and name != "PYTHONPATH"
    }
    env |= {
        "PYTHONPATH": str(PROJECT_ROOT),
        "AGENTS_VAULT_ADDRESS": f"localhost:{vault.port}",
        "AGENTS_EXECUTION_ADDRESS": f"localhost:{execution.port}",
    }
    code, out, err = await run_block(script, folder, env)
    assert code == 0, err
    return out, err


async def test_readme_cli_walkthrough(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    tmp_path: Path,
) -> None:
    out, err = await run_cli_block("clients-cli", pair_vault, execution, emulator, pki, tmp_path)

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
    out, err = await run_cli_block("clients-agents", pair_vault, execution, emulator, pki, tmp_path)

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


async def test_readme_cli_fallback(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    tmp_path: Path,
) -> None:
    out, err = await run_cli_block(
        "clients-fallback", pair_vault, execution, emulator, pki, tmp_path
    )
    assert "route 1" in out and "route 2" in out and "overloaded, rate_limited" in out
    assert re.search(
        r"^SUCCEEDED: .*, served by route 2 \(anthropic PROVIDER_OVERLOADED\) \(", err, re.M
    )
    assert TEXT in out
