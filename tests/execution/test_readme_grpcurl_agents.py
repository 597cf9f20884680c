"""The README's agents grpcurl block, run as written by bash with the real grpcurl (only the
execution service's port is substituted), from a project folder with the PATH it sets."""

from __future__ import annotations

from pathlib import Path

from execution_service.app import RunningExecution
from tests.execution.test_readme_grpcurl_execution import json_documents
from tests.readme_shell import project_folder, readme_block, run_block


async def test_agents_readme_commands(
    execution: RunningExecution, pki: Path, tmp_path: Path
) -> None:
    script = readme_block("grpcurl-agents").replace(
        "localhost:50052", f"localhost:{execution.port}"
    )
    code, out, err = await run_block(script, project_folder(tmp_path, pki))
    assert code == 0, err
    created, got, listed, updated, deleted = json_documents(out)

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
