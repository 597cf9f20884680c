"""The README's execution grpcurl block, run as written by bash with the real grpcurl.

Only the ports (the vault's, the execution service's and the emulator's defaults) are
substituted; the commands run in order, as a user would paste them, from a project folder with
the PATH the block sets.
"""

from __future__ import annotations

import json
from pathlib import Path

from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from tests.readme_shell import at_test_ports, project_folder, readme_block, run_block


def json_documents(output: str) -> list[dict]:
    """grpcurl prints one pretty JSON document per response."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(output):
        if output[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(output, i)
        docs.append(doc)
    return docs


async def test_execution_readme_commands(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    tmp_path: Path,
) -> None:
    script = at_test_ports(
        readme_block("grpcurl-execution"),
        vault=pair_vault.port,
        execution=execution.port,
        emulator=emulator.port,
    )
    folder = project_folder(tmp_path, pki)
    code, out, err = await run_block(script, folder)
    assert code == 0, err
    docs = json_documents(out)

    stored, verdict, *stream = docs[:5]
    assert stored["api_key"]["key_hint"] == "sk-...6789"
    assert verdict["valid"] is True
    assert "started" in stream[0] and "delta" in stream[1]
    executes = [d for d in docs if set(d) & {"started", "delta", "completed"}]
    completed = executes[-1]["completed"]
    assert completed["state"] == "EXECUTION_STATE_SUCCEEDED"
    assert completed["request_id"] == "readme-1"
    listed, got, stats = docs[len(executes) + 2], docs[-2], docs[-1]
    assert listed["executions"][0]["name"] == completed["name"]
    assert got["execution"]["name"] == completed["name"]
    assert int(stats["stats"]["total_count"]) >= 1
    assert not any("replayed" in d for d in executes)

    # Pasted again: the Execute (request_id readme-1) is answered from the record.
    code, out, err = await run_block(script, folder)
    assert code == 0, err
    again = [d for d in json_documents(out) if set(d) & {"started", "delta", "completed"}]
    assert [sorted(d) for d in again] == [
        ["replayed", "started"],
        ["delta", "replayed"],
        ["completed", "replayed"],
    ]
    assert all(d["replayed"] is True for d in again)
    assert again[-1]["completed"] == completed
