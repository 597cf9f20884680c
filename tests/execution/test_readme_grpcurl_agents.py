"""The README's agents grpcurl block, run as written by bash with the real grpcurl (only the
services' and the emulator's ports are substituted), from a project folder with the PATH it
sets."""

from __future__ import annotations

import json
from pathlib import Path

from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from tests.execution.test_readme_grpcurl_execution import json_documents
from tests.readme_shell import at_test_ports, project_folder, readme_block, run_block


async def test_agents_readme_commands(
    pair_vault: RunningKeyVault,
    execution: RunningExecution,
    emulator: RunningEmulator,
    pki: Path,
    tmp_path: Path,
) -> None:
    script = at_test_ports(
        readme_block("grpcurl-agents"),
        vault=pair_vault.port,
        execution=execution.port,
        emulator=emulator.port,
    )
    code, out, err = await run_block(script, project_folder(tmp_path, pki))
    assert code == 0, err
    docs = json_documents(out)
    stored, created = docs[:2]
    got, listed, updated, deleted = docs[-4:]
    streams = docs[2:-4]
    ends = [i for i, d in enumerate(streams) if "completed" in d]
    assert len(ends) == 2, streams
    by_agent, ad_hoc = streams[: ends[0] + 1], streams[ends[0] + 1 :]

    assert stored["api_key"]["name"] == "workspaces/demo/apiKeys/openai"
    run = by_agent[-1]["completed"]
    assert by_agent[0]["started"]["agent"] == "workspaces/demo/agents/triage-bot"
    text = "".join(d["delta"]["text"] for d in by_agent[1:-1])
    assert run["state"] == "EXECUTION_STATE_SUCCEEDED" and run["output_valid"] is True
    assert run["output"] == json.loads(text) and run["output"]["category"] in (
        "billing",
        "bug",
        "other",
    )
    assert run["agent_etag"] == created["agent"]["etag"] and run["agent_id"] == "triage-bot"
    extracted = ad_hoc[-1]["completed"]
    assert extracted["output_valid"] is True
    assert set(extracted["output"]) == {"order_id", "quantity"}

    agent = created["agent"]
    assert agent["name"] == "workspaces/demo/agents/triage-bot"
    assert agent["routes"][0]["provider"] == "PROVIDER_OPENAI"
    assert agent["output_schema"]["additionalProperties"] is False
    assert agent["input_schema"]["properties"]["email"]["format"] == "email"
    assert got["agent"] == agent  # read by the admin identity
    assert agent["name"] in [a["name"] for a in listed["agents"]]
    assert updated["agent"]["description"] == "Sorts support tickets"
    assert updated["agent"]["etag"] != agent["etag"]
    assert updated["agent"]["instructions"] == agent["instructions"]
    assert deleted == {}
