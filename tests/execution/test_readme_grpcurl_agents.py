"""The README's agents grpcurl block, run as written by bash with the real grpcurl (only the
execution service's port and the certificate folder are substituted)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from execution_service.app import RunningExecution
from tests.execution.test_readme_grpcurl_execution import json_documents, readme_block


async def test_agents_readme_commands(execution: RunningExecution, pki: Path) -> None:
    script = (
        readme_block("grpcurl-agents")
        .replace("localhost:50052", f"localhost:{execution.port}")
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
    created, got, listed, updated, deleted = json_documents(out.decode())

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
