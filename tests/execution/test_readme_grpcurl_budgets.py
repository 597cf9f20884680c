"""The README's budgets grpcurl block, run as written by bash with the real grpcurl (only the
services' and the emulator's ports are substituted): a budget created by admin, an execution
that fits, one refused with BUDGET_EXCEEDED, and the budget as GetBudget shows it."""

from __future__ import annotations

import uuid
from pathlib import Path

from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from tests.execution.test_readme_grpcurl_execution import json_documents
from tests.readme_shell import at_test_ports, project_folder, readme_block, run_block


async def test_budgets_readme_commands(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    tmp_path: Path,
) -> None:
    ws = f"budget-demo-{uuid.uuid4().hex[:8]}"  # the session's services are shared
    script = at_test_ports(
        readme_block("grpcurl-budgets"),
        vault=pair_vault.port,
        execution=execution.port,
        emulator=emulator.port,
    ).replace("workspaces/budget-demo", f"workspaces/{ws}")
    code, out, err = await run_block(script, project_folder(tmp_path, pki))
    assert code == 0, err
    assert "Code: ResourceExhausted" in out
    assert "does not have room for this execution's worst-case cost" in out
    docs = json_documents(out[: out.index("ERROR:")] + out[out.index("{", out.index("Code:")) :])
    stored, created = docs[:2]
    got = docs[-1]
    assert stored["api_key"]["name"] == f"workspaces/{ws}/apiKeys/openai"
    assert created["budget"]["limit_nanos"] == "70000"
    assert created["budget"]["current_period"]["remaining_nanos"] == "70000"
    completed = [d["completed"] for d in docs if "completed" in d]
    assert len(completed) == 1
    period = got["budget"]["current_period"]
    assert period["spent_nanos"] == completed[0]["cost_nanos"]
    assert "reserved_nanos" not in period  # zero: omitted by grpcurl
