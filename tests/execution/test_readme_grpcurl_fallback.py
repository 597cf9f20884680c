"""The README's fallback grpcurl block, run as written by bash with the real grpcurl and curl
(only the services' and the emulator's ports are substituted): the first route is overloaded
three times, and the execution is answered by the second."""

from __future__ import annotations

from pathlib import Path

from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from tests.execution.test_readme_grpcurl_execution import json_documents
from tests.readme_shell import at_test_ports, project_folder, readme_block, run_block

README = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()


async def test_fallback_readme_commands(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    tmp_path: Path,
) -> None:
    script = at_test_ports(
        readme_block("grpcurl-fallback"),
        vault=pair_vault.port,
        execution=execution.port,
        emulator=emulator.port,
    )
    code, out, err = await run_block(script, project_folder(tmp_path, pki))
    assert code == 0, err
    docs = json_documents(out)
    assert docs[0]["queued"] == 3
    stream = docs[1:]
    assert stream[0]["started"]["provider"] == "PROVIDER_ANTHROPIC"
    done = stream[-1]["completed"]
    assert done["state"] == "EXECUTION_STATE_SUCCEEDED"
    assert (done["provider"], done["model"], done["route_index"]) == (
        "PROVIDER_OPENAI",
        "gpt-4o-mini",
        1,
    )
    assert done["attempts"] == 4
    first, second = done["route_attempts"]
    assert (first["http_status"], first["reason"], first["cost_nanos"]) == (
        529,
        "PROVIDER_OVERLOADED",
        "0",
    )
    assert second["http_status"] == 200 and "reason" not in second
    assert done["cost_nanos"] == second["cost_nanos"]
    assert f'"cost_nanos": "{second["cost_nanos"]}"' in README  # the abridged output is true
