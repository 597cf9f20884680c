"""The README's agents grpcurl block, run as written by bash with the real grpcurl (only the
services' and the emulator's ports and the certificate folder are substituted)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from execution_service.app import RunningExecution
from keyvault_service.app import RunningKeyVault
from provider_emulator.server import RunningEmulator
from tests.execution.test_readme_grpcurl_execution import json_documents, readme_block


async def test_agents_readme_commands(
    pair_vault: RunningKeyVault, execution: RunningExecution, emulator: RunningEmulator, pki: Path
) -> None:
    script = (
        readme_block("grpcurl-agents")
        .replace("localhost:50051", f"localhost:{pair_vault.port}")
        .replace("localhost:50052", f"localhost:{execution.port}")
        .replace("127.0.0.1:8089", f"127.0.0.1:{emulator.port}")
        .replace("certs/", f"{pki}/")
    )
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    docs = json_documents(out.decode())
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
